//! Shared test harness: a real broker on an ephemeral port with a temp data
//! dir, lapin connections to it, and a raw-socket client for protocol-level
//! abuse that no well-behaved client library would send.
#![allow(dead_code)]

use broker::protocol::decode::{Frame, FrameDecoder};
use broker::protocol::{encode, AMQPClass};
use bytes::BytesMut;
use futures_lite::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct TestBroker {
    pub port: u16,
    /// The broker itself, for tests that change settings at run time.
    pub broker: std::sync::Arc<broker::broker::Broker>,
    /// Where the management API, the Prometheus endpoint and the AMQPS
    /// listener are bound (`None` when disabled in the config).
    mgmt_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    _dir: tempfile::TempDir,
    /// AMQP errors (channel and connection closes) seen by connections made
    /// with `connect`, newest last.
    errors: Arc<Mutex<Vec<(u16, String)>>>,
}

impl TestBroker {
    /// Defaults, with every listener (AMQP, management, Prometheus) on an
    /// ephemeral port of 127.0.0.1.
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// `start`, with the config adjusted by `adjust` before the broker binds.
    pub async fn start_with(adjust: impl FnOnce(&mut broker::Config)) -> TestBroker {
        Self::launch(adjust, None).await
    }

    /// `start_with`, but the management API samples message rates every
    /// `interval` instead of every 5 s, so that tests see rates soon. (The
    /// server always uses the default, so the test serves the API itself.)
    pub async fn start_sampling_every(
        interval: Duration,
        adjust: impl FnOnce(&mut broker::Config),
    ) -> TestBroker {
        Self::launch(adjust, Some(interval)).await
    }

    async fn launch(
        adjust: impl FnOnce(&mut broker::Config),
        sample_interval: Option<Duration>,
    ) -> TestBroker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = broker::Config::default();
        config.amqp.bind = "127.0.0.1".into();
        config.amqp.port = 0;
        config.storage.data_dir = dir.path().to_path_buf();
        // Any free ports: tests run side by side.
        config.management.bind = "127.0.0.1".into();
        config.management.port = 0;
        config.prometheus.bind = "127.0.0.1".into();
        config.prometheus.port = 0;
        config.tls.bind = "127.0.0.1".into();
        config.tls.port = 0;
        adjust(&mut config);
        if sample_interval.is_some() {
            config.management.enabled = false;
        }
        let server = broker::Server::bind(config).await.expect("bind");
        let port = server.local_addr().port();
        let mut mgmt_addr = server.management_addr();
        let metrics_addr = server.prometheus_addr();
        let tls_addr = server.tls_addr();
        let broker = server.broker.clone();
        tokio::spawn(server.run(std::future::pending()));
        if let Some(interval) = sample_interval {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind http");
            mgmt_addr = Some(listener.local_addr().expect("addr"));
            tokio::spawn(broker::mgmt::serve_with_interval(
                broker.clone(),
                listener,
                std::future::pending(),
                interval,
            ));
        }
        TestBroker {
            port,
            broker,
            mgmt_addr,
            metrics_addr,
            tls_addr,
            _dir: dir,
            errors: Default::default(),
        }
    }

    /// The management API's listener.
    pub fn mgmt_addr(&self) -> SocketAddr {
        self.mgmt_addr.expect("management API enabled")
    }

    /// The base URL of the management API (`http://…/api`).
    pub fn mgmt_url(&self) -> String {
        format!("http://{}/api", self.mgmt_addr())
    }

    /// The Prometheus endpoint's listener.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr.expect("Prometheus endpoint enabled")
    }

    /// The base URL of the Prometheus endpoint (`http://host:port`).
    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.metrics_addr())
    }

    /// The AMQPS port (`tls.enabled`).
    pub fn tls_port(&self) -> u16 {
        self.tls_addr.expect("TLS listener enabled").port()
    }

    /// The data dir.
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub async fn connect(&self) -> Connection {
        self.connect_to(&self.url()).await
    }

    /// A connection to `url` (another user or vhost) whose AMQP errors are
    /// recorded for `error_of`.
    pub async fn connect_to(&self, url: &str) -> Connection {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let mut events = conn.events_listener();
        let errors = self.errors.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let lapin::Event::Error(e) = event {
                    if let lapin::ErrorKind::ProtocolError(p) = e.kind() {
                        errors
                            .lock()
                            .unwrap()
                            .push((p.get_id(), p.get_message().to_string()));
                    }
                }
            }
        });
        conn
    }

    /// The AMQP error a probe call ran into. A probe sent after an
    /// asynchronous mistake (publish, ack) may find the channel already
    /// closing; the close's code and text are then taken from the events
    /// of the connection.
    pub async fn error_of<T: std::fmt::Debug>(
        &self,
        result: Result<T, lapin::Error>,
    ) -> (u16, String) {
        let err = match result {
            Ok(v) => panic!("expected an AMQP error, got {v:?}"),
            Err(e) => e,
        };
        if let lapin::ErrorKind::ProtocolError(p) = err.kind() {
            // Let the same close reach the event log, then forget it, so
            // that the next probe sees only what comes after.
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.errors.lock().unwrap().clear();
            return (p.get_id(), p.get_message().to_string());
        }
        for _ in 0..100 {
            if let Some(last) = self.errors.lock().unwrap().drain(..).next_back() {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no AMQP error recorded; probe failed with {err:?}")
    }

    pub async fn channel(&self) -> (Connection, Channel) {
        let conn = self.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        (conn, ch)
    }

    /// Proves the broker still serves: a fresh connection round-trips a message.
    pub async fn assert_healthy(&self) {
        let (_conn, ch) = self.channel().await;
        let q = ch
            .queue_declare(
                "".into(),
                lapin::options::QueueDeclareOptions::exclusive(),
                FieldTable::default(),
            )
            .await
            .expect("declare after error");
        publish(&ch, "", q.name().as_str(), b"still alive").await;
        let got = get(&ch, q.name().as_str())
            .await
            .expect("message after error");
        assert_eq!(got.delivery.data, b"still alive");
    }
}

pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_with(ch, exchange, key, body, lapin::BasicProperties::default()).await;
}

pub async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: lapin::BasicProperties,
) {
    ch.basic_publish(exchange.into(), key.into(), Default::default(), body, props)
        .await
        .expect("publish");
}

/// queue.declare with default flags and `args`.
pub async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name.into(), Default::default(), args)
        .await
        .expect("declare");
}

/// The ready message count of a queue (passive declare).
pub async fn ready(ch: &Channel, name: &str) -> u32 {
    ch.queue_declare(
        name.into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

/// basic.get with manual ack off (auto-ack).
pub async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(
        queue.into(),
        lapin::options::BasicGetOptions { no_ack: true },
    )
    .await
    .expect("basic.get")
}

pub async fn consume(ch: &Channel, queue: &str, options: BasicConsumeOptions) -> lapin::Consumer {
    ch.basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
        .expect("consume")
}

/// Next delivery within 5 s.
pub async fn next(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("delivery timed out")
        .expect("consumer ended")
        .expect("delivery error")
}

/// Asserts that nothing arrives within `ms`.
pub async fn assert_nothing(consumer: &mut lapin::Consumer, ms: u64) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(ms), consumer.next()).await {
        panic!("unexpected delivery: {d:?}");
    }
}

/// The AMQP reply code and text of a lapin error.
pub fn amqp_error(err: &lapin::Error) -> (u16, String) {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => (e.get_id(), e.get_message().to_string()),
        other => panic!("not an AMQP error: {other:?}"),
    }
}

pub fn expect_amqp_error<T: std::fmt::Debug>(result: Result<T, lapin::Error>) -> (u16, String) {
    match result {
        Ok(v) => panic!("expected an AMQP error, got {v:?}"),
        Err(e) => amqp_error(&e),
    }
}

pub fn table(pairs: &[(&str, lapin::types::AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

pub fn long_str(s: &str) -> lapin::types::AMQPValue {
    lapin::types::AMQPValue::LongString(s.into())
}

/// The frames of one basic.publish (method, header, body).
pub fn encode_publish(
    channel: u16,
    exchange: &str,
    routing_key: &str,
    properties: &broker::protocol::BasicProperties,
    body: &[u8],
) -> BytesMut {
    use amq_protocol::protocol::basic;
    let mut out = BytesMut::new();
    encode::method(
        &mut out,
        channel,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    encode::content(
        &mut out,
        channel,
        &encode::properties(properties),
        body,
        131_072,
    );
    out
}

/// A byte-level AMQP client, for inputs a client library would never send.
pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl RawClient {
    pub async fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("tcp connect");
        RawClient {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(1 << 20),
        }
    }

    /// Connects and completes the handshake (guest/guest, vhost /).
    pub async fn open(port: u16) -> RawClient {
        use amq_protocol::protocol::connection;
        let mut c = Self::connect(port).await;
        c.send_raw(b"AMQP\x00\x00\x09\x01").await;
        c.expect_method().await; // start
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: Default::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        )
        .await;
        let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = c.expect_method().await
        else {
            panic!("expected connection.tune")
        };
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            })),
        )
        .await;
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
        let open_ok = c.expect_method().await;
        assert!(matches!(
            open_ok,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
        ));
        c
    }

    pub async fn open_channel(&mut self, channel: u16) {
        use amq_protocol::protocol::channel as ch;
        self.send_method(
            channel,
            AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})),
        )
        .await;
        let ok = self.expect_method().await;
        assert!(
            matches!(ok, AMQPClass::Channel(ch::AMQPMethod::OpenOk(_))),
            "{ok:?}"
        );
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) {
        let mut out = BytesMut::new();
        encode::method(&mut out, channel, &method);
        self.send_raw(&out).await;
    }

    /// basic.publish with its header and body, as one write.
    pub async fn publish(
        &mut self,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        properties: &broker::protocol::BasicProperties,
        body: &[u8],
    ) {
        self.send_raw(&encode_publish(
            channel,
            exchange,
            routing_key,
            properties,
            body,
        ))
        .await;
    }

    /// Next frame within 5 s; `None` when the server closed the socket.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.buf)
                .expect("server sent a bad frame")
            {
                return Some(frame);
            }
            let n =
                tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("server said nothing for 5 s")
                    .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads raw bytes until the server closes (for the protocol-header reply).
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.stream.read_to_end(&mut out)).await;
        out
    }

    pub async fn expect_method(&mut self) -> AMQPClass {
        loop {
            match self.read_frame().await.expect("connection closed") {
                Frame::Method { method, .. } => return *method,
                Frame::Heartbeat { .. } => continue,
                other => panic!("expected a method, got {other:?}"),
            }
        }
    }

    /// Expects connection.close; returns (code, text, class, method).
    pub async fn expect_connection_close(&mut self) -> (u16, String, u16, u16) {
        use amq_protocol::protocol::connection;
        match self.expect_method().await {
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => (
                c.reply_code,
                c.reply_text.to_string(),
                c.class_id,
                c.method_id,
            ),
            other => panic!("expected connection.close, got {other:?}"),
        }
    }

    /// Expects channel.close; returns (code, text, class, method).
    pub async fn expect_channel_close(&mut self) -> (u16, String, u16, u16) {
        use amq_protocol::protocol::channel;
        match self.expect_method().await {
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => (
                c.reply_code,
                c.reply_text.to_string(),
                c.class_id,
                c.method_id,
            ),
            other => panic!("expected channel.close, got {other:?}"),
        }
    }
}

/// A free port of 127.0.0.1 (for a broker binary, which cannot report the
/// ports it bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The real broker binary on a data dir, for restart and crash tests. A
/// test that ends (or fails) with it still running does not leave it behind.
pub struct BrokerProcess {
    pub port: u16,
    /// The management API's port (`start_with_mgmt`).
    pub mgmt_port: Option<u16>,
    pub child: std::process::Child,
}

impl BrokerProcess {
    /// The management API and Prometheus endpoint on ports nobody learns.
    pub async fn start(data_dir: &std::path::Path) -> BrokerProcess {
        Self::start_with_env(data_dir, &[]).await
    }

    /// With extra environment variables (`BROKER__…` settings).
    pub async fn start_with_env(data_dir: &std::path::Path, env: &[(&str, &str)]) -> BrokerProcess {
        Self::spawn(data_dir, env, None).await
    }

    /// With the management API on a known port (`mgmt_url`).
    pub async fn start_with_mgmt(data_dir: &std::path::Path) -> BrokerProcess {
        Self::spawn(data_dir, &[], Some(free_port())).await
    }

    async fn spawn(
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
        mgmt_port: Option<u16>,
    ) -> BrokerProcess {
        let port = free_port();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
            .env("BROKER__AMQP__BIND", "127.0.0.1")
            .env("BROKER__AMQP__PORT", port.to_string())
            .env("BROKER__STORAGE__DATA_DIR", data_dir)
            .env("BROKER__MANAGEMENT__BIND", "127.0.0.1")
            .env(
                "BROKER__MANAGEMENT__PORT",
                mgmt_port.unwrap_or(0).to_string(),
            )
            .env("BROKER__PROMETHEUS__PORT", "0")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            // TEST_BROKER_LOGS=1 shows the broker's log (for debugging).
            .stdout(match std::env::var_os("TEST_BROKER_LOGS") {
                Some(_) => std::process::Stdio::inherit(),
                None => std::process::Stdio::null(),
            })
            .spawn()
            .expect("start broker binary");
        for _ in 0..200 {
            let amqp = TcpStream::connect(("127.0.0.1", port)).await.is_ok();
            let http = match mgmt_port {
                Some(p) => TcpStream::connect(("127.0.0.1", p)).await.is_ok(),
                None => true,
            };
            if amqp && http {
                return BrokerProcess {
                    port,
                    mgmt_port,
                    child,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("broker did not start listening on {port} (management: {mgmt_port:?})");
    }

    /// The base URL of the management API (`http://…/api`).
    pub fn mgmt_url(&self) -> String {
        let port = self.mgmt_port.expect("BrokerProcess::start_with_mgmt");
        format!("http://127.0.0.1:{port}/api")
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub async fn channel(&self) -> (Connection, Channel) {
        let conn = Connection::connect(&self.url(), ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        (conn, ch)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "broker exited with {status}");
    }
}

impl Drop for BrokerProcess {
    /// A test that ends (or fails) with the broker still running does not
    /// leave it behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
