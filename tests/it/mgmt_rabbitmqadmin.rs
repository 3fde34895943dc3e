//! RabbitMQ's classic command-line client of the management API, the
//! python `rabbitmqadmin` from Debian's `rabbitmq-server` package, run
//! unchanged against this broker: users, vhosts, permissions, channels,
//! consumers, definitions export and import. Skipped (with a note) where
//! `/usr/bin/rabbitmqadmin` is not installed.

use crate::mgmt_support::Api;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use std::process::Command;

/// The script: `$RABBITMQADMIN` (set by `.ci/run`, which unpacks it from
/// Debian's package; then it must exist), else the installed one.
fn admin_path() -> Option<String> {
    match std::env::var("RABBITMQADMIN") {
        Ok(path) => Some(path),
        Err(_) => {
            let installed = "/usr/bin/rabbitmqadmin";
            std::path::Path::new(installed)
                .exists()
                .then(|| installed.to_string())
        }
    }
}

fn admin(api: &Api, args: &[&str]) -> String {
    let port = api
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/api")
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let out = Command::new(admin_path().expect("rabbitmqadmin"))
        .args(["-H", "127.0.0.1", "-P", &port, "-u", "guest", "-p", "guest"])
        .args(args)
        .output()
        .expect("run rabbitmqadmin");
    assert!(
        out.status.success(),
        "rabbitmqadmin {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn list(api: &Api, what: &str) -> Vec<Value> {
    let text = admin(api, &["-f", "raw_json", "list", what]);
    match serde_json::from_str(&text) {
        Ok(Value::Array(items)) => items,
        _ => panic!("list {what}: not a JSON list: {text}"),
    }
}

fn names(items: &[Value], key: &str) -> Vec<String> {
    let mut names: Vec<String> = items
        .iter()
        .filter_map(|i| i[key].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_rabbitmqadmin_manages_users_vhosts_and_definitions() {
    if admin_path().is_none() {
        eprintln!("skipped: rabbitmqadmin is not installed (Debian package rabbitmq-server; .ci/run unpacks it and sets RABBITMQADMIN)");
        return;
    }
    let api = Api::start().await;
    admin(&api, &["declare", "vhost", "name=staging"]);
    admin(
        &api,
        &[
            "declare",
            "user",
            "name=dave",
            "password=d4ve",
            "tags=management",
        ],
    );
    admin(
        &api,
        &[
            "declare",
            "permission",
            "vhost=staging",
            "user=dave",
            "configure=.*",
            "write=.*",
            "read=.*",
        ],
    );
    assert_eq!(names(&list(&api, "vhosts"), "name"), ["/", "staging"]);
    assert_eq!(names(&list(&api, "users"), "name"), ["dave", "guest"]);
    let perms = list(&api, "permissions");
    assert!(perms
        .iter()
        .any(|p| p["user"] == "dave" && p["vhost"] == "staging" && p["read"] == ".*"));

    // The new user works over AMQP in the new vhost; its consumer and
    // channel are listed.
    let conn = api
        .amqp("dave", "d4ve", "staging")
        .await
        .expect("dave logs in");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "jobs".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _consumer = ch
        .basic_consume(
            "jobs".into(),
            "dave-worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumers = list(&api, "consumers");
    assert_eq!(consumers.len(), 1);
    assert_eq!(consumers[0]["consumer_tag"], "dave-worker");
    assert_eq!(consumers[0]["queue"]["vhost"], "staging");
    let channels = list(&api, "channels");
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0]["user"], "dave");
    assert_eq!(channels[0]["consumer_count"], 1);
    drop(conn);

    // Export, change things, import: the export comes back.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("defs.json");
    let file = file.to_str().unwrap();
    admin(&api, &["export", file]);
    admin(&api, &["delete", "user", "name=dave"]);
    admin(&api, &["delete", "vhost", "name=staging"]);
    assert_eq!(names(&list(&api, "users"), "name"), ["guest"]);
    admin(&api, &["import", file]);
    assert_eq!(names(&list(&api, "users"), "name"), ["dave", "guest"]);
    assert_eq!(names(&list(&api, "vhosts"), "name"), ["/", "staging"]);
    let queues = list(&api, "queues");
    assert_eq!(names(&queues, "name"), ["jobs"], "the queue came back");
    assert_eq!(queues[0]["vhost"], "staging");
    assert!(api.amqp("dave", "d4ve", "staging").await.is_ok());
}
