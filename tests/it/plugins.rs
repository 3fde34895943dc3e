//! Features RabbitMQ users install plugins for: delayed messages,
//! consistent-hash exchanges, message deduplication.

use crate::common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::time::{Duration, Instant};

async fn count(ch: &Channel, queue: &str) -> u32 {
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

fn delayed(ms: i64) -> BasicProperties {
    BasicProperties::default().with_headers(table(&[("x-delay", AMQPValue::LongLongInt(ms))]))
}

async fn declare_delayed(ch: &Channel, name: &str, durable: bool) {
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        table(&[("x-delayed-type", long_str("direct"))]),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn delayed_messages_arrive_after_their_delay() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare_delayed(&ch, "later", false).await;
    ch.queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        "q".into(),
        "later".into(),
        "k".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let start = Instant::now();
    publish_with(&ch, "later", "k", b"in 400ms", delayed(400)).await;
    publish_with(&ch, "later", "k", b"now", BasicProperties::default()).await;
    assert_eq!(
        count(&ch, "q").await,
        1,
        "an undelayed message routes at once"
    );
    assert_eq!(get(&ch, "q").await.unwrap().delivery.data, b"now");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(count(&ch, "q").await, 0, "the delayed one is still held");
    loop {
        if let Some(m) = get(&ch, "q").await {
            assert_eq!(m.delivery.data, b"in 400ms");
            assert!(start.elapsed() >= Duration::from_millis(400));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "delayed message never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn delayed_exchange_needs_a_valid_delayed_type() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let err = ch
        .exchange_declare(
            "bad".into(),
            ExchangeKind::Custom("x-delayed-message".into()),
            Default::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (406, "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_delayed_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = BrokerProcess::start(dir.path()).await;
        let (_c, ch) = broker.channel().await;
        ch.confirm_select(Default::default()).await.unwrap();
        declare_delayed(&ch, "durable-later", true).await;
        ch.queue_declare(
            "dq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "dq".into(),
            "durable-later".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let confirm = ch
            .basic_publish(
                "durable-later".into(),
                "k".into(),
                Default::default(),
                b"kept",
                delayed(1500).with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        broker.kill();
    }
    let broker = BrokerProcess::start(dir.path()).await;
    let (_c, ch) = broker.channel().await;
    let start = Instant::now();
    loop {
        if let Some(m) = get(&ch, "dq").await {
            assert_eq!(m.delivery.data, b"kept");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "delayed message lost in the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.stop();
}

#[tokio::test]
async fn consistent_hash_spreads_by_weight_and_keeps_keys_together() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.exchange_declare(
        "hash".into(),
        ExchangeKind::Custom("x-consistent-hash".into()),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for (q, weight) in [("h1", "1"), ("h2", "3")] {
        ch.queue_declare(q.into(), Default::default(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            q.into(),
            "hash".into(),
            weight.into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    for i in 0..2000 {
        publish(&ch, "hash", &format!("customer-{}", i % 500), b"x").await;
    }
    let (a, b) = (count(&ch, "h1").await, count(&ch, "h2").await);
    assert_eq!(a + b, 2000, "each message goes to exactly one queue");
    assert!(b > a, "weight 3 gets more than weight 1: {a} vs {b}");
    // Every message of one key lands in one queue.
    let mut placement = std::collections::HashMap::new();
    for q in ["h1", "h2"] {
        let mut consumer = consume(
            &ch,
            q,
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;
        while let Ok(Some(Ok(d))) = tokio::time::timeout(
            Duration::from_millis(300),
            futures_lite::StreamExt::next(&mut consumer),
        )
        .await
        {
            let previous = placement.insert(d.routing_key.to_string(), q);
            assert!(
                previous.is_none_or(|p| p == q),
                "{} split across queues",
                d.routing_key
            );
        }
    }
    assert_eq!(placement.len(), 500);
    let err = ch
        .queue_bind(
            "h1".into(),
            "hash".into(),
            "heavy".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - The binding key must be an integer: <<\"heavy\">>".into()
        )
    );
}

#[tokio::test]
async fn consistent_hash_weights_are_bounded() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "hash".into(),
        ExchangeKind::Custom("x-consistent-hash".into()),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare("h".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    // 4294967295 would put 4.3 billion points on the ring.
    for weight in ["4294967295", "1001", "0"] {
        let ch = conn.create_channel().await.unwrap();
        let err = ch
            .queue_bind(
                "h".into(),
                "hash".into(),
                weight.into(),
                Default::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(
            broker.error_of(err).await,
            (
                406,
                format!("PRECONDITION_FAILED - The binding key (weight) must be from 1 to 1000: <<\"{weight}\">>")
            )
        );
    }
    // The largest weight is taken, and routes.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_bind(
        "h".into(),
        "hash".into(),
        "1000".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "hash", "k", b"x").await;
    assert_eq!(count(&ch, "h").await, 1);
}

fn keyed(key: &str) -> BasicProperties {
    BasicProperties::default().with_headers(table(&[("x-deduplication-header", long_str(key))]))
}

#[tokio::test]
async fn queue_and_exchange_deduplication() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let dedup = table(&[
        ("x-message-deduplication", AMQPValue::Boolean(true)),
        ("x-cache-size", AMQPValue::LongInt(100)),
    ]);
    ch.queue_declare("dd".into(), Default::default(), dedup.clone())
        .await
        .unwrap();
    for key in ["a", "b", "a", "c", "b"] {
        publish_with(&ch, "", "dd", key.as_bytes(), keyed(key)).await;
    }
    publish(&ch, "", "dd", b"no key").await;
    publish(&ch, "", "dd", b"no key").await;
    assert_eq!(
        count(&ch, "dd").await,
        5,
        "a, b, c and both keyless messages"
    );

    ch.exchange_declare("dx".into(), ExchangeKind::Fanout, Default::default(), dedup)
        .await
        .unwrap();
    ch.queue_declare("plain".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        "plain".into(),
        "dx".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for key in ["x", "x", "y"] {
        let confirm = ch
            .basic_publish(
                "dx".into(),
                "".into(),
                Default::default(),
                key.as_bytes(),
                keyed(key),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "duplicates are accepted, just not routed");
    }
    assert_eq!(count(&ch, "plain").await, 2);
}
