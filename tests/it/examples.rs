//! Runs each tutorial in `examples/` against an in-process broker.
//!
//! The example binaries are not known to `env!("CARGO_BIN_EXE_...")`, so they
//! are looked up in `target/<profile>/examples/`, next to this test's own
//! `target/<profile>/deps/` directory. A plain `cargo test` (or `cargo nextest
//! run`) builds them; with a target filter such as `--test it` it does not, so
//! missing or outdated ones are built here with `cargo build --examples`.

use crate::common;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

const EXAMPLES: [&str; 9] = [
    "hello_world",
    "work_queues",
    "publish_subscribe",
    "routing",
    "topics",
    "rpc",
    "stream_replay",
    "event_sourcing",
    "orders_consumer_groups",
];

fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile_dir.join("examples")
}

fn example_path(name: &str) -> PathBuf {
    examples_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// True if the example binary is missing or older than its source.
fn needs_build(name: &str) -> bool {
    let source = format!("{}/examples/{name}.rs", env!("CARGO_MANIFEST_DIR"));
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified());
    match (modified(&example_path(name)), modified(source.as_ref())) {
        (Ok(binary), Ok(source)) => binary < source,
        _ => true,
    }
}

/// Builds the examples once if this test run did not (e.g. `cargo test --test
/// it examples::`) or one is outdated; every test waits for that build.
fn ensure_built(name: &str) {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        if !EXAMPLES.iter().any(|name| needs_build(name)) {
            return;
        }
        let profile_dir = examples_dir().parent().unwrap().to_path_buf();
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--examples", "--manifest-path"]);
        cargo.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if profile_dir.file_name().unwrap() == "release" {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("cannot run cargo");
        assert!(status.success(), "cargo build --examples failed");
    });
    assert!(
        !needs_build(name),
        "{} not built",
        example_path(name).display()
    );
}

/// Starts a broker on a free port, runs the example against it and checks it exits 0.
async fn run_example(name: &str) {
    ensure_built(name);
    let broker = common::TestBroker::start().await;
    let port = broker.port;
    let dir = tempfile::tempdir().unwrap();

    let log = dir.path().join("output.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(example_path(name))
        .env(
            "AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        )
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // The examples give up by themselves after 10 s; this is only a safety net.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let output = std::fs::read_to_string(&log).unwrap();
    println!("--- {name} output ---\n{output}");
    match status {
        Some(status) => assert!(status.success(), "{name} failed ({status}):\n{output}"),
        None => panic!("{name} did not exit within 30 s:\n{output}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_world() {
    run_example("hello_world").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn work_queues() {
    run_example("work_queues").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_subscribe() {
    run_example("publish_subscribe").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routing() {
    run_example("routing").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn topics() {
    run_example("topics").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc() {
    run_example("rpc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_replay() {
    run_example("stream_replay").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn event_sourcing() {
    run_example("event_sourcing").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_consumer_groups() {
    run_example("orders_consumer_groups").await;
}
