//! What the management API does with input no well-behaved client sends:
//! table keys past AMQP's 255 bytes, nesting past AMQP's depth, malformed
//! and oversized bodies, and the loopback-only user logging in from
//! elsewhere. Each gets a 4xx with a JSON error, and the API keeps serving.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn send(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: impl Into<reqwest::Body>,
    user: (&str, &str),
) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .request(method, format!("{base}/api{path}"))
        .basic_auth(user.0, Some(user.1))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("http request");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

const GUEST: (&str, &str) = ("guest", "guest");

/// A JSON error body: `{"error": ..., "reason": ...}`.
fn json_error(body: &str) -> Value {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(value["error"].is_string(), "{value}");
    value
}

/// `{"k": {"k": ... 1 ...}}`, `depth` objects deep.
fn nested(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = json!({ "k": value });
    }
    value
}

async fn still_serving(base: &str) {
    let (status, _) = send(base, reqwest::Method::GET, "/overview", "", GUEST).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_tables_and_bodies_get_a_4xx_with_a_json_error() {
    let broker = TestBroker::start().await;
    let base = format!("http://{}", broker.mgmt_addr());
    let put = reqwest::Method::PUT;
    let long_key = "k".repeat(300);

    // A queue argument key over 255 bytes (it used to panic the handler).
    let body = json!({"durable": true, "arguments": {long_key.clone(): 1}}).to_string();
    let (status, text) = send(&base, put.clone(), "/queues/%2F/q", body, GUEST).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        json_error(&text)["reason"]
            .as_str()
            .is_some_and(|r| r.contains("300 bytes")),
        "{text}"
    );
    // The same key in the headers of an HTTP publish.
    let body = json!({
        "properties": {"headers": {long_key: "v"}},
        "routing_key": "q", "payload": "x", "payload_encoding": "string"
    })
    .to_string();
    let (status, text) = send(
        &base,
        reqwest::Method::POST,
        "/exchanges/%2F/amq.default/publish",
        body,
        GUEST,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    json_error(&text);

    // Nesting: as deep as AMQP allows is fine, deeper is refused.
    let body = json!({"durable": true, "arguments": {"x-deep": nested(60)}}).to_string();
    let (status, text) = send(&base, put.clone(), "/queues/%2F/deep-ok", body, GUEST).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let body = json!({"durable": true, "arguments": {"x-deep": nested(100)}}).to_string();
    let (status, text) = send(&base, put.clone(), "/queues/%2F/deep", body, GUEST).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        json_error(&text)["reason"]
            .as_str()
            .is_some_and(|r| r.contains("nested more than 64 deep")),
        "{text}"
    );

    // Malformed JSON.
    let (status, text) = send(&base, put.clone(), "/queues/%2F/q", "{\"durable\":", GUEST).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    json_error(&text);

    // A body over the 20 MiB limit: 413, with a JSON error.
    let huge = format!(
        "{{\"durable\": true, \"x\": \"{}\"}}",
        "a".repeat(21 * 1024 * 1024)
    );
    let (status, text) = send(&base, put, "/queues/%2F/q", huge, GUEST).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    json_error(&text);

    // None of it declared anything, and the API still serves.
    let (_, list) = send(&base, reqwest::Method::GET, "/queues", "", GUEST).await;
    let names: Vec<String> = serde_json::from_str::<Vec<Value>>(&list)
        .expect("queue list")
        .iter()
        .filter_map(|q| q["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names, vec!["deep-ok".to_string()]);
    still_serving(&base).await;
}

#[tokio::test]
async fn guest_from_elsewhere_is_answered_as_a_wrong_password() {
    // The address the kernel would use to reach an outside host (no packet
    // is sent); the API listens on every interface.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    socket.connect("192.0.2.1:9").expect("route");
    let ip = socket.local_addr().expect("addr").ip();
    if ip.is_loopback() || ip.is_unspecified() {
        eprintln!("no non-loopback address on this machine; nothing to check");
        return;
    }
    let broker = TestBroker::start_with(|c| c.management.bind = "0.0.0.0".into()).await;
    let port = broker.mgmt_addr().port();
    let remote = format!("http://{ip}:{port}");
    let local = format!("http://127.0.0.1:{port}");
    let get = reqwest::Method::GET;
    // From loopback, guest gets in: the password is right.
    let (status, _) = send(&local, get.clone(), "/overview", "", GUEST).await;
    assert_eq!(status, StatusCode::OK);
    let right = send(&remote, get.clone(), "/overview", "", GUEST).await;
    let wrong = send(&remote, get, "/overview", "", ("guest", "nope")).await;
    assert_eq!(right.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        right, wrong,
        "the answer must not tell the password was right"
    );
}
