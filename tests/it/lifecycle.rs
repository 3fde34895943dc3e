//! TTL, dead-lettering (x-death), length limits, priorities, single active
//! consumer, delivery limits, x-expires: RabbitMQ's queue arguments.

use crate::common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use std::time::Duration;

fn int(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

/// Polls `get` until a message arrives (for timer-driven events).
async fn wait_get(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    for _ in 0..100 {
        if let Some(m) = get(ch, queue).await {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing arrived in {queue}");
}

fn header<'a>(d: &'a lapin::message::Delivery, key: &str) -> &'a AMQPValue {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
        .unwrap_or_else(|| panic!("no header {key}"))
}

fn deaths(d: &lapin::message::Delivery) -> Vec<FieldTable> {
    match header(d, "x-death") {
        AMQPValue::FieldArray(a) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry {other:?}"),
            })
            .collect(),
        other => panic!("x-death is {other:?}"),
    }
}

fn text(t: &FieldTable, key: &str) -> String {
    match t.inner().get(key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{key} = {other:?}"),
    }
}

/// A queue dead-lettering to the fanout exchange `dlx`, bound to `dead`.
async fn with_dlx(ch: &Channel, queue: &str, mut args: FieldTable) {
    ch.exchange_declare(
        "dlx".into(),
        lapin::ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(ch, "dead", FieldTable::default()).await;
    ch.queue_bind(
        "dead".into(),
        "dlx".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    args.insert("x-dead-letter-exchange".into(), long_str("dlx"));
    declare(ch, queue, args).await;
}

#[tokio::test]
async fn queue_ttl_expires_without_consumers_and_dead_letters() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    with_dlx(&ch, "q", table(&[("x-message-ttl", int(100))])).await;
    publish(&ch, "", "q", b"old").await;
    assert_eq!(ready(&ch, "q").await, 1);
    let dead = wait_get(&ch, "dead").await;
    assert_eq!(ready(&ch, "q").await, 0, "expired without anyone reading");
    assert_eq!(dead.delivery.data, b"old");
    let entry = &deaths(&dead.delivery)[0];
    assert_eq!(text(entry, "reason"), "expired");
    assert_eq!(text(entry, "queue"), "q");
}

#[tokio::test]
async fn per_message_expiration_and_ttl_zero() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    with_dlx(&ch, "q", FieldTable::default()).await;
    publish_with(
        &ch,
        "",
        "q",
        b"short",
        BasicProperties::default().with_expiration("50".into()),
    )
    .await;
    let dead = wait_get(&ch, "dead").await;
    assert_eq!(
        dead.delivery.properties.expiration(),
        &None,
        "expiration is removed"
    );
    assert_eq!(
        text(&deaths(&dead.delivery)[0], "original-expiration"),
        "50"
    );
    // TTL 0 with no consumer: gone at once.
    publish_with(
        &ch,
        "",
        "q",
        b"now-or-never",
        BasicProperties::default().with_expiration("0".into()),
    )
    .await;
    assert_eq!(ready(&ch, "q").await, 0);
    // TTL 0 with a consumer ready: delivered.
    let mut consumer = consume(
        &ch,
        "q",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    publish_with(
        &ch,
        "",
        "q",
        b"taken",
        BasicProperties::default().with_expiration("0".into()),
    )
    .await;
    assert_eq!(next(&mut consumer).await.data, b"taken");
}

#[tokio::test]
async fn rejected_message_carries_x_death_as_rabbitmq_writes_it() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    with_dlx(&ch, "q", FieldTable::default()).await;
    let cc = AMQPValue::FieldArray(vec![long_str("extra")].into());
    publish_with(
        &ch,
        "",
        "q",
        b"bad",
        BasicProperties::default()
            .with_message_id("m1".into())
            .with_headers(table(&[("CC", cc), ("app", long_str("kept"))])),
    )
    .await;
    let m = ch
        .basic_get("q".into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dead = wait_get(&ch, "dead").await.delivery;
    assert_eq!(dead.exchange.as_str(), "dlx");
    assert_eq!(dead.routing_key.as_str(), "q");
    assert_eq!(
        dead.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("m1")
    );
    assert_eq!(header(&dead, "app"), &long_str("kept"));
    let entries = deaths(&dead);
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(text(e, "reason"), "rejected");
    assert_eq!(text(e, "queue"), "q");
    assert_eq!(text(e, "exchange"), "");
    assert!(matches!(
        e.inner().get("time"),
        Some(AMQPValue::Timestamp(_))
    ));
    assert_eq!(
        e.inner().get("routing-keys"),
        Some(&AMQPValue::FieldArray(
            vec![long_str("q"), long_str("extra")].into()
        ))
    );
    assert!(e.inner().get("original-expiration").is_none());
    assert_eq!(header(&dead, "x-first-death-reason"), &long_str("rejected"));
    assert_eq!(header(&dead, "x-first-death-queue"), &long_str("q"));
    assert_eq!(header(&dead, "x-first-death-exchange"), &long_str(""));
}

#[tokio::test]
async fn repeated_reject_cycles_count_up_and_move_to_front() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    // a dead-letters to b, b back to a, through the default exchange.
    declare(
        &ch,
        "a",
        table(&[
            ("x-dead-letter-exchange", long_str("")),
            ("x-dead-letter-routing-key", long_str("b")),
        ]),
    )
    .await;
    declare(
        &ch,
        "b",
        table(&[
            ("x-dead-letter-exchange", long_str("")),
            ("x-dead-letter-routing-key", long_str("a")),
        ]),
    )
    .await;
    publish(&ch, "", "a", b"ping-pong").await;
    for queue in ["a", "b", "a"] {
        let m = wait_get_ack(&ch, queue).await;
        m.reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    }
    let m = wait_get(&ch, "b").await.delivery;
    let entries = deaths(&m);
    assert_eq!(entries.len(), 2);
    assert_eq!(text(&entries[0], "queue"), "a");
    assert_eq!(
        entries[0].inner().get("count"),
        Some(&AMQPValue::LongLongInt(2))
    );
    assert_eq!(text(&entries[1], "queue"), "b");
    assert_eq!(
        entries[1].inner().get("count"),
        Some(&AMQPValue::LongLongInt(1))
    );
    assert_eq!(header(&m, "x-first-death-queue"), &long_str("a"));
    assert_eq!(header(&m, "x-last-death-queue"), &long_str("a"));
}

async fn wait_get_ack(ch: &Channel, queue: &str) -> lapin::message::Delivery {
    for _ in 0..100 {
        if let Some(m) = ch
            .basic_get(queue.into(), Default::default())
            .await
            .unwrap()
        {
            return m.delivery;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing in {queue}");
}

#[tokio::test]
async fn ttl_cycle_to_itself_is_dropped() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(
        &ch,
        "self",
        table(&[
            ("x-message-ttl", int(30)),
            ("x-dead-letter-exchange", long_str("")),
            ("x-dead-letter-routing-key", long_str("self")),
        ]),
    )
    .await;
    publish(&ch, "", "self", b"loop").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ready(&ch, "self").await, 0);
}

#[tokio::test]
async fn max_length_drop_head_dead_letters_maxlen() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    with_dlx(&ch, "q", table(&[("x-max-length", int(2))])).await;
    for i in 0..4 {
        publish(&ch, "", "q", format!("m{i}").as_bytes()).await;
    }
    assert_eq!(ready(&ch, "q").await, 2);
    assert_eq!(get(&ch, "q").await.unwrap().delivery.data, b"m2");
    let dead = get(&ch, "dead").await.unwrap().delivery;
    assert_eq!(dead.data, b"m0");
    assert_eq!(text(&deaths(&dead)[0], "reason"), "maxlen");
}

#[tokio::test]
async fn max_length_bytes_keeps_the_newest_that_fit() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "q", table(&[("x-max-length-bytes", int(10))])).await;
    for b in ["aaaaa", "bbbbb", "ccccc", "ddddd"] {
        publish(&ch, "", "q", b.as_bytes()).await;
    }
    assert_eq!(ready(&ch, "q").await, 2);
    assert_eq!(get(&ch, "q").await.unwrap().delivery.data, b"ccccc");
    // Over the limit on its own: drop-head empties the queue, itself included.
    publish(&ch, "", "q", &[0u8; 20]).await;
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn reject_publish_nacks_and_reject_publish_dlx_dead_letters() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    declare(
        &ch,
        "rp",
        table(&[
            ("x-max-length", int(1)),
            ("x-overflow", long_str("reject-publish")),
        ]),
    )
    .await;
    let first = ch
        .basic_publish(
            "".into(),
            "rp".into(),
            Default::default(),
            b"1",
            Default::default(),
        )
        .await
        .unwrap();
    let second = ch
        .basic_publish(
            "".into(),
            "rp".into(),
            Default::default(),
            b"2",
            Default::default(),
        )
        .await
        .unwrap();
    assert!(first.await.unwrap().is_ack());
    assert!(second.await.unwrap().is_nack());
    assert_eq!(ready(&ch, "rp").await, 1);

    with_dlx(
        &ch,
        "rpd",
        table(&[
            ("x-max-length", int(1)),
            ("x-overflow", long_str("reject-publish-dlx")),
        ]),
    )
    .await;
    publish(&ch, "", "rpd", b"kept").await;
    let refused = ch
        .basic_publish(
            "".into(),
            "rpd".into(),
            Default::default(),
            b"refused",
            Default::default(),
        )
        .await
        .unwrap();
    assert!(refused.await.unwrap().is_nack());
    let dead = wait_get(&ch, "dead").await.delivery;
    assert_eq!(dead.data, b"refused");
    assert_eq!(text(&deaths(&dead)[0], "reason"), "maxlen");
}

#[tokio::test]
async fn priority_queue_delivers_highest_first_fifo_within() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "pq", table(&[("x-max-priority", int(5))])).await;
    for p in [
        None,
        Some(0),
        Some(3),
        Some(9),
        Some(5),
        Some(1),
        Some(255),
        Some(3),
    ] {
        let props = match p {
            Some(p) => BasicProperties::default().with_priority(p),
            None => BasicProperties::default(),
        };
        publish_with(&ch, "", "pq", format!("{p:?}").as_bytes(), props).await;
    }
    let mut order = vec![];
    while let Some(m) = get(&ch, "pq").await {
        order.push(String::from_utf8(m.delivery.data).unwrap());
    }
    assert_eq!(
        order,
        [
            "Some(9)",
            "Some(5)",
            "Some(255)",
            "Some(3)",
            "Some(3)",
            "Some(1)",
            "None",
            "Some(0)"
        ]
    );
}

#[tokio::test]
async fn single_active_consumer_hands_over_in_registration_order() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(
        &ch,
        "sac",
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let opts = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut first = ch
        .basic_consume("sac".into(), "first".into(), opts, FieldTable::default())
        .await
        .unwrap();
    let mut second = ch
        .basic_consume("sac".into(), "second".into(), opts, FieldTable::default())
        .await
        .unwrap();
    for i in 0..3 {
        publish(&ch, "", "sac", format!("{i}").as_bytes()).await;
    }
    for _ in 0..3 {
        next(&mut first).await;
    }
    assert_nothing(&mut second, 200).await;
    ch.basic_cancel("first".into(), Default::default())
        .await
        .unwrap();
    publish(&ch, "", "sac", b"after").await;
    assert_eq!(next(&mut second).await.data, b"after");
}

#[tokio::test]
async fn delivery_limit_dead_letters_after_too_many_returns() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    with_dlx(&ch, "dl", table(&[("x-delivery-limit", int(1))])).await;
    publish(&ch, "", "dl", b"poison").await;
    let first = wait_get_ack(&ch, "dl").await;
    first
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    let second = wait_get_ack(&ch, "dl").await;
    assert!(second.redelivered);
    assert_eq!(
        header(&second, "x-delivery-count"),
        &AMQPValue::LongLongInt(1)
    );
    second
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    let dead = wait_get(&ch, "dead").await.delivery;
    assert_eq!(text(&deaths(&dead)[0], "reason"), "delivery_limit");
    assert_eq!(ready(&ch, "dl").await, 0);
}

#[tokio::test]
async fn unused_queue_expires() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "temp", table(&[("x-expires", int(200))])).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let err = ch
        .queue_declare(
            "temp".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(broker.error_of(err).await.0, 404);
}

#[tokio::test]
async fn invalid_arguments_are_406_with_rabbitmq_texts() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    for (key, value, reason) in [
        ("x-message-ttl", int(-1), "{value_negative,-1}"),
        (
            "x-message-ttl",
            long_str("1000"),
            "\"expected integer, got longstr\"",
        ),
        ("x-expires", int(0), "{value_zero,0}"),
        ("x-max-length", int(-1), "{value_negative,-1}"),
        ("x-overflow", long_str("foo"), "invalid_overflow"),
        ("x-max-priority", int(256), "{max_value_exceeded,256}"),
        (
            "x-single-active-consumer",
            long_str("yes"),
            "{unacceptable_type,longstr}",
        ),
    ] {
        let ch = conn.create_channel().await.unwrap();
        let err = ch
            .queue_declare("args".into(), Default::default(), table(&[(key, value)]))
            .await;
        assert_eq!(
            broker.error_of(err).await,
            (406, format!("PRECONDITION_FAILED - invalid arg '{key}' for queue 'args' in vhost '/': {reason}"))
        );
    }
    broker.assert_healthy().await;
}
