//! Message rates (`*_details.rate`) of queues, vhosts and the overview,
//! sampled in the background (every 200 ms in these tests, 5 s by
//! default), while real lapin clients publish, consume and ack; and
//! overview totals that outlive a deleted queue.

use crate::mgmt_support::Api;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn rate(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_f64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {v}"))
}

/// Polls `path` until the rate at `field` satisfies `ok`, for up to 5 s.
async fn wait_for_rate(api: &Api, path: &str, field: &[&str], ok: impl Fn(f64) -> bool) -> f64 {
    let mut last = f64::NAN;
    for _ in 0..100 {
        let (status, v) = api.get(path).await;
        assert_eq!(status, StatusCode::OK);
        last = rate(&v, field);
        if ok(last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} {field:?} stayed at {last}");
}

#[tokio::test]
async fn rates_follow_publishing_consuming_and_acking() {
    let api = Api::start().await;
    let (status, _) = api
        .put("/queues/%2F/rated", json!({"durable": false}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, q) = api.get("/queues/%2F/rated").await;
    assert_eq!(rate(&q, &["message_stats", "publish_details", "rate"]), 0.0);

    // A steady publisher, until told to stop.
    let conn = api.amqp("guest", "guest", "/").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (ch, stop, sent) = (ch.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                ch.basic_publish(
                    "".into(),
                    "rated".into(),
                    BasicPublishOptions::default(),
                    b"tick",
                    BasicProperties::default(),
                )
                .await
                .unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let positive = |r: f64| r > 0.0;
    let publish = ["message_stats", "publish_details", "rate"];
    let r = wait_for_rate(&api, "/queues/%2F/rated", &publish, positive).await;
    assert!(r < 1000.0, "about 200/s expected, got {r}");
    wait_for_rate(
        &api,
        "/queues/%2F/rated",
        &["messages_details", "rate"],
        positive,
    )
    .await;
    wait_for_rate(&api, "/overview", &publish, positive).await;
    wait_for_rate(&api, "/vhosts/%2F", &publish, positive).await;
    wait_for_rate(
        &api,
        "/overview",
        &["queue_totals", "messages_ready_details", "rate"],
        positive,
    )
    .await;
    // The publishing connection's received bytes per second.
    let mut recv_rate = 0.0;
    for _ in 0..100 {
        let (_, conns) = api.get("/connections").await;
        recv_rate = rate(&conns[0], &["recv_oct_details", "rate"]);
        if recv_rate > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recv_rate > 0.0, "connection recv_oct rate stayed 0");
    let (_, overview) = api.get("/overview").await;
    assert_eq!(overview["churn_rates"]["connection_created"], 1);
    assert_eq!(overview["churn_rates"]["connection_closed"], 0);
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let total = sent.load(Ordering::Relaxed);

    // Idle again: the rates fall back to 0.
    wait_for_rate(&api, "/queues/%2F/rated", &publish, |r| r == 0.0).await;
    wait_for_rate(&api, "/overview", &publish, |r| r == 0.0).await;

    // Consuming and acking everything: deliver and ack rates, and the
    // depth falling.
    let mut consumer = ch
        .basic_consume(
            "rated".into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let drain = tokio::spawn(async move {
        for _ in 0..total {
            let d = consumer.next().await.unwrap().unwrap();
            d.ack(BasicAckOptions::default()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let deliver = ["message_stats", "deliver_get_details", "rate"];
    let ack = ["message_stats", "ack_details", "rate"];
    wait_for_rate(&api, "/queues/%2F/rated", &deliver, positive).await;
    wait_for_rate(&api, "/queues/%2F/rated", &ack, positive).await;
    wait_for_rate(
        &api,
        "/queues/%2F/rated",
        &["messages_ready_details", "rate"],
        |r| r < 0.0,
    )
    .await;
    wait_for_rate(&api, "/overview", &ack, positive).await;
    drain.await.unwrap();
    wait_for_rate(&api, "/queues/%2F/rated", &ack, |r| r == 0.0).await;

    // Chart data as RabbitMQ's UI asks for it: samples, newest first, at
    // whole seconds (each the latest sample taken at or before it), so the
    // newest shows the total once a second boundary has passed after the
    // last publish.
    let mut newest = Value::Null;
    let mut charted = Value::Null;
    for _ in 0..60 {
        (_, charted) = api
            .get("/overview?msg_rates_age=60&msg_rates_incr=1&lengths_age=60&lengths_incr=1")
            .await;
        newest = charted["message_stats"]["publish_details"]["samples"][0]["sample"].clone();
        if newest == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(newest, total);
    let publish = &charted["message_stats"]["publish_details"];
    let samples = publish["samples"].as_array().expect("samples");
    let stamps: Vec<u64> = samples
        .iter()
        .map(|s| s["timestamp"].as_u64().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] > w[1]) && stamps.iter().all(|t| t % 1000 == 0),
        "newest first, at whole seconds: {stamps:?}"
    );
    assert!(
        samples
            .iter()
            .all(|s| s["sample"].as_u64().unwrap() <= total),
        "{publish}"
    );
    assert!(publish["avg_rate"].as_f64().unwrap() >= 0.0);
    assert!(charted["queue_totals"]["messages_details"]["samples"]
        .as_array()
        .is_some_and(|s| !s.is_empty()));
    let (_, plain) = api.get("/overview").await;
    assert!(plain["message_stats"]["publish_details"]
        .get("samples")
        .is_none());

    // Overview totals keep the counts of a queue after it is deleted.
    let (_, before) = api.get("/overview").await;
    assert_eq!(before["message_stats"]["publish"], total);
    assert_eq!(before["message_stats"]["ack"], total);
    let (status, _) = api
        .call(reqwest::Method::DELETE, "/queues/%2F/rated", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, after) = api.get("/overview").await;
    assert_eq!(after["message_stats"]["publish"], total);
    assert_eq!(after["message_stats"]["ack"], total);
    assert_eq!(after["message_stats"]["deliver_get"], total);
}
