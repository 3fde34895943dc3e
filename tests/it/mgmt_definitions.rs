//! `POST /api/definitions[/{vhost}]`: a document exported by one broker
//! (RabbitMQ's shape) imports into a fresh one and exports back the same;
//! imported users log in over AMQP with their original passwords and the
//! imported topology routes messages.

use crate::mgmt_support::Api;
use broker::broker::policy::PolicyRecord;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::BasicProperties;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Builds users, a vhost, permissions and a topology through the API.
async fn populate(api: &Api) {
    let steps: Vec<(Method, &str, Value)> = vec![
        (
            Method::PUT,
            "/users/carol",
            json!({"password": "c-pw", "tags": "management,policymaker"}),
        ),
        (
            Method::PUT,
            "/vhosts/billing",
            json!({"description": "bills", "tags": ["finance"]}),
        ),
        (
            Method::PUT,
            "/permissions/billing/carol",
            json!({"configure": "^c", "write": ".*", "read": ".*"}),
        ),
        (
            Method::PUT,
            "/exchanges/billing/ae",
            json!({"type": "fanout", "durable": true}),
        ),
        (
            Method::PUT,
            "/exchanges/billing/events",
            json!({"type": "topic", "durable": true, "arguments": {"alternate-exchange": "ae"}}),
        ),
        (
            Method::PUT,
            "/exchanges/billing/inner",
            json!({"type": "direct", "durable": true, "internal": true}),
        ),
        (
            Method::PUT,
            "/exchanges/billing/hdr",
            json!({"type": "headers", "durable": false, "auto_delete": false}),
        ),
        (
            Method::PUT,
            "/queues/billing/audit",
            json!({"durable": true, "arguments": {"x-message-ttl": 60000}}),
        ),
        (
            Method::PUT,
            "/queues/billing/inbox",
            json!({"durable": true, "arguments": {"x-max-length": 10, "x-overflow": "reject-publish"}}),
        ),
        (
            Method::PUT,
            "/queues/%2F/scratch",
            json!({"durable": false}),
        ),
        (
            Method::POST,
            "/bindings/billing/e/events/q/inbox",
            json!({"routing_key": "order.#"}),
        ),
        (
            Method::POST,
            "/bindings/billing/e/ae/q/audit",
            json!({"routing_key": ""}),
        ),
        (
            Method::POST,
            "/bindings/billing/e/events/e/inner",
            json!({"routing_key": "x.*"}),
        ),
        (
            Method::POST,
            "/bindings/billing/e/hdr/q/audit",
            json!({"routing_key": "", "arguments": {"x-match": "all", "kind": "a"}}),
        ),
    ];
    for (method, path, body) in steps {
        let (status, reply) = api.call(method.clone(), path, Some(body)).await;
        assert!(status.is_success(), "{method} {path}: {status} {reply}");
    }
    put_policy(
        api,
        "billing",
        "short-inbox",
        "^inbox$",
        json!({"max-length": 5}),
    );
}

/// A policy, set through the broker (the HTTP endpoint is not in this
/// test's scope).
fn put_policy(api: &Api, vhost: &str, name: &str, pattern: &str, definition: Value) {
    let record: PolicyRecord = serde_json::from_value(json!({
        "vhost": vhost,
        "name": name,
        "pattern": pattern,
        "apply-to": "queues",
        "definition": definition,
        "priority": 1,
    }))
    .unwrap();
    api.broker()
        .vhost(vhost)
        .expect("vhost")
        .put_policy(record)
        .expect("valid policy");
}

/// A definitions document with every list sorted, for comparison.
fn normalized(mut defs: Value) -> Value {
    if let Value::Object(map) = &mut defs {
        for value in map.values_mut() {
            if let Value::Array(items) = value {
                items.sort_by_key(|v| v.to_string());
            }
        }
    }
    defs
}

#[tokio::test]
async fn definitions_round_trip_into_a_fresh_broker() {
    let a = Api::start().await;
    populate(&a).await;
    let (status, exported) = a.get("/definitions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(exported["users"].as_array().unwrap().len(), 2);
    assert_eq!(exported["exchanges"].as_array().unwrap().len(), 4);
    assert_eq!(exported["queues"].as_array().unwrap().len(), 3);
    assert_eq!(exported["bindings"].as_array().unwrap().len(), 4);

    // Imported with RabbitMQ's own API client.
    let b = Api::start().await;
    b.client()
        .import_cluster_wide_definitions(exported.clone())
        .await
        .expect("import accepted");
    let (_, reexported) = b.get("/definitions").await;
    for key in [
        "users",
        "vhosts",
        "permissions",
        "exchanges",
        "queues",
        "bindings",
    ] {
        assert_eq!(
            normalized(reexported[key].clone()),
            normalized(exported[key].clone()),
            "{key} differ after the round trip"
        );
    }
    // Importing the same document again changes nothing.
    let (status, body) = b.post("/definitions", exported.clone()).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    // An existing queue declared differently in the document is kept.
    let mut changed = exported.clone();
    for q in changed["queues"].as_array_mut().unwrap() {
        if q["name"] == "audit" {
            q["arguments"] = json!({"x-message-ttl": 5});
        }
    }
    let (status, _) = b.post("/definitions", changed).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, again) = b.get("/definitions").await;
    assert_eq!(
        normalized(again["queues"].clone()),
        normalized(exported["queues"].clone())
    );

    // The imported user logs in with the password set on the other broker
    // (its hash came over unchanged); the old guest password still works
    // because guest's hash came over too.
    let conn = b
        .amqp("carol", "c-pw", "billing")
        .await
        .expect("carol logs in");
    let ch = conn.create_channel().await.unwrap();
    for key in ["order.1", "unrouted"] {
        ch.basic_publish(
            "events".into(),
            key.into(),
            BasicPublishOptions::default(),
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // order.1 goes by the topic binding, the other through the AE.
    for (queue, body) in [("inbox", "order.1"), ("audit", "unrouted")] {
        let mut got = None;
        for _ in 0..100 {
            let m = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get");
            got = m.map(|m| String::from_utf8_lossy(&m.delivery.data).into_owned());
            if got.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(got.as_deref(), Some(body), "{queue}");
    }
    let (_, vhost) = b.get("/vhosts/billing").await;
    assert_eq!(vhost["description"], "bills");
    assert_eq!(vhost["tags"], json!(["finance"]));
    assert!(b.amqp("guest", "guest", "/").await.is_ok());
}

#[tokio::test]
async fn one_vhost_definitions_import_into_another_vhost() {
    let a = Api::start().await;
    populate(&a).await;
    let (status, exported) = a.get("/definitions/billing").await;
    assert_eq!(status, StatusCode::OK);

    let b = Api::start().await;
    let (status, _) = b.post("/definitions/copy", exported.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the vhost must exist");
    let (status, _) = b.put("/vhosts/copy", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = b.post("/definitions/copy", exported.clone()).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (_, copied) = b.get("/definitions/copy").await;
    for key in ["policies", "exchanges", "queues", "bindings"] {
        assert_eq!(
            normalized(copied[key].clone()),
            normalized(exported[key].clone()),
            "{key}"
        );
    }
    let (status, q) = b.get("/queues/copy/inbox").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(q["arguments"]["x-max-length"], 10);
    // Nothing leaked into "/".
    let (status, _) = b.get("/queues/%2F/inbox").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_definitions_are_refused_with_a_reason() {
    let api = Api::start().await;
    let resp = api
        .http
        .post(format!("{}/definitions", api.base))
        .basic_auth("guest", Some("guest"))
        .body("{\"users\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"error": "bad_request", "reason": "not_json"}));

    for (defs, reason) in [
        (
            json!({"permissions": [{"user": "ghost", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]}),
            "permission of 'ghost' in vhost '/': vhost_or_user_not_found",
        ),
        (
            json!({"queues": [{"name": "q", "vhost": "nowhere", "durable": true, "auto_delete": false, "arguments": {}}]}),
            "queue 'q': no vhost 'nowhere'",
        ),
        (
            json!({"exchanges": [{"name": "x", "vhost": "/", "type": "bogus", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}]}),
            "",
        ),
        (
            json!({"users": [{"name": "u", "password_hash": "short", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}]}),
            "user 'u': password_hash is not a valid rabbit_password_hashing_sha256 hash",
        ),
        (json!({"queues": {"name": "q"}}), "queues must be a list"),
    ] {
        let (status, body) = api.post("/definitions", defs.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{defs}: {body}");
        assert_eq!(body["error"], "bad_request");
        if !reason.is_empty() {
            assert_eq!(body["reason"], reason, "{defs}");
        } else {
            assert!(body["reason"]
                .as_str()
                .unwrap()
                .starts_with("exchange 'x' in vhost '/'"));
        }
    }

    // Administrators only.
    let (status, _) = api
        .put("/users/mon", json!({"password": "m", "tags": "monitoring"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = api
        .call_as(("mon", "m"), Method::POST, "/definitions", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "not_authorized");
}

#[tokio::test]
async fn policies_round_trip_and_go_with_their_vhost() {
    let api = Api::start().await;
    let (status, _) = api.put("/vhosts/tmp", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    put_policy(&api, "tmp", "ttl", ".*", json!({"message-ttl": 1000}));
    let (_, defs) = api.get("/definitions/tmp").await;
    assert_eq!(
        defs["policies"],
        json!([{"name": "ttl", "pattern": ".*", "apply-to": "queues", "definition": {"message-ttl": 1000}, "priority": 1}])
    );
    // A bad policy in a document is refused with the policy's reason.
    let (status, body) = api
        .post(
            "/definitions/tmp",
            json!({"policies": [{"name": "bad", "pattern": "(", "apply-to": "all", "definition": {"max-length": 1}, "priority": 0}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["reason"]
        .as_str()
        .unwrap()
        .starts_with("policy 'bad': Validation failed"));
    // Deleted with the vhost: a vhost created again starts without them.
    let (status, _) = api.call(Method::DELETE, "/vhosts/tmp", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.put("/vhosts/tmp", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, defs) = api.get("/definitions/tmp").await;
    assert_eq!(defs["policies"], json!([]));
}
