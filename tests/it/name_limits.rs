//! Names (queue, exchange, vhost) and routing keys longer than 255 bytes,
//! AMQP's short string, are refused on the paths that are not AMQP: the
//! HTTP API, definitions import, super stream partitions. Otherwise the
//! message log would store them cut, and a message would not find its queue
//! after a restart.

use crate::mgmt_support::Api;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn long(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

fn assert_refused((status, body): (StatusCode, Value), what: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert_eq!(body["error"], "bad_request", "{what}: {body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("too long"), "{what}: {reason}");
}

#[tokio::test]
async fn names_longer_than_255_bytes_are_refused_over_http() {
    let api = Api::start().await;
    let too_long = long('q', 256);
    // Multi-byte characters count in bytes: 128 x 2 bytes.
    let too_long_utf8 = long('é', 128);

    assert_refused(
        api.put(&format!("/queues/%2f/{too_long}"), json!({"durable": true}))
            .await,
        "queue",
    );
    assert_refused(
        api.put(
            &format!("/queues/%2f/{}", urlencode(&too_long_utf8)),
            json!({"durable": true}),
        )
        .await,
        "queue (utf-8)",
    );
    let (status, _) = api
        .put(
            &format!("/queues/%2f/{}", long('q', 255)),
            json!({"durable": true}),
        )
        .await;
    assert!(status.is_success(), "255 bytes is allowed: {status}");

    assert_refused(
        api.put(
            &format!("/exchanges/%2f/{too_long}"),
            json!({"type": "direct", "durable": true}),
        )
        .await,
        "exchange",
    );
    assert_refused(
        api.put(&format!("/vhosts/{}", long('v', 256)), json!({}))
            .await,
        "vhost",
    );
    let (status, _) = api.put("/queues/%2f/target", json!({})).await;
    assert!(status.is_success(), "{status}");
    assert_refused(
        api.post(
            "/bindings/%2f/e/amq.direct/q/target",
            json!({"routing_key": long('k', 256)}),
        )
        .await,
        "binding key",
    );
    assert_refused(
        api.post(
            "/exchanges/%2f/amq.default/publish",
            json!({"properties": {}, "routing_key": long('k', 256),
                   "payload": "x", "payload_encoding": "string"}),
        )
        .await,
        "published routing key",
    );

    // Definitions import.
    assert_refused(
        api.post(
            "/definitions",
            json!({"queues": [{"name": too_long, "vhost": "/", "durable": true,
                               "auto_delete": false, "arguments": {}}]}),
        )
        .await,
        "imported queue",
    );
    assert_refused(
        api.post(
            "/definitions",
            json!({"exchanges": [{"name": too_long, "vhost": "/", "type": "direct",
                                  "durable": true, "auto_delete": false,
                                  "internal": false, "arguments": {}}]}),
        )
        .await,
        "imported exchange",
    );
    assert_refused(
        api.post(
            "/definitions",
            json!({"vhosts": [{"name": long('v', 300)}]}),
        )
        .await,
        "imported vhost",
    );

    // Nothing was made, and the API still serves.
    let (status, queues) = api.get("/queues").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert!(names.iter().all(|n| n.len() <= 255), "{names:?}");
    let (status, vhosts) = api.get("/vhosts").await;
    assert_eq!(status, StatusCode::OK);
    assert!(vhosts
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["name"].as_str().is_some_and(|n| n.len() <= 255)));
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// A super stream's partitions are queues `<name>-<i>`: a name that fits
/// but whose partition names do not is refused before anything is made.
#[tokio::test]
async fn a_super_stream_whose_partition_names_are_too_long_is_refused() {
    let api = Api::start().await;
    let conn = api.amqp("guest", "guest", "/").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let name = long('s', 254);
    let mut args = FieldTable::default();
    args.insert("x-partitions".into(), AMQPValue::LongInt(3));
    let err = ch
        .exchange_declare(
            name.as_str().into(),
            lapin::ExchangeKind::Custom("x-super-stream".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect_err("partition names over 255 bytes");
    assert!(err.to_string().contains("too long"), "{err}");
    let ch = conn.create_channel().await.unwrap();
    let passive = ch
        .exchange_declare(
            name.as_str().into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(passive.is_err(), "the super stream exchange was made");
}
