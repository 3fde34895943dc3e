//! A full disk: the message log's writes fail. Publishers waiting for a
//! confirm get basic.nack, the disk alarm blocks them, consumers keep
//! draining, and once space is freed the alarm clears and publishing
//! resumes; nothing confirmed is lost and nothing consumed comes back.
//!
//! Runs on a small tmpfs, which needs root (as CI runs).

use crate::common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use lapin::Confirmation;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A size-limited tmpfs mounted on a temp dir, unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed (this test needs root, as CI has)"
        );
        SmallDisk { _dir: dir, path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// CPU time (user + system, clock ticks) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), 1-based
    // 14 and 15: utime and stime.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn publish_confirmed(ch: &lapin::Channel, body: &[u8]) -> Confirmation {
    let confirm = ch
        .basic_publish(
            "".into(),
            "fill".into(),
            BasicPublishOptions::default(),
            body,
            persistent(),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), confirm)
        .await
        .expect("no confirm within 10 s")
        .unwrap()
}

async fn next_alarm_event(
    events: &mut (impl futures_lite::Stream<Item = lapin::Event> + Unpin),
) -> lapin::Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(15), events.next())
            .await
            .expect("no blocked/unblocked event within 15 s")
            .expect("events ended");
        if matches!(
            event,
            lapin::Event::ConnectionBlocked(_) | lapin::Event::ConnectionUnblocked
        ) {
            return event;
        }
    }
}

fn segment_count(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("messages"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_nacks_blocks_publishers_and_recovers() {
    let disk = SmallDisk::mount("12m");
    // No free-space limit: the disk really fills up, the log's writes fail.
    let env = [
        ("BROKER__STORAGE__SEGMENT_SIZE_BYTES", "1048576"),
        ("BROKER__RESOURCES__DISK_FREE_LIMIT_BYTES", "0"),
    ];
    let broker = BrokerProcess::start_with_env(&disk.path, &env).await;
    let conn = lapin::Connection::connect(&broker.url(), Default::default())
        .await
        .unwrap();
    let mut events = Box::pin(conn.events_listener());
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        "fill".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();

    // Fill the disk: confirms come until a write fails, then a nack.
    let body = vec![7u8; 64 * 1024];
    let mut acked = 0u32;
    let mut nacked = false;
    for _ in 0..1000 {
        match publish_confirmed(&ch, &body).await {
            Confirmation::Ack(_) => acked += 1,
            Confirmation::Nack(_) => {
                nacked = true;
                break;
            }
            other => panic!("unexpected confirm {other:?}"),
        }
    }
    eprintln!("acked {acked} before the nack");
    assert!(nacked, "no nack after {acked} acked publishes of 64 KiB");
    assert!(acked > 50, "only {acked} acked before the disk filled");

    // The disk alarm blocks publishers.
    match next_alarm_event(&mut events).await {
        lapin::Event::ConnectionBlocked(reason) => {
            assert_eq!(reason.as_str(), "low on disk");
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }

    // The broker waits quietly: no spinning on the failed writes.
    let before = cpu_ticks(broker.child.id());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(broker.child.id()) - before;
    let ticks_per_s = 100; // USER_HZ
    assert!(
        used * 1000 < started.elapsed().as_millis() as u64 * ticks_per_s / 2,
        "the broker used {used} ticks of CPU in 2 s while the disk was full"
    );

    // Consumers are served: drain the queue, acking (the nacked message
    // is in the queue too: nack means "not stored", not "dropped").
    let (_cc, consumer) = broker.channel().await;
    let mut deliveries = consumer
        .basic_consume(
            "fill".into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumed = 0u32;
    while consumed < acked + 1 {
        let d = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
            .await
            .expect("consumer starved while the disk was full")
            .unwrap()
            .unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
        consumed += 1;
    }

    // The drained segments go, the log writes again, the alarm clears.
    match next_alarm_event(&mut events).await {
        lapin::Event::ConnectionUnblocked => {}
        other => panic!("expected connection.unblocked, got {other:?}"),
    }
    consumer
        .basic_cancel("drain".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    let mut resumed = 0;
    for i in 0..5u8 {
        match publish_confirmed(&ch, &[i]).await {
            Confirmation::Ack(_) => resumed += 1,
            other => panic!("publish after the disk freed up: {other:?}"),
        }
    }
    assert_eq!(resumed, 5);
    assert!(segment_count(&disk.path) < 12);

    // After a crash: exactly the five confirmed after recovery, none of
    // the consumed ones back.
    broker.kill();
    let broker = BrokerProcess::start_with_env(&disk.path, &env).await;
    let (_c, ch) = broker.channel().await;
    let q = ch
        .queue_declare(
            "fill".into(),
            QueueDeclareOptions {
                durable: true,
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 5);
    broker.kill();
}
