//! Resource alarms: publishers are blocked (connection.blocked, socket not
//! read) while memory is over the high watermark or disk is short;
//! consumers keep draining.

use crate::common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use std::time::Duration;

async fn ready(ch: &lapin::Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

/// A connection whose events only this test reads (TestBroker::connect
/// attaches an error log that would compete for them).
type Events = std::pin::Pin<Box<dyn futures_lite::Stream<Item = lapin::Event> + Send>>;

async fn watched(broker: &TestBroker) -> (lapin::Connection, Events) {
    let conn = lapin::Connection::connect(&broker.url(), Default::default())
        .await
        .unwrap();
    let events: Events = Box::pin(conn.events_listener());
    (conn, events)
}

async fn next_event(
    events: &mut (impl futures_lite::Stream<Item = lapin::Event> + Unpin),
) -> lapin::Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("no connection event within 5 s")
            .expect("events ended");
        if matches!(
            event,
            lapin::Event::ConnectionBlocked(_) | lapin::Event::ConnectionUnblocked
        ) {
            return event;
        }
    }
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_until_it_clears() {
    // A 1-byte watermark: the alarm is raised from the start.
    let broker = TestBroker::start_with(|c| c.resources.memory_high_watermark_bytes = 1).await;
    let (_cc, consumer) = broker.channel().await;
    consumer
        .queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let (publisher_conn, mut events) = watched(&broker).await;
    let publisher = publisher_conn.create_channel().await.unwrap();
    publish(&publisher, "", "q", b"first").await;
    match next_event(&mut events).await {
        lapin::Event::ConnectionBlocked(reason) => assert_eq!(reason, "low on memory"),
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    // A further publish waits (lapin holds it while blocked; a client that
    // sends anyway is not read), while a consumer still drains.
    let held = tokio::spawn(async move {
        publish(&publisher, "", "q", b"second").await;
        publisher
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ready(&consumer, "q").await, 1);
    assert_eq!(get(&consumer, "q").await.unwrap().delivery.data, b"first");

    broker.broker.alarms.set_memory_limit(u64::MAX);
    assert!(matches!(
        next_event(&mut events).await,
        lapin::Event::ConnectionUnblocked
    ));
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("held publish goes out")
        .unwrap();
    for _ in 0..50 {
        if ready(&consumer, "q").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ready(&consumer, "q").await,
        1,
        "the held publish arrives once unblocked"
    );
}

#[tokio::test]
async fn disk_alarm_blocks_publishers_too() {
    let broker = TestBroker::start_with(|c| c.resources.disk_free_limit_bytes = u64::MAX).await;
    let (conn, mut events) = watched(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    publish(&ch, "", "q", b"x").await;
    match next_event(&mut events).await {
        lapin::Event::ConnectionBlocked(reason) => assert_eq!(reason, "low on disk"),
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    broker.broker.alarms.set_disk_free_limit(0);
    assert!(matches!(
        next_event(&mut events).await,
        lapin::Event::ConnectionUnblocked
    ));
}
