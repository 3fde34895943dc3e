//! Message counters and rates of exchanges (`publish_in`, `publish_out`)
//! and channels (`publish`, `confirm`, `deliver_get`, `ack`, `redeliver`,
//! ...) as `/api/exchanges` and `/api/channels` show them, driven by real
//! lapin clients.

use crate::mgmt_support::{eventually, Api};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn stat(v: &Value, key: &str) -> u64 {
    v["message_stats"][key].as_u64().unwrap_or(0)
}

fn rate(v: &Value, key: &str) -> f64 {
    v["message_stats"][format!("{key}_details")]["rate"]
        .as_f64()
        .unwrap_or(0.0)
}

async fn exchange(api: &Api, name: &str) -> Value {
    let (_, all) = api.get("/exchanges/%2F").await;
    all.as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no exchange {name:?} in {all}"))
}

/// The one channel of the connection the client called `name`.
async fn channel_of(api: &Api, name: &str) -> Value {
    let (_, all) = api.get("/channels").await;
    let (_, conns) = api.get("/connections").await;
    let conn = conns
        .as_array()
        .and_then(|a| a.iter().find(|c| c["user_provided_name"] == name))
        .map(|c| c["name"].clone())
        .unwrap_or(Value::Null);
    all.as_array()
        .and_then(|a| {
            a.iter()
                .find(|c| c["connection_details"]["name"] == conn)
                .cloned()
        })
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn exchange_publish_in_and_out() {
    let api = Api::start().await;
    let conn = api.amqp_named("pub").await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch.exchange_declare(
        "fan".into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    for q in ["a", "b", "c"] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue");
        ch.queue_bind(
            q.into(),
            "fan".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    // A fresh exchange has no message_stats, as in RabbitMQ.
    assert_eq!(exchange(&api, "fan").await.get("message_stats"), None);

    let publish = |x: &'static str, key: &'static str| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                x.into(),
                key.into(),
                BasicPublishOptions::default(),
                b"m",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        }
    };
    for _ in 0..4 {
        publish("fan", "").await;
    }
    publish("", "a").await;
    publish("", "nowhere").await;

    // Counts are exact once confirmed: 4 in, 4 × 3 queues out.
    let fan = exchange(&api, "fan").await;
    assert_eq!(stat(&fan, "publish_in"), 4, "{fan}");
    assert_eq!(stat(&fan, "publish_out"), 12, "{fan}");
    assert!(fan["message_stats"]["publish_in_details"]["rate"].is_number());
    let default = exchange(&api, "").await;
    assert_eq!(stat(&default, "publish_in"), 2, "{default}");
    assert_eq!(stat(&default, "publish_out"), 1, "{default}");

    // Through the management API too.
    let (_, routed) = api
        .post(
            "/exchanges/%2F/fan/publish",
            json!({"properties": {}, "routing_key": "", "payload": "x", "payload_encoding": "string"}),
        )
        .await;
    assert_eq!(routed, json!({"routed": true}));
    let fan = exchange(&api, "fan").await;
    assert_eq!(
        (stat(&fan, "publish_in"), stat(&fan, "publish_out")),
        (5, 15)
    );

    // Rates while a publisher keeps going.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (ch, stop) = (ch.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = ch
                    .basic_publish(
                        "fan".into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        b"tick",
                        BasicProperties::default(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    eventually(10, || async {
        let fan = exchange(&api, "fan").await;
        rate(&fan, "publish_in") > 0.0 && rate(&fan, "publish_out") > rate(&fan, "publish_in")
    })
    .await;
    let (_, one) = api.get("/exchanges/%2F/fan").await;
    assert!(stat(&one, "publish_in") > 5, "{one}");
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
}

#[tokio::test]
async fn channel_message_stats_and_rates() {
    let api = Api::start().await;
    let conn = api.amqp_named("worker").await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch.queue_declare(
        "work".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue");
    for _ in 0..5 {
        ch.basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            b"job",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    // One unroutable mandatory publish: returned.
    let _ = ch
        .basic_publish(
            "".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await;
    // get one and ack it; get one, nack it back, get it again (redelivered).
    let got = ch
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("message");
    got.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    let got = ch
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("message");
    got.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("nack");
    // The rest by a consumer, acked.
    let mut consumer = ch
        .basic_consume(
            "work".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("delivery in time")
            .expect("delivery")
            .expect("delivery ok");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }

    eventually(10, || async {
        let c = channel_of(&api, "worker").await;
        stat(&c, "ack") == 5
    })
    .await;
    let c = channel_of(&api, "worker").await;
    assert_eq!(c["confirm"], true, "{c}");
    assert_eq!(c["transactional"], false);
    let s = &c["message_stats"];
    assert_eq!(s["publish"], 6, "{c}");
    assert_eq!(s["confirm"], 6, "{c}");
    assert_eq!(s["return_unroutable"], 1, "{c}");
    assert_eq!(s["get"], 2, "{c}");
    assert_eq!(s["deliver"], 4, "{c}");
    assert_eq!(s["deliver_get"], 6, "{c}");
    assert_eq!(s["redeliver"], 1, "{c}");
    for key in ["publish", "confirm", "deliver_get", "ack", "redeliver"] {
        assert!(
            s[format!("{key}_details")]["rate"].is_number(),
            "{key}: {c}"
        );
    }
    let name = c["name"].as_str().expect("channel name").to_string();
    let path = format!(
        "/channels/{}",
        name.replace('%', "%25")
            .replace(' ', "%20")
            .replace('>', "%3E")
            .replace('(', "%28")
            .replace(')', "%29")
    );
    let (_, one) = api.get(&path).await;
    assert_eq!(one["message_stats"]["ack"], 5, "{one}");

    // Rates while a consumer keeps acking what a publisher sends.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (ch, stop) = (ch.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = ch
                    .basic_publish(
                        "".into(),
                        "work".into(),
                        BasicPublishOptions::default(),
                        b"tick",
                        BasicProperties::default(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let acker = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            if d.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
        }
    });
    eventually(10, || async {
        let c = channel_of(&api, "worker").await;
        ["publish", "confirm", "deliver_get", "ack"]
            .iter()
            .all(|k| rate(&c, k) > 0.0)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    drop(conn);
    acker.abort();
}
