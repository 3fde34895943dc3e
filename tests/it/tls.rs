//! AMQPS: lapin over TLS against a certificate made here by rcgen (a test
//! CA signing the server's and a client's certificate), client certificate
//! verification, and clients that talk plain AMQP or garbage to the TLS
//! port being closed without harm to anyone else.

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, DefaultConnectionBuilder};

use crate::common::TestBroker;
use crate::pki::{make_pki, Pki};
use rcgen::DnType;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A `TestBroker` with AMQPS, and the PKI its clients use.
struct TlsBroker {
    broker: TestBroker,
    pki: Pki,
    _pki_dir: tempfile::TempDir,
}

async fn start(adjust: impl FnOnce(&mut broker::Config)) -> TlsBroker {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(
        pki_dir.path(),
        "broker test CA",
        &[(DnType::CommonName, "client")],
    );
    let broker = TestBroker::start_with(|config| {
        config.management.enabled = false;
        config.prometheus.enabled = false;
        config.tls.enabled = true;
        config.tls.cert_file = pki.cert_file.clone();
        config.tls.key_file = pki.key_file.clone();
        config.tls.ca_file = Some(pki.ca_file.clone());
        adjust(config);
    })
    .await;
    TlsBroker {
        broker,
        pki,
        _pki_dir: pki_dir,
    }
}

impl TlsBroker {
    fn plain_port(&self) -> u16 {
        self.broker.port
    }

    fn tls_port(&self) -> u16 {
        self.broker.tls_port()
    }

    fn amqps_url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.tls_port())
    }

    fn trust_ca(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: None,
            cert_chain: Some(self.pki.ca_pem.clone()),
        }
    }

    fn with_client_cert(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: Some(OwnedIdentity::PKCS8 {
                pem: self.pki.client_cert_pem.clone().into_bytes(),
                key: self.pki.client_key_pem.clone().into_bytes(),
            }),
            cert_chain: Some(self.pki.ca_pem.clone()),
        }
    }

    async fn connect_tls(&self, tls: OwnedTLSConfig) -> Result<Connection, lapin::Error> {
        let builder = DefaultConnectionBuilder::new()?
            .with_uri_str(self.amqps_url())
            .with_properties(ConnectionProperties::default())
            .with_tls_config(tls);
        tokio::time::timeout(Duration::from_secs(10), builder.connect())
            .await
            .expect("TLS connect timed out")
    }
}

/// Publishes one message on `conn` and consumes it back.
async fn round_trip(conn: &Connection, queue: &str, body: &[u8]) {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.confirm_select(Default::default())
        .await
        .expect("confirm.select");
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("no delivery in time")
        .expect("consumer ended")
        .expect("delivery");
    assert_eq!(delivery.data, body);
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
}

/// Waits until the server closes `stream`; returns the bytes it sent first.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the broker did not close the socket");
    got
}

#[tokio::test]
async fn lapin_publishes_and_consumes_over_tls() {
    let broker = start(|_| {}).await;
    let conn = broker
        .connect_tls(broker.trust_ca())
        .await
        .expect("amqps connect");
    round_trip(&conn, "tls-q", b"over TLS").await;
    // A large body crosses many TLS records both ways.
    let big = vec![7u8; 1_000_000];
    round_trip(&conn, "tls-big", &big).await;
    conn.close(200, "bye".into()).await.expect("close");

    // The plain listener keeps working beside it.
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.plain_port());
    let plain = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("plain connect");
    round_trip(&plain, "plain-q", b"plain").await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let broker = start(|_| {}).await;
    // No CA given: the self-made certificate is not trusted by the client.
    let result = broker.connect_tls(OwnedTLSConfig::default()).await;
    assert!(result.is_err(), "an untrusted certificate was accepted");
    let conn = broker
        .connect_tls(broker.trust_ca())
        .await
        .expect("connect");
    round_trip(&conn, "q", b"still fine").await;
}

#[tokio::test]
async fn plain_amqp_on_the_tls_port_is_closed_and_others_keep_working() {
    let broker = start(|_| {}).await;
    let good = broker
        .connect_tls(broker.trust_ca())
        .await
        .expect("connect");

    // A plain AMQP client on the TLS port: the TLS handshake fails, the
    // socket is closed, and no AMQP is ever spoken on it.
    let mut plain = TcpStream::connect(("127.0.0.1", broker.tls_port()))
        .await
        .expect("tcp connect");
    plain
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .expect("write header");
    let answer = read_until_closed(&mut plain).await;
    assert!(
        !answer.starts_with(b"AMQP") && answer.len() < 64,
        "unexpected answer to plain AMQP on the TLS port: {answer:?}"
    );

    // Garbage, and a ClientHello-looking prefix followed by garbage.
    let mut garbage = TcpStream::connect(("127.0.0.1", broker.tls_port()))
        .await
        .expect("tcp connect");
    let _ = garbage.write_all(&[0xAB; 10_000]).await;
    read_until_closed(&mut garbage).await;
    let mut half = TcpStream::connect(("127.0.0.1", broker.tls_port()))
        .await
        .expect("tcp connect");
    let _ = half
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0xFF, 0xFF])
        .await;
    let _ = half.write_all(&[0u8; 64]).await;
    read_until_closed(&mut half).await;

    // The connection that was open keeps working, and new ones are served.
    round_trip(&good, "q1", b"after garbage").await;
    let again = broker
        .connect_tls(broker.trust_ca())
        .await
        .expect("connect");
    round_trip(&again, "q2", b"new connection").await;
}

#[tokio::test]
async fn a_silent_socket_on_the_tls_port_is_closed_after_the_handshake_timeout() {
    let broker = start(|c| c.amqp.handshake_timeout_secs = 1).await;
    let mut silent = TcpStream::connect(("127.0.0.1", broker.tls_port()))
        .await
        .expect("tcp connect");
    let started = std::time::Instant::now();
    read_until_closed(&mut silent).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    let conn = broker
        .connect_tls(broker.trust_ca())
        .await
        .expect("connect");
    round_trip(&conn, "q", b"ok").await;
}

#[tokio::test]
async fn verify_peer_requires_a_client_certificate_signed_by_the_ca() {
    let broker = start(|c| {
        c.tls.verify_peer = true;
        c.tls.fail_if_no_peer_cert = true;
    })
    .await;
    let without = broker.connect_tls(broker.trust_ca()).await;
    assert!(without.is_err(), "a client without certificate got in");
    let with = broker
        .connect_tls(broker.with_client_cert())
        .await
        .expect("connect with client certificate");
    round_trip(&with, "q", b"mutual TLS").await;
}

#[tokio::test]
async fn a_missing_certificate_file_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = broker::Config::default();
    config.amqp.bind = "127.0.0.1".into();
    config.amqp.port = 0;
    config.storage.data_dir = dir.path().join("data");
    config.management.enabled = false;
    config.prometheus.enabled = false;
    config.tls.enabled = true;
    config.tls.port = 0;
    config.tls.cert_file = dir.path().join("missing.pem");
    config.tls.key_file = dir.path().join("missing.key");
    let error = match broker::Server::bind(config).await {
        Ok(_) => panic!("started without a certificate"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("tls.cert_file"), "{error}");
}
