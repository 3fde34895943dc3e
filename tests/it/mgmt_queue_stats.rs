//! A queue's `message_stats` in `/api/queues`: the kinds of delivery
//! (`deliver`, `deliver_no_ack`, `get`, `get_no_ack`, `get_empty`) next to
//! `deliver_get`, with rates, driven by real lapin clients.

use crate::mgmt_support::{eventually, Api};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn stat(q: &Value, key: &str) -> Option<u64> {
    q["message_stats"][key].as_u64()
}

fn rate(q: &Value, key: &str) -> Option<f64> {
    q["message_stats"][format!("{key}_details")]["rate"].as_f64()
}

async fn queue(api: &Api, name: &str) -> Value {
    let (status, q) = api.get(&format!("/queues/%2F/{name}")).await;
    assert_eq!(status, 200, "{q}");
    q
}

async fn publish(ch: &Channel, queue: &str, n: usize) {
    for _ in 0..n {
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
}

#[tokio::test]
async fn queue_counts_each_kind_of_delivery() {
    let api = Api::start().await;
    let conn = api.amqp("guest", "guest", "/").await.expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "kinds".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");

    // Two to a manual-ack consumer (prefetch 2, so no third is on its way
    // when it is cancelled), acked.
    publish(&ch, "kinds", 2).await;
    let manual = conn.create_channel().await.expect("channel");
    manual
        .basic_qos(2, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut deliveries = manual
        .basic_consume(
            "kinds".into(),
            "manual".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..2 {
        let d = deliveries.next().await.expect("delivery").expect("ok");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    manual
        .basic_cancel("manual".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");

    // Three to an auto-ack consumer.
    let auto = conn.create_channel().await.expect("channel");
    let mut deliveries = auto
        .basic_consume(
            "kinds".into(),
            "auto".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    publish(&ch, "kinds", 3).await;
    for _ in 0..3 {
        deliveries.next().await.expect("delivery").expect("ok");
    }
    auto.basic_cancel("auto".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");

    // basic.get: one with ack (acked), two without, then two on the
    // empty queue.
    publish(&ch, "kinds", 3).await;
    eventually(10, || async {
        queue(&api, "kinds").await["messages_ready"].as_u64() == Some(3)
    })
    .await;
    let got = ch
        .basic_get("kinds".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("a message");
    got.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    for no_ack in [true, true] {
        ch.basic_get("kinds".into(), BasicGetOptions { no_ack })
            .await
            .expect("get")
            .expect("a message");
    }
    for _ in 0..2 {
        assert!(ch
            .basic_get("kinds".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .is_none());
    }

    let expected = [
        ("deliver", 2),
        ("deliver_no_ack", 3),
        ("get", 1),
        ("get_no_ack", 2),
        ("get_empty", 2),
        ("deliver_get", 8),
        ("publish", 8),
    ];
    eventually(10, || async {
        let q = queue(&api, "kinds").await;
        stat(&q, "ack") == Some(3)
    })
    .await;
    let q = queue(&api, "kinds").await;
    for (key, want) in expected {
        assert_eq!(stat(&q, key), Some(want), "{key}: {}", q["message_stats"]);
        assert!(rate(&q, key).is_some(), "{key}_details.rate");
    }
    // The same in the list.
    let (_, all) = api.get("/queues/%2F").await;
    let listed = all
        .as_array()
        .and_then(|a| a.iter().find(|q| q["name"] == "kinds").cloned())
        .expect("listed");
    for (key, want) in expected {
        assert_eq!(stat(&listed, key), Some(want), "{key} in the list");
    }

    // The management API's own get counts as a get with ack (it requeues).
    publish(&ch, "kinds", 1).await;
    eventually(10, || async {
        queue(&api, "kinds").await["messages_ready"].as_u64() == Some(1)
    })
    .await;
    let (status, got) = api
        .post(
            "/queues/%2F/kinds/get",
            serde_json::json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(stat(&queue(&api, "kinds").await, "get"), Some(2));
}

#[tokio::test]
async fn kinds_of_delivery_have_rates() {
    let api = Api::start().await;
    let conn = api.amqp("guest", "guest", "/").await.expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "busy".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");

    // Publish and get without ack, and get on the empty queue, until the
    // rates show (sampled on reads at least the sampler's interval apart).
    let running = Arc::new(AtomicBool::new(true));
    let worker = {
        let (ch, running) = (ch.clone(), running.clone());
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                publish(&ch, "busy", 1).await;
                for _ in 0..2 {
                    let _ = ch
                        .basic_get("busy".into(), BasicGetOptions { no_ack: true })
                        .await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    eventually(30, || async {
        let q = queue(&api, "busy").await;
        rate(&q, "get_no_ack").unwrap_or(0.0) > 0.0 && rate(&q, "get_empty").unwrap_or(0.0) > 0.0
    })
    .await;
    running.store(false, Ordering::Relaxed);
    worker.await.expect("worker");
    let q = queue(&api, "busy").await;
    assert_eq!(stat(&q, "deliver"), Some(0));
    assert_eq!(rate(&q, "deliver"), Some(0.0));
}

/// `2026-11-28T16:44:21.557+00:00`, as RabbitMQ writes `idle_since`.
fn is_timestamp(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    s.len() == 29
        && s.ends_with("+00:00")
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && s[..4].parse::<u32>().is_ok_and(|y| y >= 2024)
}

#[tokio::test]
async fn idle_queues_and_channels_show_idle_since() {
    let api = Api::start().await;
    let conn = api.amqp("guest", "guest", "/").await.expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "quiet".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    publish(&ch, "quiet", 1).await;

    // Nothing happens: reads soon show both idle.
    eventually(10, || async {
        let q = queue(&api, "quiet").await;
        let (_, channels) = api.get("/channels").await;
        is_timestamp(&q["idle_since"]) && is_timestamp(&channels[0]["idle_since"])
    })
    .await;

    // Activity: the next read of the queue is not idle.
    publish(&ch, "quiet", 1).await;
    eventually(10, || async {
        queue(&api, "quiet").await["messages_ready"].as_u64() == Some(2)
    })
    .await;
    // The read that saw the count change has no idle_since; a later one
    // without activity has it again.
    let (_, channels) = api.get("/channels").await;
    assert!(channels[0].get("idle_since").is_none(), "{}", channels[0]);
    eventually(10, || async {
        is_timestamp(&queue(&api, "quiet").await["idle_since"])
    })
    .await;
}
