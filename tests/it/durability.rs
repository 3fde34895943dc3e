//! Durable definitions and persistent messages across graceful restarts and
//! SIGKILL, and a damaged message log.

use crate::common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::collections::HashMap;
use std::time::Duration;

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn drain_bodies(ch: &Channel, queue: &str) -> Vec<(Vec<u8>, bool)> {
    let mut out = vec![];
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push((m.delivery.data, m.delivery.redelivered));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_durable_topology_and_messages_in_order() {
    let dir = tempfile::tempdir().unwrap();
    const COUNT: usize = 100_000;
    {
        let broker = BrokerProcess::start(dir.path()).await;
        let (_c, ch) = broker.channel().await;
        ch.confirm_select(Default::default()).await.unwrap();
        ch.exchange_declare(
            "dx".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare(
            "dq".into(),
            durable(),
            table(&[("x-max-priority", lapin::types::AMQPValue::LongInt(3))]),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "dq".into(),
            "dx".into(),
            "a.#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare(
            "transient-q".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "transient-x".into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut confirms = Vec::with_capacity(COUNT);
        for i in 0..COUNT {
            confirms.push(
                ch.basic_publish(
                    "dx".into(),
                    "a.b".into(),
                    Default::default(),
                    format!("{i}").as_bytes(),
                    persistent(),
                )
                .await
                .unwrap(),
            );
        }
        // A transient message on the durable queue does not survive.
        publish(&ch, "dx", "a.t", b"transient").await;
        publish_with(&ch, "", "transient-q", b"gone", persistent()).await;
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
        // One delivered, unacked message comes back redelivered.
        let unacked = ch
            .basic_get("dq".into(), Default::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(unacked.delivery.data, b"0");
        broker.stop();
    }
    let broker = BrokerProcess::start(dir.path()).await;
    let (_c, ch) = broker.channel().await;
    let passive = |name: &str| {
        let ch = ch.clone();
        let name = name.to_string();
        async move {
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        }
    };
    assert_eq!(passive("dq").await.unwrap().message_count() as usize, COUNT);
    // The binding survived: routing through dx still reaches dq.
    publish_with(&ch, "dx", "a.z", b"after", persistent()).await;
    let got = drain_bodies(&ch, "dq").await;
    assert_eq!(got.len(), COUNT + 1);
    assert_eq!(
        got[0],
        (b"0".to_vec(), true),
        "delivered-unacked comes back redelivered"
    );
    for (i, (body, redelivered)) in got.iter().enumerate().take(COUNT).skip(1) {
        assert_eq!(body, format!("{i}").as_bytes(), "order kept");
        assert!(!redelivered);
    }
    assert_eq!(got[COUNT].0, b"after");
    // Transient definitions are gone.
    let (_c2, ch2) = broker.channel().await;
    let err = ch2
        .queue_declare(
            "transient-q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(err.is_err(), "transient queue must not survive a restart");
    broker.stop();
}

/// Publishes persistent messages with confirms until the broker dies;
/// returns the ids that were confirmed.
async fn publish_until_killed(broker_url: String, start: u64) -> Vec<u64> {
    let conn = match lapin::Connection::connect(&broker_url, Default::default()).await {
        Ok(c) => c,
        Err(_) => return vec![],
    };
    let Ok(ch) = conn.create_channel().await else {
        return vec![];
    };
    if ch.confirm_select(Default::default()).await.is_err() {
        return vec![];
    }
    let mut confirmed = vec![];
    let mut id = start;
    loop {
        let mut batch = vec![];
        for _ in 0..200 {
            match ch
                .basic_publish(
                    "".into(),
                    "crash".into(),
                    Default::default(),
                    &id.to_be_bytes(),
                    persistent(),
                )
                .await
            {
                Ok(c) => batch.push((id, c)),
                Err(_) => return confirmed,
            }
            id += 1;
        }
        for (id, c) in batch {
            match c.await {
                Ok(c) if c.is_ack() => confirmed.push(id),
                _ => return confirmed,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let cycles: u64 = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut confirmed_total: Vec<u64> = vec![];
    let mut next_id = 0u64;
    for cycle in 0..cycles {
        let broker = BrokerProcess::start(dir.path()).await;
        {
            let (_c, ch) = broker.channel().await;
            ch.queue_declare("crash".into(), durable(), FieldTable::default())
                .await
                .unwrap();
        }
        let publisher = tokio::spawn(publish_until_killed(broker.url(), next_id));
        // Kill at a different moment each cycle.
        tokio::time::sleep(Duration::from_millis(300 + 250 * cycle)).await;
        broker.kill();
        let confirmed = publisher.await.unwrap();
        eprintln!(
            "cycle {cycle}: {} confirmed before SIGKILL",
            confirmed.len()
        );
        next_id = confirmed.last().map_or(next_id, |l| l + 1_000_000);
        confirmed_total.extend(confirmed);
    }
    let broker = BrokerProcess::start(dir.path()).await;
    let (_c, ch) = broker.channel().await;
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut consumer = ch
        .basic_consume(
            "crash".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(1000), consumer.next()).await
    {
        let id = u64::from_be_bytes(d.data[..8].try_into().unwrap());
        *seen.entry(id).or_default() += 1;
    }
    let missing: Vec<&u64> = confirmed_total
        .iter()
        .filter(|id| !seen.contains_key(id))
        .collect();
    let duplicates = seen.values().filter(|c| **c > 1).count();
    eprintln!(
        "{} confirmed over {cycles} kills, {} present after restart, {} missing, {duplicates} duplicated",
        confirmed_total.len(),
        seen.len(),
        missing.len()
    );
    assert!(
        !confirmed_total.is_empty(),
        "the publisher got no confirms at all"
    );
    assert!(
        missing.is_empty(),
        "confirmed messages lost: {:?}",
        &missing[..missing.len().min(10)]
    );
    broker.stop();
}

#[tokio::test]
async fn damaged_log_tail_is_dropped_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = BrokerProcess::start(dir.path()).await;
        let (_c, ch) = broker.channel().await;
        ch.confirm_select(Default::default()).await.unwrap();
        ch.queue_declare("q".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        for i in 0..10 {
            ch.basic_publish(
                "".into(),
                "q".into(),
                Default::default(),
                format!("m{i}").as_bytes(),
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        broker.kill();
    }
    // Flip bytes in the last record and add garbage after it.
    let seg = std::fs::read_dir(dir.path().join("messages"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .max()
        .unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let n = data.len();
    data[n - 2] ^= 0xFF;
    data.extend_from_slice(b"garbage after a torn write");
    std::fs::write(&seg, data).unwrap();

    let broker = BrokerProcess::start(dir.path()).await;
    let (_c, ch) = broker.channel().await;
    let got: Vec<Vec<u8>> = drain_bodies(&ch, "q")
        .await
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    let expected: Vec<Vec<u8>> = (0..9).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(
        got, expected,
        "intact records kept, the damaged last one dropped"
    );
    broker.stop();
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = BrokerProcess::start(dir.path()).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
        .env("BROKER__AMQP__BIND", "127.0.0.1")
        .env("BROKER__AMQP__PORT", "0")
        .env("BROKER__MANAGEMENT__PORT", "0")
        .env("BROKER__PROMETHEUS__PORT", "0")
        .env("BROKER__STORAGE__DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another broker"), "{stderr}");
    first.stop();
}

#[tokio::test]
async fn an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("FORMAT"), "99\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
        .env("BROKER__AMQP__PORT", "0")
        .env("BROKER__MANAGEMENT__PORT", "0")
        .env("BROKER__PROMETHEUS__PORT", "0")
        .env("BROKER__STORAGE__DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("format version 99"), "{stderr}");
}

#[tokio::test]
async fn a_drained_queue_gives_its_disk_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path()).await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    ch.queue_declare("big".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let body = vec![1u8; 64 * 1024];
    let mut confirms = vec![];
    for _ in 0..2500 {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "big".into(),
                Default::default(),
                &body,
                persistent(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        c.await.unwrap();
    }
    let size = || -> u64 {
        std::fs::read_dir(dir.path().join("messages"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let full = size();
    assert!(full > 150 * 1024 * 1024, "log holds the backlog: {full}");
    ch.queue_purge("big".into(), Default::default())
        .await
        .unwrap();
    // Removal records are written by the next group commit.
    ch.basic_publish(
        "".into(),
        "big".into(),
        Default::default(),
        b"x",
        persistent(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut after = size();
    for _ in 0..50 {
        if after < 70 * 1024 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = size();
    }
    assert!(
        after < 70 * 1024 * 1024,
        "segments freed after purge: {full} -> {after}"
    );
    broker.stop();
}
