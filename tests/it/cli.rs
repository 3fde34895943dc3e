//! `broker user …` / `broker permissions …`: the real binary on the data
//! dir of a stopped broker (then the broker started and logged into over
//! AMQP as the new user), and against a running broker, where the change
//! goes through its management API and takes effect at once.

use crate::common::BrokerProcess;
use crate::mgmt_support::{amqp_login, eventually, Api};
use std::path::Path;
use std::process::Output;

/// Runs the broker binary with `args` on `data_dir`, from the data dir
/// (so no `broker.toml` of the working tree is read).
fn cli(data_dir: &Path, management_port: Option<u16>, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_broker"));
    command
        .args(args)
        .current_dir(data_dir)
        .env("BROKER__STORAGE__DATA_DIR", data_dir)
        .env("RUST_LOG", "warn");
    if let Some(port) = management_port {
        command.env("BROKER__MANAGEMENT__PORT", port.to_string());
    }
    command.output().expect("run the broker binary")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The command failed with a message containing `text`.
fn fails_with(output: &Output, text: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(text), "expected {text:?} in: {stderr}");
}

fn management_port(process: &BrokerProcess) -> u16 {
    process.mgmt_port.expect("management port")
}

#[tokio::test]
async fn users_added_to_a_stopped_data_dir_log_in_after_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&cli(
        d,
        None,
        &[
            "user",
            "add",
            "alice",
            "s3cret",
            "--tags",
            "monitoring,management",
        ],
    ));
    ok(&cli(
        d,
        None,
        &[
            "permissions",
            "set",
            "--vhost",
            "/",
            "alice",
            "^alice-.*",
            ".*",
            ".*",
        ],
    ));
    ok(&cli(d, None, &["user", "add", "carol", "pw"]));

    let users = ok(&cli(d, None, &["user", "list"]));
    assert!(users.contains("alice\t[monitoring, management]"), "{users}");
    // The default user of a fresh data dir is kept, as at a first start.
    assert!(users.contains("guest\t[administrator]"), "{users}");
    let permissions = ok(&cli(d, None, &["permissions", "list"]));
    assert!(
        permissions.contains("alice\t/\t^alice-.*\t.*\t.*"),
        "{permissions}"
    );
    assert!(
        permissions.contains("guest\t/\t.*\t.*\t.*"),
        "{permissions}"
    );

    // Errors: a message and exit status 1, nothing changed.
    fails_with(
        &cli(d, None, &["user", "add", "alice", "x"]),
        "user 'alice' already exists",
    );
    fails_with(
        &cli(d, None, &["user", "passwd", "nobody", "x"]),
        "user 'nobody' does not exist",
    );
    fails_with(
        &cli(d, None, &["user", "delete", "nobody"]),
        "user 'nobody' does not exist",
    );
    fails_with(
        &cli(
            d,
            None,
            &[
                "permissions",
                "set",
                "--vhost",
                "nope",
                "alice",
                ".*",
                ".*",
                ".*",
            ],
        ),
        "vhost 'nope' does not exist",
    );
    fails_with(
        &cli(d, None, &["permissions", "set", "alice", "(", ".*", ".*"]),
        "not a valid regex",
    );
    ok(&cli(d, None, &["user", "delete", "carol"]));

    let broker = BrokerProcess::start_with_mgmt(d).await;
    let alice = amqp_login(broker.port, "alice", "s3cret", "/")
        .await
        .expect("alice logs in");
    let channel = alice.create_channel().await.unwrap();
    // Her configure permission is the one set: alice-* only.
    channel
        .queue_declare("alice-q".into(), Default::default(), Default::default())
        .await
        .expect("alice may declare alice-q");
    assert!(amqp_login(broker.port, "alice", "wrong", "/")
        .await
        .is_err());
    assert!(amqp_login(broker.port, "carol", "pw", "/").await.is_err());
    amqp_login(broker.port, "guest", "guest", "/")
        .await
        .expect("guest still logs in");
    drop(alice);
    broker.stop();

    // A new password on the stopped data dir holds after the next start.
    ok(&cli(d, None, &["user", "passwd", "alice", "n3w"]));
    let broker = BrokerProcess::start_with_mgmt(d).await;
    amqp_login(broker.port, "alice", "n3w", "/")
        .await
        .expect("alice logs in with the new password");
    assert!(amqp_login(broker.port, "alice", "s3cret", "/")
        .await
        .is_err());
    let users = Api::of_process(&broker).get("/users/alice").await;
    assert_eq!(
        users.1["tags"],
        serde_json::json!(["monitoring", "management"])
    );
    broker.stop();
}

#[tokio::test]
async fn on_a_running_broker_changes_go_through_its_api_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = BrokerProcess::start_with_mgmt(d).await;
    let port = Some(management_port(&broker));

    let added = cli(
        d,
        port,
        &["user", "add", "bob", "pw1", "--tags", "management"],
    );
    ok(&added);
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(stderr.contains("running broker"), "{stderr}");
    // Logged in at once, without a restart.
    ok(&cli(
        d,
        port,
        &["permissions", "set", "bob", ".*", ".*", ".*"],
    ));
    let bob = amqp_login(broker.port, "bob", "pw1", "/")
        .await
        .expect("bob logs in");

    let users = ok(&cli(d, port, &["user", "list"]));
    assert!(users.contains("bob\t[management]"), "{users}");
    let permissions = ok(&cli(d, port, &["permissions", "list", "--vhost", "/"]));
    assert!(permissions.contains("bob\t/\t.*\t.*\t.*"), "{permissions}");

    ok(&cli(d, port, &["user", "passwd", "bob", "pw2"]));
    assert!(amqp_login(broker.port, "bob", "pw1", "/").await.is_err());
    amqp_login(broker.port, "bob", "pw2", "/")
        .await
        .expect("the new password works at once");

    fails_with(
        &cli(d, port, &["user", "add", "bob", "x"]),
        "user 'bob' already exists",
    );
    fails_with(
        &cli(
            d,
            port,
            &["permissions", "set", "-p", "nope", "bob", ".*", ".*", ".*"],
        ),
        "vhost 'nope' does not exist",
    );
    fails_with(
        &cli(d, port, &["user", "list", "--api-password", "wrong"]),
        "refused the credentials of 'guest'",
    );

    // Deleting bob closes his open connection, as the API does.
    ok(&cli(d, port, &["user", "delete", "bob"]));
    eventually(10, || {
        let open = bob.status().connected();
        async move { !open }
    })
    .await;
    assert!(amqp_login(broker.port, "bob", "pw2", "/").await.is_err());
    fails_with(
        &cli(d, port, &["user", "delete", "bob"]),
        "user 'bob' does not exist",
    );
    broker.stop();
}

#[tokio::test]
async fn a_running_broker_whose_api_is_unreachable_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = BrokerProcess::start_with_mgmt(d).await;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    fails_with(
        &cli(d, Some(closed_port), &["user", "list"]),
        "cannot reach the management API",
    );
    broker.stop();
}
