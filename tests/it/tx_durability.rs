//! Transactions are as durable as confirms: tx.commit-ok comes only once
//! the transaction's persistent messages are synced to the message log.

use crate::common::*;
use crate::sync_gate::{build_sync_gate, start_gated};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::collections::HashSet;
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

/// Publishes persistent messages in transactions of 50 until the broker
/// dies; returns the ids whose commit-ok came.
async fn commit_until_killed(url: String, start: u64) -> Vec<u64> {
    let Ok(conn) = lapin::Connection::connect(&url, Default::default()).await else {
        return vec![];
    };
    let Ok(ch) = conn.create_channel().await else {
        return vec![];
    };
    if ch.tx_select().await.is_err() {
        return vec![];
    }
    let mut committed = vec![];
    let mut id = start;
    loop {
        let mut batch = vec![];
        for _ in 0..50 {
            let published = ch
                .basic_publish(
                    "".into(),
                    "txq".into(),
                    BasicPublishOptions::default(),
                    &id.to_be_bytes(),
                    persistent(),
                )
                .await;
            if published.is_err() {
                return committed;
            }
            batch.push(id);
            id += 1;
        }
        if ch.tx_commit().await.is_err() {
            return committed;
        }
        committed.extend(batch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_message_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut committed_total: Vec<u64> = vec![];
    let mut next_id = 0u64;
    for cycle in 0..3u64 {
        let broker = BrokerProcess::start(dir.path()).await;
        {
            let (_c, ch) = broker.channel().await;
            ch.queue_declare("txq".into(), durable(), FieldTable::default())
                .await
                .unwrap();
        }
        let publisher = tokio::spawn(commit_until_killed(broker.url(), next_id));
        tokio::time::sleep(Duration::from_millis(300 + 250 * cycle)).await;
        broker.kill();
        let committed = publisher.await.unwrap();
        eprintln!(
            "cycle {cycle}: {} committed before SIGKILL",
            committed.len()
        );
        next_id = committed.last().map_or(next_id, |l| l + 1_000_000);
        committed_total.extend(committed);
    }
    let broker = BrokerProcess::start(dir.path()).await;
    let (_c, ch) = broker.channel().await;
    let mut seen = HashSet::new();
    let mut consumer = ch
        .basic_consume(
            "txq".into(),
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
        seen.insert(u64::from_be_bytes(d.data[..8].try_into().unwrap()));
    }
    let missing: Vec<&u64> = committed_total
        .iter()
        .filter(|id| !seen.contains(id))
        .collect();
    assert!(!committed_total.is_empty(), "no transaction was committed");
    assert!(
        missing.is_empty(),
        "committed messages lost: {:?}",
        &missing[..missing.len().min(10)]
    );
    broker.stop();
}

/// SIGKILL alone cannot show a missing fsync (the page cache survives it):
/// with the log's sync held, commit-ok must not come, while the
/// connection's other channels carry on; released, it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_ok_waits_for_the_sync_without_blocking_other_channels() {
    let dir = tempfile::tempdir().unwrap();
    let Some(library) = build_sync_gate(dir.path()) else {
        eprintln!("no C compiler: cannot hold the sync, test skipped");
        return;
    };
    let gate = dir.path().join("hold-sync");
    let data = dir.path().join("data");
    let broker = start_gated(&data, &library, &gate).await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port);
    let conn = lapin::Connection::connect(&url, Default::default())
        .await
        .unwrap();
    let tx = conn.create_channel().await.unwrap();
    let other = conn.create_channel().await.unwrap();
    tx.queue_declare("held".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    tx.tx_select().await.unwrap();

    std::fs::write(&gate, b"").unwrap();
    tx.basic_publish(
        "".into(),
        "held".into(),
        BasicPublishOptions::default(),
        b"m",
        persistent(),
    )
    .await
    .unwrap();
    let committing = tokio::spawn({
        let tx = tx.clone();
        async move { tx.tx_commit().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another channel of the same connection is served meanwhile.
    let declared = tokio::time::timeout(
        Duration::from_secs(5),
        other.queue_declare(
            "held".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("the other channel is not blocked by the pending commit")
    .unwrap();
    assert_eq!(declared.message_count(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !committing.is_finished(),
        "tx.commit-ok was sent before the message log synced"
    );

    std::fs::remove_file(&gate).unwrap();
    tokio::time::timeout(Duration::from_secs(10), committing)
        .await
        .expect("commit-ok after the sync")
        .unwrap()
        .unwrap();
    // A transaction with nothing to store is answered at once.
    tokio::time::timeout(Duration::from_secs(5), tx.tx_commit())
        .await
        .expect("an empty commit")
        .unwrap();
}
