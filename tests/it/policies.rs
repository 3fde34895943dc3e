//! Policies: set at run time, they change the arguments in force on
//! matching queues and exchanges (limits take the lower of policy and
//! argument; other keys keep the declared argument).

use crate::common::*;
use broker::broker::policy::{ApplyTo, PolicyRecord};
use broker::broker::vhost::PolicyError;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde_json::json;
use std::time::Duration;

fn set_policy(
    broker: &TestBroker,
    name: &str,
    pattern: &str,
    apply_to: ApplyTo,
    priority: i64,
    definition: serde_json::Value,
) -> Result<bool, String> {
    let put = broker.broker.vhost("/").unwrap().put_policy(PolicyRecord {
        vhost: "/".into(),
        name: name.into(),
        pattern: pattern.into(),
        apply_to,
        definition: definition.as_object().cloned().unwrap(),
        priority,
    });
    put.map_err(|e| match e {
        PolicyError::Invalid(text) => text,
        PolicyError::Unavailable(e) => e.text,
    })
}

async fn publish_n(ch: &Channel, queue: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", queue, format!("m{i}").as_bytes()).await;
    }
}

#[tokio::test]
async fn max_length_from_a_policy_applies_at_once_and_the_lower_limit_wins() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "lim.a", FieldTable::default()).await;
    declare(
        &ch,
        "lim.b",
        table(&[("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await;
    declare(&ch, "other", FieldTable::default()).await;
    for q in ["lim.a", "lim.b", "other"] {
        publish_n(&ch, q, 10).await;
    }
    assert_eq!(ready(&ch, "lim.b").await, 2);
    assert!(set_policy(
        &broker,
        "cap",
        "^lim\\.",
        ApplyTo::Queues,
        0,
        json!({"max-length": 5})
    )
    .unwrap());
    // Existing queues are trimmed from the head now.
    assert_eq!(ready(&ch, "lim.a").await, 5);
    assert_eq!(
        ready(&ch, "lim.b").await,
        2,
        "the declared 2 is lower than 5"
    );
    assert_eq!(ready(&ch, "other").await, 10, "pattern does not match");
    let head = get(&ch, "lim.a").await.unwrap();
    assert_eq!(head.delivery.data, b"m5", "the oldest were dropped");
    // A queue declared later gets it too.
    declare(&ch, "lim.c", FieldTable::default()).await;
    publish_n(&ch, "lim.c", 8).await;
    assert_eq!(ready(&ch, "lim.c").await, 5);
    // Replaced (same name): not new; deleted: the declared limits are back.
    assert!(!set_policy(
        &broker,
        "cap",
        "^lim\\.",
        ApplyTo::Queues,
        0,
        json!({"max-length": 100})
    )
    .unwrap());
    publish_n(&ch, "lim.c", 8).await;
    assert_eq!(ready(&ch, "lim.c").await, 13);
    assert!(broker
        .broker
        .vhost("/")
        .unwrap()
        .delete_policy("cap")
        .unwrap());
    publish_n(&ch, "lim.b", 3).await;
    assert_eq!(ready(&ch, "lim.b").await, 2);
}

#[tokio::test]
async fn message_ttl_and_dead_lettering_from_a_policy() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "dlq", FieldTable::default()).await;
    declare(&ch, "dlq.declared", FieldTable::default()).await;
    ch.exchange_declare(
        "dlx".into(),
        lapin::ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dlq".into(),
        "dlx".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    set_policy(
        &broker,
        "expire",
        "^ttl\\.",
        ApplyTo::All,
        0,
        json!({"message-ttl": 100, "dead-letter-exchange": "dlx"}),
    )
    .unwrap();
    declare(&ch, "ttl.q", FieldTable::default()).await;
    // Declared arguments win for the dead-letter exchange.
    declare(
        &ch,
        "ttl.own",
        table(&[
            ("x-dead-letter-exchange", long_str("")),
            ("x-dead-letter-routing-key", long_str("dlq.declared")),
        ]),
    )
    .await;
    publish_n(&ch, "ttl.q", 3).await;
    publish_n(&ch, "ttl.own", 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(ready(&ch, "ttl.q").await, 0);
    assert_eq!(ready(&ch, "dlq").await, 3, "expired into the policy's DLX");
    assert_eq!(ready(&ch, "dlq.declared").await, 2, "declared DLX wins");
    let dead = get(&ch, "dlq").await.unwrap();
    let death = dead.delivery.properties.headers().as_ref().unwrap().inner()
        ["x-first-death-reason"]
        .clone();
    assert_eq!(death, AMQPValue::LongString("expired".into()));
}

#[tokio::test]
async fn overflow_and_priority_between_policies() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    set_policy(
        &broker,
        "wide",
        ".*",
        ApplyTo::Queues,
        0,
        json!({"max-length": 100}),
    )
    .unwrap();
    set_policy(
        &broker,
        "narrow",
        "^rp$",
        ApplyTo::Queues,
        5,
        json!({"max-length": 1, "overflow": "reject-publish"}),
    )
    .unwrap();
    // An exchanges-only policy does not touch queues.
    set_policy(
        &broker,
        "ex",
        ".*",
        ApplyTo::Exchanges,
        10,
        json!({"alternate-exchange": "ae"}),
    )
    .unwrap();
    declare(&ch, "rp", FieldTable::default()).await;
    let first = ch
        .basic_publish(
            "".into(),
            "rp".into(),
            Default::default(),
            b"1",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let second = ch
        .basic_publish(
            "".into(),
            "rp".into(),
            Default::default(),
            b"2",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(first.is_ack());
    assert!(
        second.is_nack(),
        "the higher-priority policy's reject-publish applies"
    );
    let queue = broker.broker.vhost("/").unwrap().queue("rp").unwrap();
    assert_eq!(queue.policy_name().as_deref(), Some("narrow"));
}

#[tokio::test]
async fn alternate_exchange_from_a_policy() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    for (name, kind) in [
        ("orders", lapin::ExchangeKind::Direct),
        ("ae", lapin::ExchangeKind::Fanout),
    ] {
        ch.exchange_declare(name.into(), kind, Default::default(), FieldTable::default())
            .await
            .unwrap();
    }
    declare(&ch, "unrouted", FieldTable::default()).await;
    ch.queue_bind(
        "unrouted".into(),
        "ae".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    set_policy(
        &broker,
        "ae",
        "^orders$",
        ApplyTo::Exchanges,
        0,
        json!({"alternate-exchange": "ae"}),
    )
    .unwrap();
    publish(&ch, "orders", "nobody", b"lost?").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ready(&ch, "unrouted").await, 1);
}

#[tokio::test]
async fn expires_from_a_policy_deletes_an_unused_queue() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "tmp.q", FieldTable::default()).await;
    set_policy(
        &broker,
        "gc",
        "^tmp\\.",
        ApplyTo::Queues,
        0,
        json!({"expires": 200}),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(broker.broker.vhost("/").unwrap().queue("tmp.q").is_none());
}

#[tokio::test]
async fn invalid_policies_are_refused_with_rabbitmq_texts() {
    let broker = TestBroker::start().await;
    assert_eq!(
        set_policy(
            &broker,
            "bad",
            ".*",
            ApplyTo::Queues,
            0,
            json!({"max-length": "abc"})
        )
        .unwrap_err(),
        "Validation failed\n\n<<\"abc\">> is not a valid maximum length\n"
    );
    assert_eq!(
        set_policy(
            &broker,
            "bad",
            ".*",
            ApplyTo::Queues,
            0,
            json!({"overflow": "sideways"})
        )
        .unwrap_err(),
        "Validation failed\n\n<<\"sideways\">> is not a valid overflow value\n"
    );
    assert!(broker.broker.vhost("/").unwrap().policies().is_empty());
}
