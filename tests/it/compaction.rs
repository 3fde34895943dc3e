//! Message log compaction: old messages do not pin the log, and a SIGKILL
//! while segments are being compacted loses and duplicates nothing.
//!
//! The broker processes get small segments through
//! `BROKER__STORAGE__SEGMENT_SIZE_BYTES` in their own environment (not this
//! process's: the integration tests share one process under `cargo test`).

use crate::common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// The broker binary on `data_dir` with message log segments of `bytes`.
async fn start_small_segments(data_dir: &Path, bytes: u64) -> BrokerProcess {
    let bytes = bytes.to_string();
    BrokerProcess::start_with_env(data_dir, &[("BROKER__STORAGE__SEGMENT_SIZE_BYTES", &bytes)])
        .await
}

async fn declare_durable(ch: &Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
}

/// Bytes and number of the message log's segment files.
fn log_size(data_dir: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(data_dir.join("messages")).expect("messages/") {
        let Ok(entry) = entry else { continue };
        if let Ok(meta) = entry.metadata() {
            bytes += meta.len();
            files += 1;
        }
    }
    (bytes, files)
}

/// Publishes `bodies` to `queue` with confirms, all awaited.
async fn publish_confirmed(ch: &Channel, queue: &str, bodies: impl Iterator<Item = Vec<u8>>) {
    let mut confirms = vec![];
    for body in bodies {
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                &body,
                persistent(),
            )
            .await
            .expect("publish"),
        );
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }
}

/// Every message of `queue` (auto-ack), until it stays empty for a second.
async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut out = vec![];
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(1000), consumer.next()).await
    {
        out.push(d.data);
    }
    out
}

/// One message left in a durable queue, and a thousand others trickling
/// into another, while 20 MB of persistent traffic flows through a third
/// and is consumed: the log stays within its live data plus a few
/// segments (before compaction it kept all 20 MB), and after a restart
/// the old messages are all there, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_messages_do_not_pin_the_log() {
    const SEGMENT: u64 = 256 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let broker = start_small_segments(dir.path(), SEGMENT).await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    for q in ["pinned", "backlog", "traffic"] {
        declare_durable(&ch, q).await;
    }
    publish_confirmed(&ch, "pinned", std::iter::once(b"the pinned one".to_vec())).await;

    // Traffic: consumed and acked as it comes.
    let (_c2, consumer_ch) = broker.channel().await;
    consumer_ch
        .basic_qos(200, Default::default())
        .await
        .unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            "traffic".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    const ROUNDS: usize = 40;
    const PER_ROUND: usize = 500;
    let acker = tokio::spawn(async move {
        let mut acked = 0;
        while acked < ROUNDS * PER_ROUND {
            let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("traffic delivery timed out")
                .expect("consumer ended")
                .expect("delivery");
            d.ack(Default::default()).await.unwrap();
            acked += 1;
        }
    });
    let backlog_body = |i: usize| format!("backlog {i:04} ").repeat(6).into_bytes();
    for round in 0..ROUNDS {
        publish_confirmed(
            &ch,
            "traffic",
            (0..PER_ROUND).map(|i| vec![(round * PER_ROUND + i) as u8; 1024]),
        )
        .await;
        publish_confirmed(
            &ch,
            "backlog",
            (round * 25..(round + 1) * 25).map(backlog_body),
        )
        .await;
    }
    acker.await.unwrap();

    // The old messages' bytes, framed: well under one segment.
    let live = 1000 * (backlog_body(0).len() as u64 + 60) + 100;
    let bound = live + 4 * SEGMENT;
    // Compaction waits for a segment to settle (1 s), then works through
    // the mostly-dead ones one at a time.
    let traffic_done = std::time::Instant::now();
    let mut size = log_size(dir.path());
    for _ in 0..300 {
        if size.0 <= bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        size = log_size(dir.path());
    }
    eprintln!(
        "messages/ after {} MB of traffic: {} bytes in {} segments (bound {bound}), {} ms after it ended",
        ROUNDS * PER_ROUND * 1024 / 1_000_000,
        size.0,
        size.1,
        traffic_done.elapsed().as_millis()
    );
    assert!(
        size.0 <= bound,
        "messages/ holds {} bytes in {} segments",
        size.0,
        size.1
    );

    broker.stop();
    let broker = start_small_segments(dir.path(), SEGMENT).await;
    let (_c, ch) = broker.channel().await;
    assert_eq!(drain(&ch, "pinned").await, vec![b"the pinned one".to_vec()]);
    let backlog = drain(&ch, "backlog").await;
    assert_eq!(backlog.len(), 1000);
    assert!(
        backlog
            .iter()
            .enumerate()
            .all(|(i, b)| *b == backlog_body(i)),
        "backlog out of order or changed"
    );
    assert!(drain(&ch, "traffic").await.is_empty());
    broker.stop();
}

/// The confirmed ids of `keep` and of `churn`.
type Confirmed = Arc<Mutex<(Vec<u64>, Vec<u64>)>>;

/// Publishes until the broker dies: every fifth message to `keep` (never
/// consumed), the others to `churn`, noting the confirmed ids as they come
/// (so that they are kept if this has to be abandoned).
async fn publish_until_killed(url: String, start: u64, confirmed: Confirmed) {
    let Ok(conn) = lapin::Connection::connect(&url, Default::default()).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    if ch.confirm_select(Default::default()).await.is_err() {
        return;
    }
    let mut id = start;
    loop {
        let mut batch = vec![];
        for _ in 0..100 {
            let queue = if id.is_multiple_of(5) {
                "keep"
            } else {
                "churn"
            };
            let mut body = id.to_be_bytes().to_vec();
            body.resize(600, b'.');
            match ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    Default::default(),
                    &body,
                    persistent(),
                )
                .await
            {
                Ok(c) => batch.push((id, c)),
                Err(_) => return,
            }
            id += 1;
        }
        for (id, c) in batch {
            match c.await {
                Ok(c) if c.is_ack() => {
                    let mut confirmed = confirmed.lock().unwrap();
                    if id % 5 == 0 {
                        confirmed.0.push(id)
                    } else {
                        confirmed.1.push(id)
                    }
                }
                _ => return,
            }
        }
    }
}

/// Consumes `churn` with manual acks until the broker dies.
async fn ack_until_killed(url: String) {
    let Ok(conn) = lapin::Connection::connect(&url, Default::default()).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    if ch.basic_qos(100, Default::default()).await.is_err() {
        return;
    }
    let Ok(mut consumer) = ch
        .basic_consume(
            "churn".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    while let Some(Ok(d)) = consumer.next().await {
        if d.ack(Default::default()).await.is_err() {
            return;
        }
    }
}

fn ids(bodies: &[Vec<u8>]) -> HashMap<u64, u32> {
    let mut seen = HashMap::new();
    for b in bodies {
        let id = u64::from_be_bytes(b[..8].try_into().expect("8-byte id"));
        *seen.entry(id).or_default() += 1;
    }
    seen
}

/// SIGKILL, again and again, while small segments are compacted all the
/// time (a fifth of the messages stay, the rest are consumed): after the
/// last restart every confirmed message of `keep` is there exactly once,
/// nothing in either queue is duplicated, and the log was compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_sigkill_during_compaction() {
    const SEGMENT: u64 = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let cycles: u64 = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut keep: Vec<u64> = vec![];
    let mut churn_total = 0;
    let mut next_id = 0u64;
    for cycle in 0..cycles {
        let broker = start_small_segments(dir.path(), SEGMENT).await;
        {
            let (_c, ch) = broker.channel().await;
            declare_durable(&ch, "keep").await;
            declare_durable(&ch, "churn").await;
        }
        let confirmed = Confirmed::default();
        let publisher = tokio::spawn(publish_until_killed(
            broker.url(),
            next_id,
            confirmed.clone(),
        ));
        let acker = tokio::spawn(ack_until_killed(broker.url()));
        // A different moment each cycle.
        tokio::time::sleep(Duration::from_millis(500 + 170 * cycle)).await;
        broker.kill();
        // A client caught mid-handshake by the kill may never hear of it.
        for task in [publisher, acker] {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let (k, c) = std::mem::take(&mut *confirmed.lock().unwrap());
        eprintln!(
            "cycle {cycle}: {} + {} confirmed before SIGKILL, log {:?}",
            k.len(),
            c.len(),
            log_size(dir.path())
        );
        next_id = k.iter().chain(&c).max().map_or(next_id, |m| m + 1_000_000);
        churn_total += c.len();
        keep.extend(k);
    }
    let broker = start_small_segments(dir.path(), SEGMENT).await;
    // Compaction carries on after the restart by itself.
    let live = keep.len() as u64 * 650;
    let bound = 2 * live + 8 * SEGMENT;
    let restarted = std::time::Instant::now();
    let mut size = log_size(dir.path());
    for _ in 0..300 {
        if size.0 <= bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        size = log_size(dir.path());
    }
    let (log_bytes, segments) = size;
    let waited = restarted.elapsed();
    let (_c, ch) = broker.channel().await;
    let kept = ids(&drain(&ch, "keep").await);
    let churned = ids(&drain(&ch, "churn").await);
    let missing: Vec<&u64> = keep.iter().filter(|id| !kept.contains_key(id)).collect();
    let duplicated = kept
        .values()
        .chain(churned.values())
        .filter(|c| **c > 1)
        .count();
    let unknown = kept.keys().filter(|id| **id % 5 != 0).count()
        + churned.keys().filter(|id| **id % 5 == 0).count();
    eprintln!(
        "{} kept confirmed over {cycles} kills: {} present, {} missing, {duplicated} duplicated; \
         {churn_total} churn confirmed, {} left unacked; log {log_bytes} bytes in {segments} segments \
         {} ms after the restart (bound {bound})",
        keep.len(),
        kept.len(),
        missing.len(),
        churned.len(),
        waited.as_millis()
    );
    assert!(keep.len() > 100, "too few confirms to mean anything");
    assert!(
        missing.is_empty(),
        "confirmed messages lost: {:?}",
        &missing[..missing.len().min(10)]
    );
    assert_eq!(duplicated, 0, "messages duplicated after restart");
    assert_eq!(unknown, 0, "messages in the wrong queue");
    // The kept messages are spread over everything ever written: without
    // compaction they would pin nearly all of it. With it, the log holds
    // them (in segments at least half live) plus a few segments: `bound`.
    let written = (keep.len() + churn_total) as u64 * 650;
    assert!(
        log_bytes <= bound,
        "log {log_bytes} bytes in {segments} segments after {written} bytes written: not compacted"
    );
    broker.stop();
}
