//! `POST /api/queues/{vhost}/{name}/browse`: peeking at ready messages
//! (this broker's addition to RabbitMQ's API). Browsing must leave the
//! queue exactly as it was: same messages, same order, not redelivered,
//! paged-out messages still readable afterwards.

use crate::mgmt_support;
use crate::mgmt_support::Api;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn declare(ch: &lapin::Channel, name: &str, args: FieldTable) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare");
}

async fn publish(ch: &lapin::Channel, queue: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

fn payloads(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| m["payload"].as_str().expect("payload").to_string())
        .collect()
}

#[tokio::test]
async fn browse_shows_messages_without_taking_them() {
    let api = Api::start().await;
    let conn = api.amqp("guest", "guest", "/").await.expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "peek", FieldTable::default()).await;
    let mut headers = FieldTable::default();
    headers.insert("n".into(), AMQPValue::LongLongInt(1));
    publish(
        &ch,
        "peek",
        b"m0",
        BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2),
    )
    .await;
    for i in 1..5 {
        publish(
            &ch,
            "peek",
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    publish(&ch, "peek", &[0xff, 0xfe], BasicProperties::default()).await;
    // Publishes are not confirmed here: wait until all are queued.
    let queue = api
        .broker()
        .vhost("/")
        .and_then(|v| v.queue("peek"))
        .expect("queue");
    mgmt_support::eventually(10, || async { queue.message_count() == 6 }).await;

    // Default: the head only, shaped as /get answers it.
    let (status, head) = api.post("/queues/%2F/peek/browse", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{head}");
    assert_eq!(
        head,
        json!([{
            "payload": "m0",
            "payload_encoding": "string",
            "payload_bytes": 2,
            "properties": {"delivery_mode": 2, "headers": {"n": 1}},
            "routing_key": "peek",
            "exchange": "",
            "redelivered": false,
            "message_count": 5,
        }])
    );

    let (_, window) = api
        .post("/queues/%2F/peek/browse", json!({"count": 3, "offset": 2}))
        .await;
    assert_eq!(payloads(&window), ["m2", "m3", "m4"]);
    assert_eq!(window[0]["properties"], json!([]));
    assert_eq!(window[2]["message_count"], 1);

    // Past the end: what there is, then nothing. Numeric strings work too.
    let (_, tail) = api
        .post(
            "/queues/%2F/peek/browse",
            json!({"count": "10", "offset": "4"}),
        )
        .await;
    assert_eq!(tail.as_array().map(Vec::len), Some(2));
    assert_eq!(tail[1]["payload_encoding"], "base64");
    assert_eq!(tail[1]["payload"], "//4=");
    let (_, none) = api
        .post("/queues/%2F/peek/browse", json!({"offset": 6}))
        .await;
    assert_eq!(none, json!([]));

    // encoding and truncate as for /get.
    let (_, b64) = api
        .post(
            "/queues/%2F/peek/browse",
            json!({"encoding": "base64", "truncate": 1}),
        )
        .await;
    assert_eq!(b64[0]["payload"], "bQ==");
    assert_eq!(b64[0]["payload_bytes"], 2);

    // The queue is untouched: all six, in order, none redelivered.
    let (_, q) = api.get("/queues/%2F/peek").await;
    assert_eq!(q["messages_ready"], 6);
    assert_eq!(q["messages_unacknowledged"], 0);
    for i in 0..5 {
        let got = ch
            .basic_get("peek".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .expect("a message");
        assert_eq!(got.delivery.data, format!("m{i}").into_bytes());
        assert!(!got.delivery.redelivered, "m{i} flagged redelivered");
    }
}

#[tokio::test]
async fn browse_reads_paged_out_messages_and_leaves_them_paged() {
    let api = Api::start().await;
    let conn = api.amqp("guest", "guest", "/").await.expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-max-in-memory-length".into(), AMQPValue::LongLongInt(5));
    declare(&ch, "deep", args).await;
    for i in 0..50 {
        publish(
            &ch,
            "deep",
            format!("p{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let queue = api
        .broker()
        .vhost("/")
        .and_then(|v| v.queue("deep"))
        .expect("queue");
    // Publishes are not confirmed here: wait until all are queued.
    mgmt_support::eventually(10, || async { queue.message_count() == 50 }).await;
    let paged = queue.paged_count();
    assert!(paged > 0, "nothing paged out");

    let (status, all) = api
        .post("/queues/%2F/deep/browse", json!({"count": 50}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let expected: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    assert_eq!(payloads(&all), expected);
    let (_, middle) = api
        .post("/queues/%2F/deep/browse", json!({"count": 2, "offset": 30}))
        .await;
    assert_eq!(payloads(&middle), ["p30", "p31"]);
    assert_eq!(queue.paged_count(), paged, "browse paged messages in");

    for i in 0..50 {
        let got = ch
            .basic_get("deep".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .expect("a message");
        assert_eq!(got.delivery.data, format!("p{i}").into_bytes());
    }
}

#[tokio::test]
async fn browse_errors() {
    let api = Api::start().await;
    let conn = api.amqp("guest", "guest", "/").await.expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "q", FieldTable::default()).await;

    let (status, body) = api.post("/queues/%2F/missing/browse", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "Object Not Found");
    let (status, _) = api.post("/queues/nope/q/browse", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for bad in [
        json!({"count": -1}),
        json!({"count": "many"}),
        json!({"offset": 1.5}),
        json!({"encoding": "hex"}),
        json!({"truncate": "x"}),
        json!([1, 2]),
    ] {
        let (status, body) = api.post("/queues/%2F/q/browse", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"], "bad_request", "{bad}");
        assert!(body["reason"].is_string(), "{bad}");
    }

    // Streams: a clear 400.
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    declare(&ch, "log", args).await;
    let (status, body) = api.post("/queues/%2F/log/browse", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("stream")),
        "{body}"
    );

    // Read permission on the queue is needed; a user without any
    // permission in the vhost gets 401 too.
    for (path, body) in [
        (
            "/users/reader",
            json!({"password": "pw", "tags": "management"}),
        ),
        (
            "/permissions/%2F/reader",
            json!({"configure": ".*", "write": ".*", "read": "^other$"}),
        ),
        (
            "/users/stranger",
            json!({"password": "pw", "tags": "monitoring"}),
        ),
    ] {
        let (status, _) = api.put(path, body).await;
        assert!(status.is_success(), "{path}");
    }
    // No read permission on the queue: refused as AMQP refuses it.
    let (status, body) = api
        .call_as(
            ("reader", "pw"),
            Method::POST,
            "/queues/%2F/q/browse",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body,
        json!({"error": "access_refused", "reason": "access to queue 'q' in vhost '/' refused for user 'reader'"})
    );
    // No permission entry for the vhost at all.
    let (status, body) = api
        .call_as(
            ("stranger", "pw"),
            Method::POST,
            "/queues/%2F/q/browse",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "not_authorized");
    let (status, _) = api
        .call_as(
            ("reader", "pw"),
            Method::POST,
            "/queues/%2F/other/browse",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
