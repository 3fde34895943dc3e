//! A broker with its management API in process, and raw HTTP calls to it,
//! for the management test files.
#![allow(dead_code)]

use lapin::{Connection, ConnectionProperties};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub struct Api {
    pub amqp_port: u16,
    pub base: String,
    /// The in-process broker (`None` for a broker binary: see `Process`).
    in_process: Option<Arc<broker::broker::Broker>>,
    pub http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl Api {
    pub async fn start() -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = broker::Config::default();
        config.amqp.bind = "127.0.0.1".into();
        config.amqp.port = 0;
        config.storage.data_dir = dir.path().to_path_buf();
        config.management.enabled = false;
        config.prometheus.enabled = false;
        let server = broker::Server::bind(config).await.expect("bind");
        let amqp_port = server.local_addr().port();
        let broker = server.broker.clone();
        tokio::spawn(server.run(std::future::pending()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http");
        let addr = listener.local_addr().expect("addr");
        // Rates sampled every 200 ms instead of 5 s, so tests see them soon.
        tokio::spawn(broker::mgmt::serve_with_interval(
            broker.clone(),
            listener,
            std::future::pending(),
            Duration::from_millis(200),
        ));
        Api {
            amqp_port,
            base: format!("http://{addr}/api"),
            in_process: Some(broker),
            http: reqwest::Client::new(),
            _dir: Some(dir),
        }
    }

    /// The in-process broker, for tests that look inside it.
    pub fn broker(&self) -> &Arc<broker::broker::Broker> {
        self.in_process
            .as_ref()
            .expect("an in-process broker (Api::start)")
    }

    pub fn client(&self) -> rabbitmq_http_client::api::Client<String, &'static str, &'static str> {
        rabbitmq_http_client::api::Client::new(self.base.clone(), "guest", "guest")
    }

    pub async fn call_as(
        &self,
        (user, pass): (&str, &str),
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .basic_auth(user, Some(pass));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, json)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(("guest", "guest"), method, path, body).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn amqp(
        &self,
        user: &str,
        pass: &str,
        vhost: &str,
    ) -> Result<Connection, lapin::Error> {
        amqp_login(self.amqp_port, user, pass, vhost).await
    }

    pub async fn amqp_named(&self, name: &str) -> Connection {
        Connection::connect(
            &format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port),
            ConnectionProperties::default().with_connection_name(name.into()),
        )
        .await
        .expect("amqp connect")
    }
}

/// Polls `check` every 50 ms until it holds, for at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 20 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within {secs} s");
}

/// An AMQP login to `vhost` (percent-encoded into the URL).
pub async fn amqp_login(
    port: u16,
    user: &str,
    pass: &str,
    vhost: &str,
) -> Result<Connection, lapin::Error> {
    let vhost: String = vhost
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    Connection::connect(
        &format!("amqp://{user}:{pass}@127.0.0.1:{port}/{vhost}"),
        ConnectionProperties::default(),
    )
    .await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The broker binary on a data dir, with its management API on a known
/// port, for restart tests. A failing test does not leave it running.
pub struct Process {
    pub amqp_port: u16,
    pub api: Api,
    child: std::process::Child,
}

impl Process {
    pub async fn start(data_dir: &std::path::Path) -> Process {
        let (amqp_port, http_port) = (free_port(), free_port());
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
            .env("BROKER__AMQP__BIND", "127.0.0.1")
            .env("BROKER__AMQP__PORT", amqp_port.to_string())
            .env("BROKER__STORAGE__DATA_DIR", data_dir)
            .env("BROKER__MANAGEMENT__BIND", "127.0.0.1")
            .env("BROKER__MANAGEMENT__PORT", http_port.to_string())
            .env("BROKER__PROMETHEUS__PORT", "0")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start broker binary");
        for _ in 0..200 {
            let amqp = tokio::net::TcpStream::connect(("127.0.0.1", amqp_port)).await;
            let http = tokio::net::TcpStream::connect(("127.0.0.1", http_port)).await;
            if amqp.is_ok() && http.is_ok() {
                return Process {
                    amqp_port,
                    api: Api {
                        amqp_port,
                        base: format!("http://127.0.0.1:{http_port}/api"),
                        in_process: None,
                        http: reqwest::Client::new(),
                        _dir: None,
                    },
                    child,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("broker did not start");
    }

    /// SIGTERM, and the broker must exit cleanly.
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "broker exited with {status}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
