//! A durable declare is answered once the catalog has flushed it, and the
//! flush holds up nobody else: the catalog's fsync is held by a gate
//! (LD_PRELOAD), a durable queue.declare waits for it, while another
//! channel of the same connection and another connection get their replies
//! and deliveries at once.

use crate::common;
use crate::common::*;
use crate::sync_gate::{build_sync_gate, start_fsync_gated};
use lapin::options::*;
use lapin::types::FieldTable;
use std::time::Duration;

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_declare_ok_waits_for_the_catalog_flush_and_only_it() {
    let work = tempfile::tempdir().unwrap();
    let library = build_sync_gate(work.path()).expect("a C compiler (cc) for the sync gate");
    let data = work.path().join("data");
    let gate = work.path().join("fsync.gate");
    let broker = start_fsync_gated(&data, &library, &gate).await;
    let (conn, ch) = broker.channel().await;
    let other_ch = conn.create_channel().await.unwrap();
    let (_c2, other_conn_ch) = broker.channel().await;
    other_conn_ch
        .queue_declare(
            "transient".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    std::fs::write(&gate, b"").unwrap();
    let declare = tokio::spawn(async move {
        ch.queue_declare("kept".into(), durable(), FieldTable::default())
            .await
            .map(|_| ())
    });
    // Positive signals while the flush is held: the same connection's
    // other channel and another connection are served.
    for ch in [&other_ch, &other_conn_ch] {
        tokio::time::timeout(
            Duration::from_secs(2),
            ch.queue_declare(
                "transient".into(),
                Default::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("another channel waited for the held catalog flush")
        .unwrap();
        publish(ch, "", "transient", b"x").await;
        let got = tokio::time::timeout(Duration::from_secs(2), get(ch, "transient"))
            .await
            .expect("basic.get waited for the held catalog flush");
        assert!(got.is_some());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !declare.is_finished(),
        "declare-ok came before the catalog was flushed"
    );
    std::fs::remove_file(&gate).unwrap();
    tokio::time::timeout(Duration::from_secs(10), declare)
        .await
        .expect("declare-ok after the flush")
        .unwrap()
        .unwrap();

    // Stored: it survives a crash.
    broker.kill();
    let broker = common::BrokerProcess::start(&data).await;
    let (_c, ch) = broker.channel().await;
    ch.queue_declare(
        "kept".into(),
        QueueDeclareOptions {
            passive: true,
            ..durable()
        },
        FieldTable::default(),
    )
    .await
    .expect("the declared queue is there after SIGKILL");
    broker.kill();
}
