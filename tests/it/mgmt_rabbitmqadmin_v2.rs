//! RabbitMQ's current command-line client of the management API,
//! `rabbitmqadmin` v2 (the Rust crate `rabbitmqadmin`), run unchanged
//! against this broker: list queues, exchanges, users, vhosts,
//! connections and channels; declare a queue, an exchange and a binding;
//! publish and get; export definitions and import them. Outcomes are
//! checked through the API and over AMQP, not only in its output.
//! Skipped (with a note) where the binary is not installed.

use crate::mgmt_support::Api;
use lapin::options::BasicGetOptions;
use std::process::Command;

/// The binary: `$RABBITMQADMIN_V2` (set by `.ci/run`, which installs it;
/// then it must exist), else where `.ci/run` installs it.
fn admin_path() -> Option<String> {
    match std::env::var("RABBITMQADMIN_V2") {
        Ok(path) => Some(path),
        Err(_) => {
            let installed = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/rabbitmqadmin-v2/bin/rabbitmqadmin"
            );
            std::path::Path::new(installed)
                .exists()
                .then(|| installed.to_string())
        }
    }
}

fn http_port(api: &Api) -> String {
    api.base
        .trim_start_matches("http://")
        .trim_end_matches("/api")
        .rsplit(':')
        .next()
        .expect("port")
        .to_string()
}

/// Runs `rabbitmqadmin args...`; returns (success, stdout + stderr).
fn run(api: &Api, args: &[&str]) -> (bool, String) {
    let out = Command::new(admin_path().expect("rabbitmqadmin v2"))
        .args(["-H", "127.0.0.1", "-P", &http_port(api)])
        .args(["-u", "guest", "-p", "guest", "--non-interactive"])
        .args(args)
        // Never read a developer's ~/.rabbitmqadmin.conf.
        .env("HOME", std::env::temp_dir())
        .env_remove("RABBITMQADMIN_CONFIG_FILE_PATH")
        .output()
        .expect("run rabbitmqadmin");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn admin(api: &Api, args: &[&str]) -> String {
    let (ok, text) = run(api, args);
    assert!(ok, "rabbitmqadmin {args:?} failed: {text}");
    text
}

/// Whether a listing has a row whose first column is `name`.
fn lists(output: &str, name: &str) -> bool {
    output
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqadmin_v2_lists_declares_publishes_gets_and_moves_definitions() {
    if admin_path().is_none() {
        eprintln!("skipped: rabbitmqadmin v2 is not installed (.ci/run: cargo install --locked rabbitmqadmin --no-default-features --root target/rabbitmqadmin-v2, and sets RABBITMQADMIN_V2)");
        return;
    }
    let api = Api::start().await;
    let conn = api.amqp_named("cli-test").await;
    let ch = conn.create_channel().await.expect("channel");

    // Lists.
    let exchanges = admin(&api, &["list", "exchanges"]);
    for x in ["amq.direct", "amq.fanout", "amq.topic", "amq.headers"] {
        assert!(lists(&exchanges, x), "{x} missing: {exchanges}");
    }
    assert!(lists(&admin(&api, &["list", "users"]), "guest"));
    assert!(lists(&admin(&api, &["list", "vhosts"]), "/"));
    let connections = admin(&api, &["list", "connections"]);
    let local = format!("-> 127.0.0.1:{}", api.amqp_port);
    assert!(connections.contains(&local), "{connections}");
    let channels = admin(&api, &["list", "channels"]);
    assert!(channels.contains("(1)"), "{channels}");

    // Declare a queue, an exchange and a binding.
    admin(
        &api,
        &["declare", "queue", "--name", "orders", "--durable", "true"],
    );
    admin(
        &api,
        &[
            "declare",
            "exchange",
            "--name",
            "shop",
            "--type",
            "topic",
            "--durable",
            "true",
        ],
    );
    admin(
        &api,
        &[
            "declare",
            "binding",
            "--source",
            "shop",
            "--destination-type",
            "queue",
            "--destination",
            "orders",
            "--routing-key",
            "order.*",
        ],
    );
    let (_, q) = api.get("/queues/%2F/orders").await;
    assert_eq!(q["durable"], true, "{q}");
    let (_, x) = api.get("/exchanges/%2F/shop").await;
    assert_eq!(x["type"], "topic", "{x}");
    let (_, bindings) = api.get("/exchanges/%2F/shop/bindings/source").await;
    assert_eq!(bindings[0]["destination"], "orders", "{bindings}");
    assert_eq!(bindings[0]["routing_key"], "order.*");
    assert!(lists(&admin(&api, &["list", "queues"]), "orders"));

    // Publish through the exchange; the message is there over AMQP.
    let published = admin(
        &api,
        &[
            "publish",
            "message",
            "-e",
            "shop",
            "-k",
            "order.new",
            "-m",
            "first order",
        ],
    );
    assert!(published.contains("routed"), "{published}");
    let got = ch
        .basic_get("orders".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the published message");
    assert_eq!(got.delivery.data, b"first order");
    assert_eq!(got.delivery.routing_key.as_str(), "order.new");

    // Get: what a client published, taken off the queue (ack_requeue_false).
    api.post(
        "/exchanges/%2F/amq.default/publish",
        serde_json::json!({"properties": {}, "routing_key": "orders",
            "payload": "second order", "payload_encoding": "string"}),
    )
    .await;
    let fetched = admin(&api, &["get", "messages", "-q", "orders"]);
    assert!(fetched.contains("second order"), "{fetched}");
    let (_, q) = api.get("/queues/%2F/orders").await;
    assert_eq!(q["messages"], 0, "{q}");

    // Export to a file, delete, import: everything is back.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("definitions.json");
    let file = file.to_str().expect("utf-8 path");
    admin(&api, &["definitions", "export", "--file", file]);
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("exported file"))
            .expect("exported JSON");
    assert!(exported["queues"]
        .as_array()
        .is_some_and(|qs| qs.iter().any(|q| q["name"] == "orders")));
    admin(&api, &["delete", "queue", "--name", "orders"]);
    admin(&api, &["delete", "exchange", "--name", "shop"]);
    let (status, _) = api.get("/queues/%2F/orders").await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    admin(&api, &["definitions", "import", "--file", file]);
    let (status, q) = api.get("/queues/%2F/orders").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{q}");
    let (_, bindings) = api.get("/exchanges/%2F/shop/bindings/source").await;
    assert_eq!(bindings[0]["routing_key"], "order.*", "{bindings}");

    // An error from the API is reported as an error, not a crash.
    let (ok, text) = run(&api, &["get", "messages", "-q", "no-such-queue"]);
    assert!(!ok, "get from a missing queue succeeded: {text}");
}
