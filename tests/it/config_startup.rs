//! Start-up configuration: unknown keys in the file or in `BROKER__…`
//! variables are refused, naming the key and where it came from; the
//! shipped `broker.toml` (its commented examples included) loads; log
//! lines to a pipe carry no colour codes, and `log.format = "json"` gives
//! one JSON object per line.

use broker::config::LogFormat;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn shipped_broker_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("broker.toml")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("test-broker.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn load_error(path: &Path) -> String {
    match broker::Config::load(Some(path)) {
        Ok(config) => panic!("{} loaded: {config:?}", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// The broker binary from a scratch working directory (no `broker.toml`
/// of the tree is read unless `args` names one), listening on free
/// loopback ports, logging at info.
fn broker_command(work: &Path, amqp_port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_broker"));
    command
        .current_dir(work)
        .env_remove("RUST_LOG")
        .env("BROKER__AMQP__BIND", "127.0.0.1")
        .env("BROKER__AMQP__PORT", amqp_port.to_string())
        .env("BROKER__STORAGE__DATA_DIR", work.join("data"))
        .env("BROKER__MANAGEMENT__BIND", "127.0.0.1")
        .env("BROKER__MANAGEMENT__PORT", "0")
        .env("BROKER__PROMETHEUS__BIND", "127.0.0.1")
        .env("BROKER__PROMETHEUS__PORT", "0")
        .env("BROKER__LOG__LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Kills the child if a test fails with it still running.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the broker until its AMQP port accepts, stops it with SIGTERM and
/// returns what it wrote to stdout and to stderr.
fn run_until_listening(mut command: Command, amqp_port: u16) -> (String, String) {
    let mut running = Running(Some(command.spawn().expect("start broker binary")));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", amqp_port)).is_err() {
        let child = running.0.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("broker exited with {status} before listening: {err}");
        }
        assert!(Instant::now() < deadline, "broker never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let child = running.0.take().unwrap();
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let output = child.wait_with_output().expect("wait for broker");
    assert!(
        output.status.success(),
        "broker exited with {}",
        output.status
    );
    (
        String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    )
}

/// Runs the broker expecting it to refuse to start; returns its stderr.
fn run_expecting_refusal(mut command: Command) -> String {
    let mut running = Running(Some(command.spawn().expect("start broker binary")));
    let child = running.0.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "broker started instead of refusing"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "broker exited with {status}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

#[test]
fn an_unknown_key_in_the_file_is_refused_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[amqp]\nprot = 5673\n");
    let err = load_error(&path);
    assert!(err.contains("amqp.prot"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");

    // Inside a table keyed by names, and a whole unknown section.
    let path = write_config(
        dir.path(),
        "[limits.vhosts.\"/\"]\nmax_queus = 5\n[amqpp]\nport = 1\n",
    );
    let err = load_error(&path);
    assert!(err.contains("limits.vhosts.\"/\".max_queus"), "{err}");
    assert!(err.contains("`amqpp`"), "{err}");

    // The binary refuses to start with it, before listening.
    let path = write_config(dir.path(), "[amqp]\nprot = 5673\n");
    let mut command = broker_command(dir.path(), free_port());
    command.arg("--config").arg(&path);
    let err = run_expecting_refusal(command);
    assert!(err.contains("amqp.prot"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn an_unknown_environment_variable_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for variable in [
        "BROKER__AMQP__PROT",
        "BROKER__AMQP",
        "BROKER__AMQP__PORT__X",
        "BROKER__LIMITS__USERS__ALICE__MAX_CONNECTIONZ",
    ] {
        let mut command = broker_command(dir.path(), free_port());
        command.env(variable, "1");
        let err = run_expecting_refusal(command);
        assert!(err.contains(variable), "{variable}: {err}");
    }
}

#[test]
fn the_shipped_broker_toml_and_known_variables_start_a_broker() {
    let config = broker::Config::load(Some(&shipped_broker_toml())).expect("load broker.toml");
    assert_eq!(config.amqp.port, 5672);
    assert_eq!(config.log.format, LogFormat::Text);

    // The binary on it, with every variable the tests, CI scripts and the
    // Dockerfile set, and one inside a table keyed by names.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = broker_command(dir.path(), port);
    command
        .arg("--config")
        .arg(shipped_broker_toml())
        .env("BROKER__AUTH__DEFAULT_USER", "guest")
        .env("BROKER__AUTH__DEFAULT_PASS", "guest")
        .env("BROKER__AUTH__LOOPBACK_USERS", "guest,other")
        .env("BROKER__MANAGEMENT__ENABLED", "true")
        .env("BROKER__PROMETHEUS__ENABLED", "true")
        .env("BROKER__MANAGEMENT__TLS__ENABLED", "false")
        .env("BROKER__STORAGE__SEGMENT_SIZE_BYTES", "1048576")
        .env("BROKER__LIMITS__USERS__ALICE__MAX_CONNECTIONS", "3")
        .env("broker__log__format", "text");
    let (stdout, _) = run_until_listening(command, port);
    assert!(stdout.contains("AMQP listener started"), "{stdout}");
}

/// Every key shown commented out in `broker.toml` (`# key = value`,
/// `# [section]`) is one the broker accepts.
#[test]
fn every_commented_example_in_the_shipped_broker_toml_is_known() {
    let text = std::fs::read_to_string(shipped_broker_toml()).unwrap();
    let example = regex::Regex::new(r#"^# (\[[a-z_."/]+\]|[a-z_]+ = .+)$"#).unwrap();
    let mut uncommented = 0;
    let text: String = text
        .lines()
        .map(|line| match example.is_match(line) {
            true => {
                uncommented += 1;
                format!("{}\n", &line[2..])
            }
            false => format!("{line}\n"),
        })
        .collect();
    assert!(uncommented >= 20, "only {uncommented} examples found");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &text);
    let config = broker::Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    assert!(config.tls.enabled && config.management.tls.enabled);
    assert_eq!(config.limits.vhost_max_exchanges("/"), Some(1000));
}

#[test]
fn log_format_is_read_from_the_file_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[log]\nformat = \"json\"\n");
    let config = broker::Config::load(Some(&path)).expect("load");
    assert_eq!(config.log.format, LogFormat::Json);

    let path = write_config(dir.path(), "[log]\nformat = \"xml\"\n");
    let err = load_error(&path);
    assert!(err.contains("log.format") && err.contains("xml"), "{err}");
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (stdout, stderr) = run_until_listening(broker_command(dir.path(), port), port);
    assert!(stdout.contains("AMQP listener started"), "{stdout}");
    for (name, output) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            !output.contains("\x1b["),
            "escape codes on {name}: {output:?}"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = broker_command(dir.path(), port);
    command.env("BROKER__LOG__FORMAT", "json");
    let (stdout, stderr) = run_until_listening(command, port);
    assert!(!stdout.contains("\x1b[") && !stderr.contains("\x1b["));
    let mut messages = Vec::new();
    for line in stdout.lines().chain(stderr.lines()) {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        let message = object["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message field: {line}"));
        assert!(object["level"].is_string(), "no level: {line}");
        messages.push(message.to_string());
    }
    assert!(
        messages.iter().any(|m| m == "AMQP listener started"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "broker stopped"),
        "{messages:?}"
    );
}
