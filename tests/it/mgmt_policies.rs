//! `/api/policies` and `/api/consumer-groups` through HTTP, their effect
//! on queues seen over AMQP, the consumer-group metrics, and policies
//! surviving a restart of the broker binary.

use crate::common::BrokerProcess;
use crate::mgmt_support::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

async fn depth(ch: &lapin::Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

#[tokio::test]
async fn policies_are_managed_over_http_and_shape_queues() {
    let api = Api::start().await;
    let conn = api.amqp("guest", "guest", "/").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("cap.q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    for i in 0..10 {
        ch.basic_publish(
            "".into(),
            "cap.q".into(),
            Default::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let body = json!({"pattern": "^cap\\.", "definition": {"max-length": 3}, "priority": 1, "apply-to": "queues"});
    let (status, _) = api.put("/policies/%2F/cap", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = api.put("/policies/%2F/cap", body).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(depth(&ch, "cap.q").await, 3, "the policy trimmed the queue");

    let (status, one) = api.get("/policies/%2F/cap").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        one,
        json!({"vhost": "/", "name": "cap", "pattern": "^cap\\.", "apply-to": "queues", "definition": {"max-length": 3}, "priority": 1})
    );
    let (_, all) = api.get("/policies").await;
    assert_eq!(all.as_array().map(Vec::len), Some(1));
    let (_, in_vhost) = api.get("/policies/%2F").await;
    assert_eq!(in_vhost, all);
    let (_, queue) = api.get("/queues/%2F/cap.q").await;
    assert_eq!(queue["policy"], json!("cap"));
    assert_eq!(
        queue["effective_policy_definition"],
        json!({"max-length": 3})
    );

    // RabbitMQ's validation text, HTML-escaped as it sends it.
    let (status, err) = api
        .put(
            "/policies/%2F/bad",
            json!({"pattern": ".*", "definition": {"max-length": "abc"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        err,
        json!({"error": "bad_request", "reason": "Validation failed\n\n&lt;&lt;\"abc\"&gt;&gt; is not a valid maximum length\n"})
    );
    // Only administrators and policymakers change policies.
    api.broker()
        .put_user(broker::broker::users::User::with_password(
            "watcher",
            "pw",
            vec!["monitoring".into()],
        ))
        .expect("stored");
    let (status, _) = api
        .call_as(("watcher", "pw"), Method::DELETE, "/policies/%2F/cap", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = api.call(Method::DELETE, "/policies/%2F/cap", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.get("/policies/%2F/cap").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, queue) = api.get("/queues/%2F/cap.q").await;
    assert_eq!(queue["policy"], Value::Null);
}

#[tokio::test]
async fn consumer_groups_are_visible_in_the_api_and_metrics() {
    let api = Api::start().await;
    let conn = api.amqp("guest", "guest", "/").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-partitions".into(), AMQPValue::LongInt(2));
    ch.exchange_declare(
        "shop".into(),
        ExchangeKind::Custom("x-super-stream".into()),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    for i in 0..6 {
        ch.basic_publish(
            "shop".into(),
            "".into(),
            Default::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let member = conn.create_channel().await.unwrap();
    member
        .basic_qos(10, BasicQosOptions::default())
        .await
        .unwrap();
    let mut group_args = FieldTable::default();
    group_args.insert(
        "x-consumer-group".into(),
        AMQPValue::LongString("billing".into()),
    );
    group_args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = member
        .basic_consume(
            "shop".into(),
            "biller".into(),
            Default::default(),
            group_args,
        )
        .await
        .unwrap();
    // Ack 4 of the 6 (round-robin put 3 in each partition).
    for _ in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, groups) = api.get("/consumer-groups").await;
    assert_eq!(status, StatusCode::OK);
    let group = &groups[0];
    assert_eq!(group["super_stream"], json!("shop"));
    assert_eq!(group["name"], json!("billing"));
    assert_eq!(group["members"][0]["consumer_tag"], json!("biller"));
    assert_eq!(group["members"][0]["partitions"], json!([0, 1]));
    let partitions = group["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2);
    let lag: u64 = partitions.iter().map(|p| p["lag"].as_u64().unwrap()).sum();
    assert_eq!(lag, 2, "6 messages, 4 acked");
    assert!(partitions.iter().all(|p| p["owner"] == json!("biller")));
    let (_, partition) = api.get("/queues/%2F/shop-0").await;
    assert_eq!(partition["type"], json!("stream"));

    let text = broker::mgmt::metrics::render(api.broker(), true);
    assert!(text.contains(
        "broker_consumer_group_members{vhost=\"/\",super_stream=\"shop\",group=\"billing\"} 1"
    ));
    let lags: u64 = text
        .lines()
        .filter(|l| l.starts_with("broker_consumer_group_lag{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(lags, 2);
}

#[tokio::test]
async fn policies_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    {
        let p = BrokerProcess::start_with_mgmt(dir.path()).await;
        let status = http
            .put(format!("{}/policies/%2F/keep", p.mgmt_url()))
            .basic_auth("guest", Some("guest"))
            .header("content-type", "application/json")
            .body(json!({"pattern": "^kept$", "definition": {"max-length": 2}}).to_string())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    let p = BrokerProcess::start_with_mgmt(dir.path()).await;
    let listed: Value = http
        .get(format!("{}/policies/%2F", p.mgmt_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["name"], json!("keep"));
    // And it applies to a queue declared after the restart.
    let conn = lapin::Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", p.port),
        Default::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.queue_declare("kept".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    for i in 0..5 {
        ch.basic_publish(
            "".into(),
            "kept".into(),
            Default::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    assert_eq!(depth(&ch, "kept").await, 2);
}
