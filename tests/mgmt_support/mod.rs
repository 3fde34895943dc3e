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
    pub broker: Arc<broker::broker::Broker>,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
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
            broker,
            http: reqwest::Client::new(),
            _dir: dir,
        }
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

    pub async fn amqp(
        &self,
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
            &format!("amqp://{user}:{pass}@127.0.0.1:{}/{vhost}", self.amqp_port),
            ConnectionProperties::default(),
        )
        .await
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
