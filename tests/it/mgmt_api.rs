//! The management HTTP API, driven by a real RabbitMQ API client
//! (`rabbitmq_http_client`, whose response types are RabbitMQ's shapes),
//! by raw HTTP for status codes and error bodies, and by lapin for the
//! AMQP side of the same broker.

use crate::common;
use crate::common::TestBroker;
use crate::mgmt_support::Api;
use broker::broker::users::Permission;
use futures_lite::StreamExt;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use rabbitmq_http_client::commons::{ExchangeType, QueueType};
use rabbitmq_http_client::requests::{ExchangeParams, QueueParams};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

/// A broker whose management API is served by the server itself (rates
/// sampled at the default interval).
async fn start() -> Api {
    Api::on(TestBroker::start().await)
}

/// Adds `name` (password "secret") with `tags`, and full permissions on
/// `/` if `vhost_access`.
fn add_user(m: &Api, name: &str, tags: &[&str], vhost_access: bool) {
    let mut users = m.broker().users.write();
    users.add(name, "secret", tags);
    if vhost_access {
        users.set_permission(
            name,
            "/",
            Permission {
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            },
        );
    }
}

/// Polls until `check` holds (management reads are live, but AMQP
/// publishes are asynchronous), for at most 5 s.
async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 5 s");
}

fn status_of<T: std::fmt::Debug>(
    result: Result<T, rabbitmq_http_client::error::HttpClientError>,
) -> u16 {
    match result {
        Ok(v) => panic!("expected an HTTP error, got {v:?}"),
        Err(e) => e
            .status_code()
            .map(|s| s.as_u16())
            .unwrap_or_else(|| panic!("no status in {e:?}")),
    }
}

#[tokio::test]
async fn overview_nodes_and_whoami_have_rabbitmq_shape() {
    let m = start().await;
    let client = m.client();
    let overview = client.overview().await.expect("overview parses");
    assert_eq!(overview.object_totals.queues, 0);
    assert_eq!(overview.object_totals.exchanges, 6, "default + 5 amq.*");
    assert!(overview.node.starts_with("broker@"));
    assert_eq!(overview.listeners[0].protocol, "amqp");

    let (status, raw) = m.get("/overview").await;
    assert_eq!(status, StatusCode::OK);
    for key in [
        "management_version",
        "rates_mode",
        "exchange_types",
        "product_version",
        "rabbitmq_version",
        "message_stats",
        "queue_totals",
        "object_totals",
        "churn_rates",
        "listeners",
    ] {
        assert!(raw.get(key).is_some(), "overview lacks {key}");
    }
    assert_eq!(raw["queue_totals"]["messages_details"]["rate"], json!(0.0));

    let nodes = client.list_nodes().await.expect("nodes parse");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].name, overview.node);
    assert!(nodes[0].fd_total > 0);
    let node = client.get_node_info(&overview.node).await.expect("node");
    assert_eq!(node.name, overview.node);
    assert_eq!(
        m.get("/nodes/rabbit@nowhere").await.0,
        StatusCode::NOT_FOUND
    );

    let me = client.current_user().await.expect("whoami");
    assert_eq!(me.name, "guest");
    let (_, raw) = m.get("/whoami").await;
    assert_eq!(raw, json!({"name": "guest", "tags": ["administrator"]}));
}

#[tokio::test]
async fn credentials_are_checked_with_rabbitmq_answers() {
    let m = start().await;
    // No credentials: 401, empty body, a Basic challenge.
    let resp = m.http.get(m.url("/overview")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Basic realm=\"RabbitMQ Management\""
    );
    assert!(resp.text().await.unwrap().is_empty());

    // Wrong password.
    let (status, body) = m
        .call_raw_as(("guest", "nope"), reqwest::Method::GET, "/overview", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"error": "not_authorized", "reason": "Login failed"})
    );
    // Unknown user: the same answer.
    let (status, body) = m
        .call_raw_as(("ghost", "guest"), reqwest::Method::GET, "/overview", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["reason"], "Login failed");

    // A user without a management tag cannot use the API.
    add_user(&m, "app", &[], true);
    let (status, body) = m
        .call_raw_as(("app", "secret"), reqwest::Method::GET, "/overview", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["reason"], "Not management user");
    assert_eq!(
        status_of(m.client_as("app", "secret").overview().await),
        401
    );
}

#[tokio::test]
async fn monitoring_users_read_but_change_nothing() {
    let m = start().await;
    add_user(&m, "watcher", &["monitoring"], true);
    m.client()
        .declare_queue(
            "/",
            &QueueParams::new_durable_classic_queue("watched", None),
        )
        .await
        .unwrap();
    let watcher = m.client_as("watcher", "secret");
    let queues = watcher
        .list_queues()
        .await
        .expect("monitoring lists queues");
    assert_eq!(queues.len(), 1);
    watcher.list_connections().await.expect("and connections");
    // Users and definitions are for administrators.
    let (status, body) = m
        .call_raw_as(("watcher", "secret"), reqwest::Method::GET, "/users", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["reason"], "Not administrator user");
    assert_eq!(
        status_of(watcher.export_cluster_wide_definitions().await),
        401
    );
    // No changes.
    let (status, body) = m
        .call_raw_as(
            ("watcher", "secret"),
            reqwest::Method::PUT,
            "/queues/%2F/sneaky",
            Some("{}"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "not_authorized");
    assert_eq!(
        status_of(watcher.delete_queue("/", "watched", false).await),
        401
    );
    assert!(m.broker().vhost("/").unwrap().queue("watched").is_some());

    // A management user without access to the vhost sees nothing in it.
    add_user(&m, "outsider", &["management"], false);
    let outsider = m.client_as("outsider", "secret");
    assert!(outsider.list_queues().await.unwrap().is_empty());
    assert!(outsider.list_vhosts().await.unwrap().is_empty());
    assert_eq!(
        status_of(outsider.get_queue_info("/", "watched").await),
        401
    );
}

#[tokio::test]
async fn unknown_paths_and_objects_are_json_404s() {
    let m = start().await;
    let not_found = json!({"error": "Object Not Found", "reason": "Not Found"});
    for path in [
        "/nope",
        "/queues/%2F/missing",
        "/exchanges/%2F/missing",
        "/vhosts/missing",
        "/queues/missing",
        "/users/missing",
        "/connections/missing",
        "/bindings/%2F/e/amq.direct/q/missing",
    ] {
        let (status, body) = m.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body, not_found, "{path}");
    }
    let (status, _) = m
        .call(reqwest::Method::DELETE, "/queues/%2F/missing", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn queue_declared_over_http_counts_amqp_publishes() {
    let m = start().await;
    let client = m.client();
    client
        .declare_queue("/", &QueueParams::new_durable_classic_queue("orders", None))
        .await
        .expect("declare");
    // Declaring again identically (the client sent x-queue-type): 204;
    // differently: 400 with RabbitMQ's reason.
    let (status, body) = m
        .call_raw(
            reqwest::Method::PUT,
            "/queues/%2F/orders",
            Some(r#"{"durable":true,"arguments":{"x-queue-type":"classic"}}"#),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = m
        .call_raw(
            reqwest::Method::PUT,
            "/queues/%2F/orders",
            Some(r#"{"durable":false}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "bad_request", "reason": "inequivalent arg 'durable' for queue 'orders' in vhost '/': received 'false' but current is 'true'"})
    );

    let conn = m.test_broker().connect().await;
    let ch = conn.create_channel().await.unwrap();
    for i in 0..3 {
        ch.basic_publish(
            "".into(),
            "orders".into(),
            BasicPublishOptions::default(),
            format!("order {i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    eventually(|| async {
        client
            .get_queue_info("/", "orders")
            .await
            .unwrap()
            .message_count
            == 3
    })
    .await;
    let info = client.get_queue_info("/", "orders").await.unwrap();
    assert!(info.durable);
    assert!(!info.exclusive);
    assert_eq!(info.queue_type, "classic");
    assert_eq!(info.unacknowledged_message_count, 0);
    assert_eq!(info.message_bytes, "order 0".len() as u64 * 3);

    let (_, raw) = m.get("/queues/%2F/orders").await;
    assert_eq!(raw["messages_ready"], 3);
    assert_eq!(raw["message_stats"]["publish"], 3);
    assert_eq!(raw["consumer_details"], json!([]));
    let (_, overview) = m.get("/overview").await;
    assert_eq!(overview["queue_totals"]["messages"], 3);
    assert_eq!(overview["object_totals"]["queues"], 1);
    assert!(overview["object_totals"]["connections"].as_u64() >= Some(1));

    // A queue declared over AMQP shows up with its flags.
    ch.queue_declare(
        "temp".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (_, temp) = m.get("/queues/%2F/temp").await;
    assert_eq!(temp["exclusive"], true);
    assert_eq!(temp["durable"], false);
    assert!(temp["owner_pid_details"]["name"]
        .as_str()
        .unwrap()
        .contains(" -> "));
    let names: Vec<String> = client
        .list_queues_in("/")
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(names, ["orders", "temp"]);
}

#[tokio::test]
async fn bad_input_is_a_400_with_a_json_reason() {
    let m = start().await;
    let put = |path: &'static str, body: &'static str| {
        let m = &m;
        async move { m.call_raw(reqwest::Method::PUT, path, Some(body)).await }
    };
    assert_eq!(
        put("/queues/%2F/q", "{not json").await,
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "reason": "not_json"})
        )
    );
    assert_eq!(put("/queues/%2F/q", "[1,2]").await.1["reason"], "not_json");
    let (status, body) = put("/queues/%2F/q", r#"{"arguments":{"x-message-ttl":"soon"}}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid arg 'x-message-ttl'"),
        "{body}"
    );
    let (status, body) = put("/queues/%2F/q", r#"{"durable":"maybe"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "bad_request");
    let (status, body) = put("/exchanges/%2F/x", r#"{"type":"nonsense"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["reason"], "invalid exchange type 'nonsense'");
    let (status, _) = put("/exchanges/%2F/x", r#"{"durable":true}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = m
        .call_raw(
            reqwest::Method::POST,
            "/exchanges/%2F/amq.default/publish",
            Some(r#"{"routing_key":"k"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["reason"],
        "[{key_missing,properties},{key_missing,payload_encoding},{key_missing,payload}]"
    );
    let (status, body) = m
        .call_raw(
            reqwest::Method::POST,
            "/exchanges/%2F/nowhere/publish",
            Some(
                r#"{"properties":{},"routing_key":"k","payload":"x","payload_encoding":"string"}"#,
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["reason"],
        "404 NOT_FOUND - no exchange 'nowhere' in vhost '/'"
    );
    let (status, _) = m.get("/queues?page=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Nothing was created by the failed requests.
    assert!(m.broker().vhost("/").unwrap().queues().is_empty());
}

#[tokio::test]
async fn publish_and_get_over_http() {
    let m = start().await;
    let client = m.client();
    client
        .declare_queue("/", &QueueParams::new_durable_classic_queue("inbox", None))
        .await
        .unwrap();
    let routed = client
        .publish_message("/", "amq.default", "inbox", "hello", Default::default())
        .await
        .expect("publish");
    assert!(routed.routed);
    let routed = client
        .publish_message(
            "/",
            "amq.default",
            "no-such-queue",
            "lost",
            Default::default(),
        )
        .await
        .unwrap();
    assert!(!routed.routed);
    let (status, body) = m
        .call_raw(
            reqwest::Method::POST,
            "/exchanges/%2F/amq.default/publish",
            Some(r#"{"properties":{"delivery_mode":2,"headers":{"a":1},"content_type":"text/plain"},"routing_key":"inbox","payload":"AAEC/w==","payload_encoding":"base64"}"#),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"routed": true})));

    // ack_requeue_true leaves both in place, flagged redelivered.
    let got = client
        .get_messages("/", "inbox", 5, "ack_requeue_true")
        .await
        .expect("get parses");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, "hello");
    assert_eq!(got[0].payload_encoding, "string");
    assert_eq!(got[0].message_count, 1);
    assert!(!got[0].redelivered);
    assert_eq!(got[1].payload_encoding, "base64");
    assert_eq!(got[1].payload, "AAEC/w==");
    assert_eq!(got[1].payload_bytes, 4);
    let (_, raw) = m
        .call_raw(
            reqwest::Method::POST,
            "/queues/%2F/inbox/get",
            Some(r#"{"count":2,"ackmode":"ack_requeue_true","encoding":"auto"}"#),
        )
        .await;
    assert_eq!(
        raw[0]["properties"],
        json!([]),
        "no properties: an empty list"
    );
    assert_eq!(raw[0]["redelivered"], true);
    assert_eq!(raw[0]["exchange"], "");
    assert_eq!(raw[0]["routing_key"], "inbox");
    assert_eq!(
        raw[1]["properties"],
        json!({"delivery_mode": 2, "headers": {"a": 1}, "content_type": "text/plain"})
    );

    // The message is seen by an AMQP consumer too, still redelivered.
    let conn = m.test_broker().connect().await;
    let ch = conn.create_channel().await.unwrap();
    let first = ch
        .basic_get(
            "inbox".into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("message over AMQP");
    assert_eq!(first.delivery.data, b"hello");
    assert!(first.delivery.redelivered);
    first
        .delivery
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();

    // ack_requeue_false takes them for good; then the queue is empty.
    eventually(|| async {
        client
            .get_queue_info("/", "inbox")
            .await
            .unwrap()
            .message_count
            == 2
    })
    .await;
    let got = client
        .get_messages("/", "inbox", 10, "ack_requeue_false")
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert!(client
        .get_messages("/", "inbox", 1, "ack_requeue_false")
        .await
        .unwrap()
        .is_empty());
    let info = client.get_queue_info("/", "inbox").await.unwrap();
    assert_eq!(info.message_count, 0);
    assert_eq!(info.unacknowledged_message_count, 0);

    // Truncation, and an invalid ack mode.
    client
        .publish_message(
            "/",
            "amq.default",
            "inbox",
            "0123456789",
            Default::default(),
        )
        .await
        .unwrap();
    let (_, raw) = m
        .call_raw(
            reqwest::Method::POST,
            "/queues/%2F/inbox/get",
            Some(r#"{"count":1,"ackmode":"reject_requeue_true","encoding":"auto","truncate":4}"#),
        )
        .await;
    assert_eq!(raw[0]["payload"], "0123");
    assert_eq!(raw[0]["payload_bytes"], 10);
    let (status, _) = m
        .call_raw(
            reqwest::Method::POST,
            "/queues/%2F/inbox/get",
            Some(r#"{"count":1,"ackmode":"whatever","encoding":"auto"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        client
            .get_queue_info("/", "inbox")
            .await
            .unwrap()
            .message_count,
        1
    );
}

#[tokio::test]
async fn purge_and_delete_queues() {
    let m = start().await;
    let client = m.client();
    client
        .declare_queue("/", &QueueParams::new_durable_classic_queue("work", None))
        .await
        .unwrap();
    for _ in 0..3 {
        client
            .publish_message("/", "amq.default", "work", "job", Default::default())
            .await
            .unwrap();
    }
    // if-empty refuses a queue with messages.
    let (status, body) = m
        .call_raw(
            reqwest::Method::DELETE,
            "/queues/%2F/work?if-empty=true",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["reason"], "queue 'work' in vhost '/' not empty");
    client.purge_queue("/", "work").await.expect("purge");
    assert_eq!(
        client
            .get_queue_info("/", "work")
            .await
            .unwrap()
            .message_count,
        0
    );
    client
        .delete_queue("/", "work", false)
        .await
        .expect("delete");
    assert_eq!(status_of(client.get_queue_info("/", "work").await), 404);
    assert_eq!(
        status_of(client.delete_queue("/", "work", false).await),
        404
    );
    client
        .delete_queue("/", "work", true)
        .await
        .expect("idempotent delete");
}

#[tokio::test]
async fn exchanges_are_declared_listed_and_deleted() {
    let m = start().await;
    let client = m.client();
    client
        .declare_exchange(
            "/",
            &ExchangeParams::durable("events", ExchangeType::Topic, None),
        )
        .await
        .expect("declare exchange");
    let exchanges = client.list_exchanges_in("/").await.expect("list parses");
    let names: Vec<&str> = exchanges.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.topic",
            "events"
        ]
    );
    let events = client.get_exchange_info("/", "events").await.unwrap();
    assert_eq!(events.exchange_type, "topic");
    assert!(events.durable);
    let (_, default) = m.get("/exchanges/%2F/amq.default").await;
    assert_eq!(default["name"], "");
    assert_eq!(default["type"], "direct");
    assert_eq!(default["incoming"], json!([]));

    // Inequivalent redeclare; reserved names; system exchanges.
    let (status, body) = m
        .call_raw(
            reqwest::Method::PUT,
            "/exchanges/%2F/events",
            Some(r#"{"type":"fanout"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["reason"]
        .as_str()
        .unwrap()
        .starts_with("inequivalent arg 'type'"));
    let (status, _) = m
        .call_raw(
            reqwest::Method::PUT,
            "/exchanges/%2F/events",
            Some(r#"{"type":"topic"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = m
        .call(reqwest::Method::DELETE, "/exchanges/%2F/amq.direct", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "access_refused");
    let (status, _) = m
        .call_raw(
            reqwest::Method::PUT,
            "/exchanges/%2F/amq.custom",
            Some(r#"{"type":"direct"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The exchange works over AMQP.
    let conn = m.test_broker().connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "events".into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("visible over AMQP");

    client
        .delete_exchange("/", "events", false)
        .await
        .expect("delete");
    assert_eq!(
        status_of(client.get_exchange_info("/", "events").await),
        404
    );
    assert_eq!(
        status_of(client.delete_exchange("/", "events", false).await),
        404
    );
}

#[tokio::test]
async fn bindings_are_created_listed_and_deleted() {
    let m = start().await;
    let client = m.client();
    client
        .declare_queue("/", &QueueParams::new_durable_classic_queue("logs", None))
        .await
        .unwrap();
    client
        .declare_exchange(
            "/",
            &ExchangeParams::durable("hub", ExchangeType::Fanout, None),
        )
        .await
        .unwrap();
    client
        .bind_queue("/", "logs", "amq.topic", Some("app.#"), None)
        .await
        .expect("bind");
    let (status, _) = m
        .call_raw(
            reqwest::Method::POST,
            "/bindings/%2F/e/amq.headers/q/logs",
            Some(r#"{"routing_key":"","arguments":{"x-match":"any","level":"error"}}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    client
        .bind_exchange("/", "hub", "amq.topic", Some("fan.*"), None)
        .await
        .expect("e2e bind");

    let bindings = client
        .list_queue_bindings("/", "logs")
        .await
        .expect("parses");
    assert_eq!(bindings.len(), 3, "{bindings:?}");
    assert_eq!(
        bindings[0].source, "",
        "the default exchange's binding first"
    );
    assert_eq!(bindings[0].routing_key, "logs");
    assert_eq!(bindings[0].properties_key.as_deref(), Some("logs"));
    let (_, raw) = m.get("/bindings/%2F/e/amq.topic/q/logs").await;
    assert_eq!(
        raw,
        json!([{
            "source": "amq.topic", "vhost": "/", "destination": "logs",
            "destination_type": "queue", "routing_key": "app.#", "arguments": {},
            "properties_key": "app.%23",
        }])
    );
    let (_, headers) = m.get("/bindings/%2F/e/amq.headers/q/logs").await;
    let props = headers[0]["properties_key"].as_str().unwrap().to_string();
    assert!(props.starts_with('~'), "{props}");

    // Routing through what was bound over HTTP.
    let routed = client
        .publish_message("/", "amq.topic", "app.start", "up", Default::default())
        .await
        .unwrap();
    assert!(routed.routed);
    assert_eq!(
        client
            .get_queue_info("/", "logs")
            .await
            .unwrap()
            .message_count,
        1
    );

    let source = client
        .list_exchange_bindings_with_source("/", "amq.topic")
        .await
        .unwrap();
    assert_eq!(source.len(), 2);
    let dest = client
        .list_exchange_bindings_with_destination("/", "hub")
        .await
        .unwrap();
    assert_eq!(dest.len(), 1);
    assert_eq!(dest[0].routing_key, "fan.*");
    let (_, e2e) = m.get("/bindings/%2F/e/amq.topic/e/hub/fan.%2A").await;
    assert_eq!(e2e["destination_type"], "exchange");

    // Delete by properties key, as the UI and rabbitmqadmin do.
    let (status, _) = m
        .call_raw(
            reqwest::Method::DELETE,
            "/bindings/%2F/e/amq.topic/q/logs/app.%23",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = m
        .call_raw(
            reqwest::Method::DELETE,
            &format!(
                "/bindings/%2F/e/amq.headers/q/logs/{}",
                props.replace('~', "%7E")
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = m
        .call_raw(
            reqwest::Method::DELETE,
            "/bindings/%2F/e/amq.topic/q/logs/app.%23",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        client.list_queue_bindings("/", "logs").await.unwrap().len(),
        1
    );
    let all = client.list_bindings().await.unwrap();
    assert_eq!(
        all.len(),
        2,
        "default binding of logs and the e2e one: {all:?}"
    );

    // Binding from the default exchange or to a missing queue.
    let (status, _) = m
        .call_raw(
            reqwest::Method::POST,
            "/bindings/%2F/e/amq.default/q/logs",
            Some("{}"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = m
        .call_raw(
            reqwest::Method::POST,
            "/bindings/%2F/e/amq.topic/q/nope",
            Some("{}"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn connections_are_listed_and_closed_with_320() {
    let m = start().await;
    let client = m.client();
    let conn = m.amqp_named("billing-worker").await;
    let _ch = conn.create_channel().await.unwrap();
    let mut events = conn.events_listener();
    eventually(|| async { client.list_connections().await.unwrap().len() == 1 }).await;
    let listed = client.list_connections().await.unwrap();
    let c = &listed[0];
    assert_eq!(c.username, "guest");
    assert_eq!(c.protocol, "AMQP 0-9-1");
    assert_eq!(c.client_properties.connection_name, "billing-worker");
    assert_eq!(c.server_port, Some(u32::from(m.amqp_port)));
    assert_eq!(c.channel_count, 1);
    let (_, raw) = m.get("/connections").await;
    assert_eq!(raw[0]["user_provided_name"], "billing-worker");
    assert_eq!(raw[0]["vhost"], "/");
    assert_eq!(
        raw[0]["client_properties"]["capabilities"]["publisher_confirms"],
        true
    );
    assert!(raw[0]["recv_oct"].as_u64().unwrap() > 0);
    let name = c.name.clone();
    assert!(name.contains(" -> 127.0.0.1:"), "{name}");
    let one = client
        .get_connection_info(&name)
        .await
        .expect("single connection");
    assert_eq!(one.name, name);
    let (_, in_vhost) = m.get("/vhosts/%2F/connections").await;
    assert_eq!(in_vhost.as_array().unwrap().len(), 1);

    client
        .close_connection(&name, Some("maintenance"), false)
        .await
        .expect("close");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                if let lapin::ErrorKind::ProtocolError(p) = e.kind() {
                    return (p.get_id(), p.get_message().to_string());
                }
            }
        }
        panic!("events ended without a close");
    })
    .await
    .expect("connection closed in time");
    assert_eq!(closed, (320, "CONNECTION_FORCED - maintenance".to_string()));
    eventually(|| async { client.list_connections().await.unwrap().is_empty() }).await;
    assert_eq!(
        status_of(client.close_connection(&name, None, false).await),
        404
    );
}

#[tokio::test]
async fn vhosts_users_permissions_and_definitions() {
    let m = start().await;
    let client = m.client();
    let vhosts = client.list_vhosts().await.expect("vhosts parse");
    assert_eq!(vhosts.len(), 1);
    assert_eq!(vhosts[0].name, "/");
    let (_, vhost) = m.get("/vhosts/%2F").await;
    assert_eq!(vhost["tracing"], false);
    assert!(vhost["cluster_state"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == "running"));

    let users = client.list_users().await.expect("users parse");
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, "guest");
    let (_, guest) = m.get("/users/guest").await;
    assert_eq!(guest["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(guest["password_hash"].as_str().unwrap().len(), 48);
    let perms = client.list_permissions().await.expect("permissions parse");
    assert_eq!(perms.len(), 1);
    assert_eq!(
        (perms[0].user.as_str(), perms[0].vhost.as_str()),
        ("guest", "/")
    );
    assert_eq!(perms[0].configure, ".*");
    let p = client.get_permissions("/", "guest").await.unwrap();
    assert_eq!(p.read, ".*");

    client
        .declare_queue(
            "/",
            &QueueParams::new("jobs", QueueType::Classic, true, false, None),
        )
        .await
        .unwrap();
    client
        .declare_exchange(
            "/",
            &ExchangeParams::durable("jobs-x", ExchangeType::Direct, None),
        )
        .await
        .unwrap();
    client
        .bind_queue("/", "jobs", "jobs-x", Some("run"), None)
        .await
        .unwrap();
    let defs = client
        .export_cluster_wide_definitions_as_data()
        .await
        .expect("definitions parse");
    assert_eq!(defs.users.len(), 1);
    assert_eq!(defs.virtual_hosts.len(), 1);
    assert_eq!(defs.queues.len(), 1);
    assert_eq!(defs.queues[0].name, "jobs");
    assert_eq!(defs.exchanges.len(), 1, "amq.* are not exported");
    assert_eq!(defs.exchanges[0].name, "jobs-x");
    assert_eq!(defs.bindings.len(), 1, "default bindings are not exported");
    assert_eq!(defs.bindings[0].routing_key, "run");
    let (_, raw) = m.get("/definitions").await;
    for key in [
        "rabbit_version",
        "rabbitmq_version",
        "topic_permissions",
        "global_parameters",
        "policies",
    ] {
        assert!(raw.get(key).is_some(), "definitions lack {key}");
    }
    let (status, one) = m.get("/definitions/%2F").await;
    assert_eq!(status, StatusCode::OK);
    assert!(one["queues"][0].get("vhost").is_none());
}

#[tokio::test]
async fn health_checks_and_aliveness() {
    let m = start().await;
    let client = m.client();
    client
        .health_check_cluster_wide_alarms()
        .await
        .expect("alarms");
    client
        .health_check_local_alarms()
        .await
        .expect("local alarms");
    let (status, body) = m.get("/aliveness-test/%2F").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    assert_eq!(
        m.get("/aliveness-test/nowhere").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn lists_page_filter_and_select_columns() {
    let m = start().await;
    let client = m.client();
    for name in ["alpha", "beta", "gamma", "alphabet"] {
        client
            .declare_queue("/", &QueueParams::new_durable_classic_queue(name, None))
            .await
            .unwrap();
    }
    let (_, page) = m.get("/queues?page=1&page_size=2&name=alpha").await;
    assert_eq!(page["total_count"], 4);
    assert_eq!(page["filtered_count"], 2);
    assert_eq!(page["item_count"], 2);
    assert_eq!(page["page_count"], 1);
    assert_eq!(page["items"][0]["name"], "alpha");
    let (_, page) = m.get("/queues/%2F?page=2&page_size=3").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["name"], "gamma");
    let (_, cols) = m
        .get("/queues?columns=name,message_stats.publish&sort=name&sort_reverse=true")
        .await;
    assert_eq!(
        cols[0],
        json!({"name": "gamma", "message_stats": {"publish": 0}})
    );
    let paged = client
        .list_queues_paged(&rabbitmq_http_client::commons::PaginationParams {
            page: Some(1),
            page_size: Some(3),
        })
        .await
        .expect("paged list parses");
    assert_eq!(paged.len(), 3);
}

#[tokio::test]
async fn http_publish_honours_delayed_exchanges() {
    let m = start().await;
    let client = m.client();
    let (status, _) = m
        .call_raw(
            reqwest::Method::PUT,
            "/exchanges/%2F/later",
            Some(r#"{"type":"x-delayed-message","arguments":{"x-delayed-type":"direct"}}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, x) = m.get("/exchanges/%2F/later").await;
    assert_eq!(x["type"], "x-delayed-message");
    client
        .declare_queue("/", &QueueParams::new_durable_classic_queue("due", None))
        .await
        .unwrap();
    client
        .bind_queue("/", "due", "later", Some("due"), None)
        .await
        .unwrap();
    let (status, body) = m
        .call_raw(
            reqwest::Method::POST,
            "/exchanges/%2F/later/publish",
            Some(r#"{"properties":{"headers":{"x-delay":200}},"routing_key":"due","payload":"tick","payload_encoding":"string"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"routed": false}), "held, not routed yet");
    assert_eq!(
        client
            .get_queue_info("/", "due")
            .await
            .unwrap()
            .message_count,
        0
    );
    eventually(|| async {
        client
            .get_queue_info("/", "due")
            .await
            .unwrap()
            .message_count
            == 1
    })
    .await;
}

/// The HTTP publish goes through the same entry point as basic.publish:
/// CC adds routing keys on the default exchange too, BCC reaches its queue
/// and is removed before delivery, a bad CC type is refused.
#[tokio::test]
async fn publish_over_http_honours_cc_and_bcc() {
    let m = start().await;
    let (_c, ch) = m.test_broker().channel().await;
    for q in ["to", "cc", "bcc"] {
        common::declare(&ch, q, Default::default()).await;
    }
    let (status, body) = m
        .call_raw(
            reqwest::Method::POST,
            "/exchanges/%2F/amq.default/publish",
            Some(r#"{"properties":{"headers":{"CC":["cc"],"BCC":["bcc"]}},"routing_key":"to","payload":"m","payload_encoding":"string"}"#),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"routed": true})));
    for q in ["to", "cc", "bcc"] {
        let got = common::get(&ch, q)
            .await
            .unwrap_or_else(|| panic!("nothing in {q}"));
        assert_eq!(got.delivery.data, b"m");
        let headers = got.delivery.properties.headers().clone().unwrap();
        assert!(headers.inner().contains_key("CC"), "{q}: {headers:?}");
        assert!(!headers.inner().contains_key("BCC"), "{q}: {headers:?}");
    }
    let (status, body) = m
        .call_raw(
            reqwest::Method::POST,
            "/exchanges/%2F/amq.default/publish",
            Some(r#"{"properties":{"headers":{"CC":"cc"}},"routing_key":"to","payload":"m","payload_encoding":"string"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("unacceptable_type_in_header,\"CC\""),
        "{body}"
    );
}
