//! Quorum queues as RabbitMQ 4.x clients see them, on one node: declare
//! rules and texts, `x-delivery-count` on every redelivery, the default
//! delivery limit of 20, `x-delivery-limit: -1`, and the management fields.

use crate::mgmt_support::Api;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection};
use reqwest::StatusCode;

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = table(extra);
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn channel(api: &Api) -> (Connection, Channel) {
    let conn = api.amqp("guest", "guest", "/").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// The close code and text of a declare that fails.
async fn declare_error(
    api: &Api,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> (u16, String) {
    let (_conn, ch) = channel(api).await;
    let err = ch
        .queue_declare(name.into(), options, args)
        .await
        .expect_err("declare should fail");
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => (e.get_id(), e.get_message().to_string()),
        other => panic!("{other:?}"),
    }
}

async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        Default::default(),
        body,
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
}

fn delivery_count(m: &lapin::message::Delivery) -> Option<i64> {
    match m
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count"))
    {
        None => None,
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        Some(other) => panic!("x-delivery-count is {other:?}"),
    }
}

async fn return_it(m: lapin::message::BasicGetMessage) {
    m.nack(BasicNackOptions {
        requeue: true,
        multiple: false,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn declare_rules_and_texts_are_rabbitmqs() {
    let api = Api::start().await;
    let refused = "PRECONDITION_FAILED - invalid property";
    let cases: Vec<(&str, QueueDeclareOptions, FieldTable, String)> = vec![
        (
            "q1",
            QueueDeclareOptions::default(),
            quorum(&[]),
            format!("{refused} 'non-durable' for queue 'q1' in vhost '/'"),
        ),
        (
            "q2",
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            quorum(&[]),
            format!("{refused} 'exclusive-owner' for queue 'q2' in vhost '/'"),
        ),
        (
            "q3",
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            quorum(&[]),
            format!("{refused} 'auto-delete' for queue 'q3' in vhost '/'"),
        ),
        (
            "",
            durable(),
            quorum(&[]),
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue".into(),
        ),
        (
            "q4",
            durable(),
            quorum(&[("x-max-priority", AMQPValue::LongInt(5))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q4' in vhost '/' of queue type rabbit_quorum_queue".into(),
        ),
        (
            "q5",
            durable(),
            quorum(&[("x-queue-mode", AMQPValue::LongString("lazy".into()))]),
            "PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue 'q5' in vhost '/' of queue type rabbit_quorum_queue".into(),
        ),
    ];
    for (name, options, args, text) in cases {
        assert_eq!(
            declare_error(&api, name, options, args).await,
            (406, text),
            "declare of {name:?}"
        );
    }
    // What quorum queues take is accepted.
    let (_conn, ch) = channel(&api).await;
    ch.queue_declare(
        "accepted".into(),
        durable(),
        quorum(&[
            ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
            ("x-delivery-limit", AMQPValue::LongInt(-1)),
            (
                "x-dead-letter-strategy",
                AMQPValue::LongString("at-least-once".into()),
            ),
            (
                "x-overflow",
                AMQPValue::LongString("reject-publish-dlx".into()),
            ),
            ("x-max-in-memory-length", AMQPValue::LongInt(100)),
            ("x-max-length", AMQPValue::LongInt(1000)),
            ("x-message-ttl", AMQPValue::LongInt(60_000)),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ]),
    )
    .await
    .expect("quorum arguments accepted");
    let (status, accepted) = api.get("/queues/%2F/accepted").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(accepted["type"], "quorum");
    // Nothing was declared by the refused ones.
    for name in ["q1", "q2", "q3", "q4", "q5"] {
        let (status, _) = api.get(&format!("/queues/%2F/{name}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}");
    }
}

#[tokio::test]
async fn every_redelivery_carries_x_delivery_count() {
    let api = Api::start().await;
    let (_conn, ch) = channel(&api).await;
    ch.queue_declare("counted".into(), durable(), quorum(&[]))
        .await
        .unwrap();
    publish(&ch, "counted", b"m").await;
    let first = get(&ch, "counted").await.expect("message");
    assert!(!first.delivery.redelivered);
    assert_eq!(delivery_count(&first.delivery), None);
    return_it(first).await;
    for expected in 1..=3 {
        let again = get(&ch, "counted").await.expect("redelivered");
        assert!(again.delivery.redelivered);
        assert_eq!(delivery_count(&again.delivery), Some(expected));
        return_it(again).await;
    }
    // Returned by a closing channel counts too.
    let held = get(&ch, "counted").await.expect("message");
    assert_eq!(delivery_count(&held.delivery), Some(4));
    ch.close(200, "bye".into()).await.unwrap();
    let (_conn2, ch2) = channel(&api).await;
    let after = get(&ch2, "counted").await.expect("message");
    assert_eq!(delivery_count(&after.delivery), Some(5));
}

#[tokio::test]
async fn the_default_delivery_limit_is_20() {
    let api = Api::start().await;
    let (_conn, ch) = channel(&api).await;
    ch.exchange_declare(
        "dlx".into(),
        lapin::ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare("dead".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        "dead".into(),
        "dlx".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "limited".into(),
        durable(),
        quorum(&[(
            "x-dead-letter-exchange",
            AMQPValue::LongString("dlx".into()),
        )]),
    )
    .await
    .unwrap();
    publish(&ch, "limited", b"poison").await;
    // Delivered 21 times (the first delivery and 20 redeliveries); the
    // 21st return dead-letters it.
    for returned in 0..=20 {
        let m = get(&ch, "limited")
            .await
            .unwrap_or_else(|| panic!("gone after {returned} returns"));
        return_it(m).await;
    }
    assert!(get(&ch, "limited").await.is_none());
    let dead = get(&ch, "dead").await.expect("dead-lettered");
    let Some(AMQPValue::FieldArray(deaths)) = dead
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
        .cloned()
    else {
        panic!("no x-death")
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("empty x-death")
    };
    assert_eq!(
        death.inner().get("reason"),
        Some(&AMQPValue::LongString("delivery_limit".into()))
    );
}

#[tokio::test]
async fn delivery_limit_minus_one_turns_the_limit_off_and_no_dlx_drops() {
    let api = Api::start().await;
    let (_conn, ch) = channel(&api).await;
    ch.queue_declare(
        "unlimited".into(),
        durable(),
        quorum(&[("x-delivery-limit", AMQPValue::LongInt(-1))]),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "two".into(),
        durable(),
        quorum(&[("x-delivery-limit", AMQPValue::LongInt(2))]),
    )
    .await
    .unwrap();
    publish(&ch, "unlimited", b"u").await;
    publish(&ch, "two", b"t").await;
    for _ in 0..30 {
        let m = get(&ch, "unlimited").await.expect("never limited");
        return_it(m).await;
    }
    let last = get(&ch, "unlimited").await.expect("still there");
    assert_eq!(delivery_count(&last.delivery), Some(30));
    // Limit 2, no dead-letter exchange: the third return drops it.
    for _ in 0..3 {
        let m = get(&ch, "two").await.expect("within the limit");
        return_it(m).await;
    }
    assert!(get(&ch, "two").await.is_none());
}

#[tokio::test]
async fn management_shows_the_quorum_type_and_its_members() {
    let api = Api::start().await;
    let (_conn, ch) = channel(&api).await;
    ch.queue_declare("shown".into(), durable(), quorum(&[]))
        .await
        .unwrap();
    ch.queue_declare("plain".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let (status, q) = api.get("/queues/%2F/shown").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(q["type"], "quorum");
    let node = q["node"].as_str().expect("node").to_string();
    assert_eq!(q["leader"], node.as_str());
    assert_eq!(q["members"], serde_json::json!([node]));
    assert_eq!(q["online"], serde_json::json!([node]));
    let (_, plain) = api.get("/queues/%2F/plain").await;
    assert_eq!(plain["type"], "classic");
    assert!(plain.get("leader").is_none());
    // Declared over HTTP, the same rules hold.
    let (status, body) = api
        .put(
            "/queues/%2F/http-q",
            serde_json::json!({"durable": false, "arguments": {"x-queue-type": "quorum"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = api
        .put(
            "/queues/%2F/http-q",
            serde_json::json!({"durable": true, "arguments": {"x-queue-type": "quorum"}}),
        )
        .await;
    assert!(status.is_success(), "{status}");
    let (_, q) = api.get("/queues/%2F/http-q").await;
    assert_eq!(q["type"], "quorum");
}
