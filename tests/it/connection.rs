//! Handshake, negotiation, authentication, heartbeats, channel lifecycle.

use crate::common::*;
use amq_protocol::protocol::{channel, connection, AMQPClass};
use broker::protocol::decode::Frame;
use lapin::{Connection, ConnectionProperties};

#[tokio::test]
async fn lapin_connects_and_sees_rabbitmq_capabilities() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.port).await;
    raw.send_raw(b"AMQP\x00\x00\x09\x01").await;
    let AMQPClass::Connection(connection::AMQPMethod::Start(start)) = raw.expect_method().await
    else {
        panic!("expected connection.start")
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert_eq!(start.mechanisms.to_string(), "PLAIN AMQPLAIN");
    let Some(lapin::types::AMQPValue::FieldTable(caps)) =
        start.server_properties.inner().get("capabilities")
    else {
        panic!("no capabilities table")
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&lapin::types::AMQPValue::Boolean(true)),
            "{cap}"
        );
    }
    // And a real client gets through the whole handshake.
    let conn = broker.connect().await;
    assert!(conn.status().connected());
}

#[tokio::test]
async fn wrong_protocol_header_gets_our_header_and_close() {
    let broker = TestBroker::start().await;
    for header in [
        &b"AMQP\x00\x00\x09\x00"[..],
        b"HTTP/1.1",
        b"AMQP\x00\x01\x00\x00",
    ] {
        let mut raw = RawClient::connect(broker.port).await;
        raw.send_raw(header).await;
        assert_eq!(raw.read_to_close().await, b"AMQP\x00\x00\x09\x01");
    }
    broker.assert_healthy().await;
}

#[tokio::test]
async fn tune_proposes_rabbitmq_defaults() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.port).await;
    raw.send_raw(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method().await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: Default::default(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        })),
    )
    .await;
    let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = raw.expect_method().await
    else {
        panic!("expected tune")
    };
    assert_eq!(
        (tune.channel_max, tune.frame_max, tune.heartbeat),
        (2047, 131072, 60)
    );
}

#[tokio::test]
async fn amqplain_login_works() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.port).await;
    raw.send_raw(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method().await;
    // AMQPLAIN: a field table without its length prefix.
    let mut response = Vec::new();
    for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "guest")] {
        response.push(k.len() as u8);
        response.extend_from_slice(k.as_bytes());
        response.push(b'S');
        response.extend_from_slice(&(v.len() as u32).to_be_bytes());
        response.extend_from_slice(v.as_bytes());
    }
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: Default::default(),
            mechanism: "AMQPLAIN".into(),
            response: response.into(),
            locale: "en_US".into(),
        })),
    )
    .await;
    assert!(matches!(
        raw.expect_method().await,
        AMQPClass::Connection(connection::AMQPMethod::Tune(_))
    ));
}

#[tokio::test]
async fn wrong_password_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let url = format!("amqp://guest:wrong@127.0.0.1:{}/%2f", broker.port);
    let err = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect_err("login must fail");
    let (code, text) = amqp_error(&err);
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    let url = format!("amqp://nobody:guest@127.0.0.1:{}/%2f", broker.port);
    let err = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect_err("unknown user");
    assert_eq!(amqp_error(&err).0, 403);
    broker.assert_healthy().await;
}

#[tokio::test]
async fn unknown_vhost_is_530() {
    let broker = TestBroker::start().await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/nowhere", broker.port);
    let err = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect_err("vhost must not exist");
    assert_eq!(
        amqp_error(&err),
        (530, "NOT_ALLOWED - vhost nowhere not found".to_string())
    );
    broker.assert_healthy().await;
}

#[tokio::test]
async fn guest_is_refused_from_non_loopback_addresses() {
    // Bind on all interfaces and connect through a non-loopback local
    // address, if the machine has one.
    let Some(addr) = non_loopback_address() else {
        eprintln!("no non-loopback address on this machine; nothing to check");
        return;
    };
    let broker = TestBroker::start_with(|c| c.amqp.bind = "0.0.0.0".into()).await;
    let url = format!("amqp://guest:guest@{addr}:{}/%2f", broker.port);
    let err = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect_err("guest must be loopback-only");
    assert_eq!(amqp_error(&err).0, 403);
}

fn non_loopback_address() -> Option<std::net::IpAddr> {
    // The address the kernel would use to reach an outside host; no packet is sent.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn channels_open_close_and_channel_max_is_enforced() {
    let broker = TestBroker::start_with(|c| c.amqp.channel_max = 3).await;
    // channel-max is the highest channel number allowed: 1..=3 open, 4 and
    // 65000 are refused with 530 (a connection error).
    for refused in [4, 65000] {
        let mut raw = RawClient::open(broker.port).await;
        for id in [1, 2, 3] {
            raw.open_channel(id).await;
        }
        raw.send_method(
            refused,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        let (code, text, class, method) = raw.expect_connection_close().await;
        assert_eq!(code, 530);
        assert_eq!(
            text,
            format!(
                "NOT_ALLOWED - channel number {refused} is above the negotiated channel_max (3)"
            )
        );
        assert_eq!((class, method), (20, 10));
    }
    broker.assert_healthy().await;
}

#[tokio::test]
async fn second_channel_open_is_504() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::open(broker.port).await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    let (code, text, ..) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (504, "CHANNEL_ERROR - second 'channel.open' seen")
    );
}

#[tokio::test]
async fn client_close_gets_close_ok() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::open(broker.port).await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    assert!(matches!(
        raw.expect_method().await,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
    ));
    // The broker waits for the client to hang up (it may still be
    // writing; tests/it/protocol_races.rs), then closes its side.
    tokio::io::AsyncWriteExt::shutdown(&mut raw.stream)
        .await
        .unwrap();
    assert!(
        raw.read_frame().await.is_none(),
        "socket should close after close-ok and the client's hang-up"
    );
}

#[tokio::test]
async fn server_sends_heartbeats_and_drops_silent_clients() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.port).await;
    raw.send_raw(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method().await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: Default::default(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        })),
    )
    .await;
    raw.expect_method().await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 10,
            frame_max: 131072,
            heartbeat: 1,
        })),
    )
    .await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    )
    .await;
    raw.expect_method().await; // open-ok
    let started = std::time::Instant::now();
    let mut heartbeats = 0;
    // We stay silent: heartbeats arrive, then the server hangs up.
    while let Some(frame) = raw.read_frame().await {
        if let Frame::Heartbeat { channel: 0 } = frame {
            heartbeats += 1;
        }
    }
    assert!(heartbeats >= 2, "got {heartbeats} heartbeats");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
}

#[tokio::test]
async fn idle_socket_is_closed_after_handshake_timeout() {
    let broker = TestBroker::start_with(|c| c.amqp.handshake_timeout_secs = 1).await;
    let mut raw = RawClient::connect(broker.port).await;
    let closed = raw.read_to_close().await;
    assert!(closed.is_empty());
    broker.assert_healthy().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_connections_with_320() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::default();
    config.amqp.bind = "127.0.0.1".into();
    config.amqp.port = 0;
    config.storage.data_dir = dir.path().to_path_buf();
    config.management.port = 0;
    config.prometheus.port = 0;
    let server = broker::Server::bind(config).await.unwrap();
    let port = server.local_addr().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let mut raw = RawClient::open(port).await;
    stop.send(()).unwrap();
    let (code, text, ..) = raw.expect_connection_close().await;
    assert_eq!(code, 320);
    assert_eq!(
        text,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    );
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
    .await;
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("server stops")
        .unwrap();
}

#[tokio::test]
async fn the_server_serves_the_management_api_and_metrics() {
    // Management and Prometheus are enabled by default (TestBroker only
    // moves them to free ports of 127.0.0.1).
    let broker = TestBroker::start().await;
    let api = broker.mgmt_addr();
    let metrics = broker.metrics_addr();
    let http = reqwest::Client::new();
    let overview = http
        .get(format!("http://{api}/api/overview"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status(), 200);
    let scrape = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.text().await.unwrap().contains("rabbitmq_queues"));
}

#[tokio::test]
async fn the_binary_reads_a_config_file_and_env_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (file_port, env_port) = (free_port(), free_port());
    let config = dir.path().join("custom.toml");
    std::fs::write(
        &config,
        format!(
            "[amqp]\nbind = \"127.0.0.1\"\nport = {file_port}\n[storage]\ndata_dir = \"{}\"\n[management]\nenabled = false\n[prometheus]\nenabled = false\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let reachable = |port: u16| async move {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    };
    // The file alone.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
        .arg("--config")
        .arg(&config)
        .spawn()
        .unwrap();
    let ok = reachable(file_port).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "broker did not listen on the port from --config");
    // An environment variable wins over the file.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
        .arg("--config")
        .arg(&config)
        .env("BROKER__AMQP__PORT", env_port.to_string())
        .spawn()
        .unwrap();
    let ok = reachable(env_port).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "BROKER__AMQP__PORT did not override the file");
}
