//! `/api/channels`, `/api/connections/{name}/channels`, `/api/consumers`
//! and `/api/consumers/{vhost}`: real lapin consumers seen through raw HTTP
//! and through RabbitMQ's own API client (`rabbitmq_http_client`).

use crate::mgmt_support::{eventually, Api};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The management name of the connection the client called `name`.
async fn connection_name(api: &Api, name: &str) -> String {
    for _ in 0..100 {
        let (_, conns) = api.get("/connections").await;
        let found = conns.as_array().and_then(|all| {
            all.iter()
                .find(|c| c["user_provided_name"] == name)
                .and_then(|c| c["name"].as_str().map(str::to_string))
        });
        if let Some(found) = found {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no connection named {name}");
}

#[tokio::test]
async fn channels_and_consumers_have_rabbitmq_fields() {
    let api = Api::start().await;
    let conn = api.amqp_named("orders-app").await;
    let ch1 = conn.create_channel().await.unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    for (ch, queue) in [(&ch1, "work"), (&ch2, "events")] {
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    ch1.basic_qos(5, BasicQosOptions::default()).await.unwrap();
    let mut work = ch1
        .basic_consume(
            "work".into(),
            "worker-1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-priority".into(), AMQPValue::LongInt(3));
    let _events = ch2
        .basic_consume(
            "events".into(),
            "listener".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();

    // Two messages delivered to worker-1 and not acked yet.
    let publisher = api.amqp_named("publisher").await;
    let pch = publisher.create_channel().await.unwrap();
    for body in [b"a", b"b"] {
        pch.basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let first = work.next().await.unwrap().unwrap();
    let _second = work.next().await.unwrap().unwrap();

    let name = connection_name(&api, "orders-app").await;

    // Consumers, through RabbitMQ's API client and raw.
    let consumers = api
        .client()
        .list_consumers()
        .await
        .expect("consumers parse");
    assert_eq!(consumers.len(), 2);
    let (status, raw) = api.get("/consumers/%2F").await;
    assert_eq!(status, StatusCode::OK);
    let raw = raw.as_array().unwrap().clone();
    let worker = raw
        .iter()
        .find(|c| c["consumer_tag"] == "worker-1")
        .unwrap();
    assert_eq!(worker["queue"], json!({"name": "work", "vhost": "/"}));
    assert_eq!(worker["ack_required"], true);
    assert_eq!(worker["exclusive"], false);
    assert_eq!(worker["prefetch_count"], 5);
    assert_eq!(worker["active"], true);
    assert_eq!(worker["activity_status"], "up");
    assert_eq!(worker["channel_details"]["connection_name"], name.as_str());
    assert_eq!(worker["channel_details"]["number"], 1);
    assert_eq!(worker["channel_details"]["name"], format!("{name} (1)"));
    assert_eq!(worker["channel_details"]["user"], "guest");
    let listener = raw
        .iter()
        .find(|c| c["consumer_tag"] == "listener")
        .unwrap();
    assert_eq!(listener["ack_required"], false);
    assert_eq!(listener["exclusive"], true);
    assert_eq!(listener["arguments"], json!({"x-priority": 3}));
    assert_eq!(listener["channel_details"]["number"], 2);
    let (status, _) = api.get("/consumers/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Channels of the connection: numbers, consumers, unacked deliveries.
    let channels = api
        .client()
        .list_channels_on(&name)
        .await
        .expect("channels parse");
    assert_eq!(channels.len(), 2);
    let (_, on_conn) = api
        .get(&format!("/connections/{}/channels", percent(&name)))
        .await;
    let one = on_conn
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["number"] == 1)
        .cloned()
        .unwrap();
    assert_eq!(one["name"], format!("{name} (1)"));
    assert_eq!(one["connection_details"]["name"], name.as_str());
    assert_eq!(one["vhost"], "/");
    assert_eq!(one["user"], "guest");
    assert_eq!(one["state"], "running");
    assert_eq!(one["consumer_count"], 1);
    assert_eq!(one["prefetch_count"], 5);
    assert_eq!(one["messages_unacknowledged"], 2);
    assert!(one["message_stats"]["publish_details"]["rate"].is_number());
    let all = api
        .client()
        .list_channels()
        .await
        .expect("all channels parse");
    assert_eq!(all.len(), 3, "two on orders-app, one on publisher");
    let (_, in_vhost) = api.get("/vhosts/%2F/channels").await;
    assert_eq!(in_vhost.as_array().unwrap().len(), 3);

    // One channel in detail.
    let (status, detail) = api
        .get(&format!("/channels/{}", percent(&format!("{name} (1)"))))
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["consumer_details"][0]["consumer_tag"], "worker-1");
    assert_eq!(detail["deliveries"], json!([]));
    let (status, _) = api
        .get(&format!("/channels/{}", percent(&format!("{name} (9)"))))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Acks and cancels show at once.
    first
        .acker
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    eventually(5, || async {
        let (_, chans) = api.get("/channels").await;
        chans.as_array().unwrap().iter().any(|c| {
            c["connection_details"]["name"] == name.as_str()
                && c["number"] == 1
                && c["messages_unacknowledged"] == 1
        })
    })
    .await;
    ch1.basic_cancel("worker-1".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    let (_, raw) = api.get("/consumers").await;
    let tags: Vec<&Value> = raw
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["consumer_tag"])
        .collect();
    assert_eq!(tags, [&json!("listener")]);
}

#[tokio::test]
async fn single_active_consumer_shows_who_is_waiting() {
    let api = Api::start().await;
    let conn = api.amqp_named("sac").await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    ch.queue_declare("one-at-a-time".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    // Kept: lapin cancels a consumer when it is dropped.
    let mut kept = Vec::new();
    for tag in ["first", "second"] {
        let consumer = ch
            .basic_consume(
                "one-at-a-time".into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        kept.push(consumer);
    }
    let (_, raw) = api.get("/consumers").await;
    let status: Vec<(String, bool, String)> = raw
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["consumer_tag"].as_str().unwrap().to_string(),
                c["active"].as_bool().unwrap(),
                c["activity_status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            ("first".to_string(), true, "up".to_string()),
            ("second".to_string(), false, "waiting".to_string())
        ]
    );
    let (_, q) = api.get("/queues/%2F/one-at-a-time").await;
    assert_eq!(q["single_active_consumer_tag"], "first");
    assert_eq!(q["consumers"], 2);
    let details: Vec<&Value> = q["consumer_details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["consumer_tag"])
        .collect();
    assert_eq!(details, [&json!("first"), &json!("second")]);
    // A user without the monitoring tag sees only its own vhosts' consumers.
    let (code, _) = api
        .put(
            "/users/viewer",
            json!({"password": "v", "tags": "management"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, none) = api
        .call_as(("viewer", "v"), reqwest::Method::GET, "/consumers", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(none, json!([]));
    let (_, chans) = api
        .call_as(("viewer", "v"), reqwest::Method::GET, "/channels", None)
        .await;
    assert_eq!(chans, json!([]), "other users' channels are hidden");
}
