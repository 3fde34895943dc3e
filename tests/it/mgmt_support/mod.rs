//! HTTP calls to the management API of a `common::TestBroker` or
//! `common::BrokerProcess`, for the management test files.
#![allow(dead_code)]

use crate::common::{BrokerProcess, TestBroker};
use lapin::{Connection, ConnectionProperties};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// HTTP calls to the management API of a broker: an in-process
/// `TestBroker` (`Api::start`) or a broker binary (`Api::of_process`).
pub struct Api {
    pub amqp_port: u16,
    pub base: String,
    /// The in-process broker (`None` for a broker binary).
    in_process: Option<TestBroker>,
    pub http: reqwest::Client,
}

impl Api {
    /// A `TestBroker` whose management API samples rates every 200 ms
    /// instead of 5 s, so tests see them soon.
    pub async fn start() -> Api {
        Self::on(TestBroker::start_sampling_every(Duration::from_millis(200), |_| {}).await)
    }

    /// The management API of `broker`.
    pub fn on(broker: TestBroker) -> Api {
        Api {
            amqp_port: broker.port,
            base: broker.mgmt_url(),
            in_process: Some(broker),
            http: reqwest::Client::new(),
        }
    }

    /// The management API of a broker binary started with
    /// `BrokerProcess::start_with_mgmt`.
    pub fn of_process(process: &BrokerProcess) -> Api {
        Api {
            amqp_port: process.port,
            base: process.mgmt_url(),
            in_process: None,
            http: reqwest::Client::new(),
        }
    }

    /// The in-process broker, for tests that look inside it.
    pub fn broker(&self) -> &Arc<broker::broker::Broker> {
        &self.test_broker().broker
    }

    /// The in-process `TestBroker` (`Api::start`, `Api::on`).
    pub fn test_broker(&self) -> &TestBroker {
        self.in_process
            .as_ref()
            .expect("an in-process broker (Api::start)")
    }

    pub fn client(&self) -> rabbitmq_http_client::api::Client<String, &'static str, &'static str> {
        rabbitmq_http_client::api::Client::new(self.base.clone(), "guest", "guest")
    }

    /// A RabbitMQ API client logged in as `user`.
    pub fn client_as(
        &self,
        user: &'static str,
        pass: &'static str,
    ) -> rabbitmq_http_client::api::Client<String, &'static str, &'static str> {
        rabbitmq_http_client::api::Client::new(self.base.clone(), user, pass)
    }

    /// The full URL of an API path (`/overview`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call_as(
        &self,
        credentials: (&str, &str),
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        self.call_raw_as(credentials, method, path, body.as_deref())
            .await
    }

    /// A request with `body` sent as it is (JSON or not); returns the
    /// status and the response body as JSON (`Value::Null` when empty).
    pub async fn call_raw_as(
        &self,
        (user, pass): (&str, &str),
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
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

    /// `call_raw_as` as guest.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        self.call_raw_as(("guest", "guest"), method, path, body)
            .await
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
