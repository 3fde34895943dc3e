//! The two binaries end to end against amqp-perf's own null broker
//! (`--serve-null`, which answers the handshake and setup methods, swallows
//! publishes and floods consumers): options parsed, connections made, the
//! report printed. No real broker involved; bench/README.md has the runs
//! against one.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PERF: &str = env!("CARGO_BIN_EXE_amqp-perf");
const SOAK: &str = env!("CARGO_BIN_EXE_amqp-soak");

/// Kills the null broker when the test ends, also on a failed assert.
struct NullBroker {
    child: Child,
    port: u16,
}

impl NullBroker {
    fn start() -> NullBroker {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(PERF)
            .args(["--serve-null", &port.to_string(), "--size", "16"])
            .args(["--duration", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start amqp-perf --serve-null");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "null broker not listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        NullBroker { child, port }
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for NullBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a binary to completion (at most `limit`), returning its output.
fn run(bin: &str, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("{bin} {args:?} still running after {limit:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A number field of amqp-perf's one-line JSON report.
fn number(json: &str, key: &str) -> f64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    let rest = &json[at + key.len() + 3..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

fn perf_json(args: &[&str]) -> String {
    let out = run(PERF, args, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "amqp-perf {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn ping_scenario_reports_the_handshake() {
    let null = NullBroker::start();
    let json = perf_json(&["--uri", &null.uri(), "--scenario", "ping", "--json"]);
    assert!(json.contains("\"scenario\":\"ping\""), "{json}");
    assert!(json.contains("\"ok\":true"), "{json}");
}

#[test]
fn throughput_scenario_publishes_and_consumes() {
    let null = NullBroker::start();
    let uri = null.uri();
    let common = [
        "--uri",
        &uri,
        "--size",
        "16",
        "--warmup",
        "0",
        "--duration",
        "1",
    ];
    let publish = perf_json(&[&common[..], &["--consumers", "0", "--json", "--quiet"]].concat());
    assert!(number(&publish, "published_per_sec") > 0.0, "{publish}");
    let consume = perf_json(
        &[
            &common[..],
            &["--publishers", "0", "--autoack", "--json", "--quiet"],
        ]
        .concat(),
    );
    assert!(number(&consume, "consumed_per_sec") > 0.0, "{consume}");
}

#[test]
fn publishers_and_consumers_can_use_other_brokers() {
    let (setup, publish, consume) = (
        NullBroker::start(),
        NullBroker::start(),
        NullBroker::start(),
    );
    let (setup_uri, publish_uri, consume_uri) = (setup.uri(), publish.uri(), consume.uri());
    let args = [
        "--uri",
        &setup_uri,
        "--publisher-uri",
        &publish_uri,
        "--consumer-uri",
        &consume_uri,
        "--warmup",
        "0",
        "--duration",
        "1",
        "--autoack",
        "--json",
        "--quiet",
    ];
    let json = perf_json(&args);
    assert!(number(&json, "published_per_sec") > 0.0, "{json}");
    assert!(number(&json, "consumed_per_sec") > 0.0, "{json}");
    let at = |port: u16| format!("\"127.0.0.1:{port}\"");
    assert!(
        json.contains(&format!("\"broker\":{}", at(setup.port))),
        "{json}"
    );
    assert!(
        json.contains(&format!("\"publisher_broker\":{}", at(publish.port))),
        "{json}"
    );
    assert!(
        json.contains(&format!("\"consumer_broker\":{}", at(consume.port))),
        "{json}"
    );

    // Consumers really connect to --consumer-uri: a closed port fails the run.
    drop(consume);
    let out = run(PERF, &args, Duration::from_secs(60));
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_remote_address_needs_allow_remote() {
    let remote = "amqp://192.0.2.1:5672/%2f";
    for flag in ["--uri", "--publisher-uri", "--consumer-uri"] {
        let out = run(
            PERF,
            &[flag, remote, "--scenario", "latency"],
            Duration::from_secs(30),
        );
        assert!(!out.status.success(), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains("--allow-remote"),
            "{flag}: {stderr}"
        );
    }
}

#[test]
fn soak_cycles_connections_and_prints_a_summary() {
    let null = NullBroker::start();
    let pid = null.child.id().to_string();
    let out = run(
        SOAK,
        &[
            "--uri",
            &null.uri(),
            "--pid",
            &pid,
            "--connections",
            "2",
            "--duration-secs",
            "1",
            "--sample-secs",
            "1",
            "--warmup-secs",
            "0",
            "--pause-ms",
            "100",
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "amqp-soak failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("summary: "), "{stdout}");
    assert!(!stdout.contains("summary: 0 cycles"), "{stdout}");
    assert!(stdout.contains(", 0 errors"), "{stdout}");
}
