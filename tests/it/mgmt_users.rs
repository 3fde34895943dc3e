//! Users, vhosts and permissions changed through the management API, as
//! RabbitMQ's API changes them: status codes and JSON errors over raw HTTP,
//! the effect seen by real AMQP clients (lapin) logging in, and the changes
//! surviving a restart of the broker binary.

use crate::common::BrokerProcess;
use crate::mgmt_support::{amqp_login, Api};
use base64::Engine;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

fn bad_request(reply: &(StatusCode, Value), reason: &str) {
    assert_eq!(reply.0, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(reply.1["error"], "bad_request");
    assert_eq!(reply.1["reason"], reason);
}

fn not_found(reply: &(StatusCode, Value)) {
    assert_eq!(reply.0, StatusCode::NOT_FOUND, "{reply:?}");
    assert_eq!(reply.1["error"], "Object Not Found");
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ sha256(salt ‖ password)).
fn rabbit_hash(password: &str) -> String {
    let salt = [0x90u8, 0x8d, 0xc6, 0x0a];
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

#[tokio::test]
async fn users_are_created_changed_and_deleted_with_rabbitmq_statuses() {
    let api = Api::start().await;
    let alice = json!({"password": "wonder", "tags": "management"});
    let (status, body) = api.put("/users/alice", alice.clone()).await;
    assert_eq!((status, body), (StatusCode::CREATED, Value::Null));
    let (status, _) = api.put("/users/alice", alice).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, user) = api.get("/users/alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["tags"], json!(["management"]));
    assert_eq!(user["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(user["password_hash"].as_str().unwrap().len(), 48);

    // Bad bodies: RabbitMQ's reasons.
    bad_request(
        &api.put("/users/nobody", json!({"password": "x"})).await,
        "tags_not_present",
    );
    bad_request(
        &api.put(
            "/users/nobody",
            json!({"password": "x", "password_hash": rabbit_hash("x"), "tags": ""}),
        )
        .await,
        "both_password_and_password_hash_are_provided",
    );
    let resp = api
        .http
        .put(format!("{}/users/nobody", api.base))
        .basic_auth("guest", Some("guest"))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["reason"], "not_json");
    bad_request(
        &api.put("/users/nobody", json!({"password_hash": "@@", "tags": ""}))
            .await,
        "password_hash is not a valid rabbit_password_hashing_sha256 hash",
    );
    not_found(&api.get("/users/nobody").await);

    // No permission yet: the user logs in to the API but not to the vhost.
    let (status, me) = api
        .call_as(("alice", "wonder"), Method::GET, "/whoami", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["name"], "alice");
    assert!(api.amqp("alice", "wonder", "/").await.is_err());

    // Permissions: 201, then 204, then visible everywhere.
    let perm = json!({"configure": "^alice-", "write": ".*", "read": ".*"});
    let (status, _) = api.put("/permissions/%2F/alice", perm.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = api.put("/permissions/%2F/alice", perm).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, p) = api.get("/permissions/%2F/alice").await;
    assert_eq!(p["configure"], "^alice-");
    let (_, list) = api.get("/users/alice/permissions").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, list) = api.get("/vhosts/%2F/permissions").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    bad_request(
        &api.put("/permissions/%2F/alice", json!({"read": ".*"}))
            .await,
        "[{key_missing,configure},{key_missing,write}]",
    );
    bad_request(
        &api.put(
            "/permissions/nope/alice",
            json!({"configure": "", "write": "", "read": ""}),
        )
        .await,
        "vhost_or_user_not_found",
    );
    bad_request(
        &api.put(
            "/permissions/%2F/nobody",
            json!({"configure": "", "write": "", "read": ""}),
        )
        .await,
        "vhost_or_user_not_found",
    );

    // AMQP login with the new user works and the broker serves it.
    let conn = api
        .amqp("alice", "wonder", "/")
        .await
        .expect("alice logs in");
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "alice-q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.name().as_str(), "alice-q");
    assert!(api.amqp("alice", "wrong", "/").await.is_err());

    // A new password replaces the old one; tags are always required.
    bad_request(
        &api.put("/users/alice", json!({"password": "land"})).await,
        "tags_not_present",
    );
    let (status, _) = api
        .put(
            "/users/alice",
            json!({"password": "land", "tags": ["management"]}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(api.amqp("alice", "wonder", "/").await.is_err());
    assert!(api.amqp("alice", "land", "/").await.is_ok());
    // The legacy `administrator` flag stands for tags.
    let (status, _) = api
        .put(
            "/users/legacy",
            json!({"password": "l", "administrator": "true"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, user) = api.get("/users/legacy").await;
    assert_eq!(user["tags"], json!(["administrator"]));

    // Removing the permission locks the vhost again.
    let (status, _) = api.delete("/permissions/%2F/alice").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    not_found(&api.delete("/permissions/%2F/alice").await);
    assert!(api.amqp("alice", "land", "/").await.is_err());
    let (_, without) = api.get("/users/without-permissions").await;
    assert_eq!(without[0]["name"], "alice");

    // Deleting the user closes its connections and ends its logins.
    let (status, _) = api.delete("/users/alice").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    not_found(&api.delete("/users/alice").await);
    for _ in 0..100 {
        if !conn.status().connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!conn.status().connected(), "alice's connection was closed");
    let (status, body) = api
        .call_as(("alice", "land"), Method::GET, "/whoami", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["reason"], "Login failed");
}

#[tokio::test]
async fn imported_password_hashes_log_in_and_non_admins_change_nothing() {
    let api = Api::start().await;
    let hash = rabbit_hash("hashed-pw");
    let (status, _) = api
        .put(
            "/users/bob",
            json!({"password_hash": hash, "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["monitoring"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, user) = api.get("/users/bob").await;
    assert_eq!(user["password_hash"], hash, "the hash is kept unchanged");
    let (status, _) = api
        .put(
            "/permissions/%2F/bob",
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let conn = api
        .amqp("bob", "hashed-pw", "/")
        .await
        .expect("bob logs in");
    drop(conn);

    // A user without a password cannot log in at all.
    let (status, _) = api.put("/users/nopw", json!({"tags": ""})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, user) = api.get("/users/nopw").await;
    assert_eq!(user["password_hash"], "");
    assert!(api.amqp("nopw", "", "/").await.is_err());

    // Monitoring users may read but not change users, vhosts, permissions.
    let bob = ("bob", "hashed-pw");
    for (method, path, body) in [
        (
            Method::PUT,
            "/users/eve",
            Some(json!({"password": "x", "tags": ""})),
        ),
        (Method::DELETE, "/users/guest", None),
        (Method::PUT, "/vhosts/evil", Some(json!({}))),
        (Method::DELETE, "/vhosts/%2F", None),
        (
            Method::PUT,
            "/permissions/%2F/bob",
            Some(json!({"configure": "", "write": "", "read": ""})),
        ),
        (Method::DELETE, "/permissions/%2F/guest", None),
    ] {
        let (status, body) = api.call_as(bob, method.clone(), path, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(body["error"], "not_authorized");
    }
    assert_eq!(api.get("/users/guest").await.0, StatusCode::OK);
    assert_eq!(api.get("/vhosts/%2F").await.0, StatusCode::OK);
}

#[tokio::test]
async fn vhosts_are_usable_at_once_and_deleting_one_clears_it() {
    let api = Api::start().await;
    let (status, body) = api
        .put(
            "/vhosts/orders",
            json!({"description": "order processing", "tags": "prod,eu"}),
        )
        .await;
    assert_eq!((status, body), (StatusCode::CREATED, Value::Null));
    let (status, _) = api.put("/vhosts/orders", json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, vhost) = api.get("/vhosts/orders").await;
    assert_eq!(vhost["description"], "order processing");
    assert_eq!(vhost["tags"], json!(["prod", "eu"]));
    assert_eq!(vhost["metadata"]["description"], "order processing");
    // The creator gets full permissions, as in RabbitMQ.
    let (status, p) = api.get("/permissions/orders/guest").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p["configure"], ".*");

    // An AMQP client uses the new vhost immediately.
    let conn = api.amqp("guest", "guest", "orders").await.expect("login");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "pending".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "pending".into(),
        BasicPublishOptions::default(),
        b"order 1",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let mut ready = 0;
    for _ in 0..100 {
        let (_, q) = api.get("/queues/orders/pending").await;
        ready = q["messages_ready"].as_u64().unwrap_or(0);
        if ready == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 1);
    // Same queue name in "/" is another queue.
    not_found(&api.get("/queues/%2F/pending").await);

    // Deleting the vhost closes its connections and removes its objects.
    let (status, _) = api.delete("/vhosts/orders").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for _ in 0..100 {
        if !conn.status().connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !conn.status().connected(),
        "connection to the deleted vhost closed"
    );
    not_found(&api.get("/vhosts/orders").await);
    not_found(&api.delete("/vhosts/orders").await);
    not_found(&api.get("/queues/orders/pending").await);
    not_found(&api.get("/permissions/orders/guest").await);
    assert!(api.amqp("guest", "guest", "orders").await.is_err());
    let (_, queues) = api.get("/queues").await;
    assert!(queues
        .as_array()
        .unwrap()
        .iter()
        .all(|q| q["vhost"] != "orders"));

    // Recreated, it starts empty.
    let (status, _) = api.put("/vhosts/orders", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, queues) = api.get("/queues/orders").await;
    assert_eq!(queues, json!([]));
    let (_, vhost) = api.get("/vhosts/orders").await;
    assert_eq!(vhost["description"], "");
}

#[tokio::test]
async fn users_vhosts_and_permissions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let p = BrokerProcess::start_with_mgmt(dir.path()).await;
        let api = &Api::of_process(&p);
        let (status, _) = api
            .put(
                "/users/root",
                json!({"password": "r00t", "tags": "administrator"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = api
            .put("/users/app", json!({"password": "app-pw", "tags": ""}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = api
            .put("/vhosts/shop", json!({"description": "the shop"}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = api
            .put(
                "/permissions/shop/app",
                json!({"configure": "^app-", "write": ".*", "read": ".*"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = api.put("/vhosts/gone", json!({})).await;
        assert_eq!(status, StatusCode::CREATED);
        let conn = amqp_login(p.port, "app", "app-pw", "shop")
            .await
            .expect("app logs in");
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(
            "app-orders".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        conn.close(200, "bye".into()).await.unwrap();
        // The default user and a vhost are deleted: they stay deleted.
        let root = ("root", "r00t");
        let (status, _) = api
            .call_as(root, Method::DELETE, "/users/guest", None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = api
            .call_as(root, Method::DELETE, "/vhosts/gone", None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        p.stop();
    }
    let p = BrokerProcess::start_with_mgmt(dir.path()).await;
    let api = &Api::of_process(&p);
    let root = ("root", "r00t");
    let (status, body) = api.call(Method::GET, "/whoami", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "guest stays deleted: {body}"
    );
    assert!(amqp_login(p.port, "guest", "guest", "/").await.is_err());
    let (status, users) = api.call_as(root, Method::GET, "/users", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["app", "root"]);
    let (_, vhosts) = api.call_as(root, Method::GET, "/vhosts", None).await;
    let mut names: Vec<&str> = vhosts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["/", "shop"], "the deleted vhost stays deleted");
    let (_, shop) = api.call_as(root, Method::GET, "/vhosts/shop", None).await;
    assert_eq!(shop["description"], "the shop");
    let (status, perm) = api
        .call_as(root, Method::GET, "/permissions/shop/app", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(perm["configure"], "^app-");
    let (status, _) = api
        .call_as(root, Method::GET, "/queues/shop/app-orders", None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "durable queue in the new vhost restored"
    );
    let conn = amqp_login(p.port, "app", "app-pw", "shop")
        .await
        .expect("app logs in after the restart");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "app-orders".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue is there");
    drop(conn);
    p.stop();
}

#[tokio::test]
async fn rabbitmq_http_client_manages_users_vhosts_and_permissions() {
    use rabbitmq_http_client::api::Client;
    use rabbitmq_http_client::password_hashing;
    use rabbitmq_http_client::requests::{Permissions, UserParams, VirtualHostParams};

    let api = Api::start().await;
    let client: Client<String, &str, &str> = Client::new(api.base.clone(), "guest", "guest");
    let salt = password_hashing::salt();
    let hash = password_hashing::base64_encoded_salted_password_hash_sha256(&salt, "erin-pw");
    client
        .create_user(&UserParams::new("erin", &hash, "monitoring"))
        .await
        .expect("create user");
    let mut vhost = VirtualHostParams::named("lab");
    vhost.description = Some("experiments");
    vhost.tags = Some(vec!["dev"]);
    client.create_vhost(&vhost).await.expect("create vhost");
    client
        .grant_permissions(&Permissions::full_access("erin", "lab"))
        .await
        .expect("grant");
    let user = client.get_user("erin").await.expect("user parses");
    assert_eq!(user.name, "erin");
    let v = client.get_vhost("lab").await.expect("vhost parses");
    assert_eq!(v.description.as_deref(), Some("experiments"));
    let perms = client
        .list_permissions_of("erin")
        .await
        .expect("permissions parse");
    assert_eq!(perms.len(), 1);
    assert_eq!(perms[0].vhost, "lab");
    assert!(api.amqp("erin", "erin-pw", "lab").await.is_ok());

    client
        .clear_permissions("lab", "erin", false)
        .await
        .expect("clear");
    assert!(api.amqp("erin", "erin-pw", "lab").await.is_err());
    client
        .delete_vhost("lab", false)
        .await
        .expect("delete vhost");
    client
        .delete_user("erin", false)
        .await
        .expect("delete user");
    assert!(client.delete_user("erin", false).await.is_err());
    assert!(
        client.delete_user("erin", true).await.is_ok(),
        "idempotent delete"
    );
    let users = client.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
}
