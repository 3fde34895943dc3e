//! `/api/connections` for AMQPS clients: `ssl: true` with the session's
//! protocol and cipher in RabbitMQ's spelling, and the client
//! certificate's subject, issuer and validity; plain connections show
//! `ssl: false` and nulls.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};

use crate::common::TestBroker;
use crate::pki::{make_pki, Pki};
use rcgen::DnType;
use serde_json::Value;
use std::time::Duration;

/// A broker with AMQPS (client certificates verified) and its management
/// API, and the PKI its clients use.
struct Setup {
    broker: TestBroker,
    pki: Pki,
    _pki_dir: tempfile::TempDir,
}

async fn start() -> Setup {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(
        pki_dir.path(),
        "stats test CA",
        &[
            (DnType::OrganizationName, "Example"),
            (DnType::CommonName, "alice"),
        ],
    );
    let broker = TestBroker::start_with(|config| {
        config.prometheus.enabled = false;
        config.tls.enabled = true;
        config.tls.cert_file = pki.cert_file.clone();
        config.tls.key_file = pki.key_file.clone();
        config.tls.ca_file = Some(pki.ca_file.clone());
        config.tls.verify_peer = true;
    })
    .await;
    Setup {
        broker,
        pki,
        _pki_dir: pki_dir,
    }
}

async fn connect(s: &Setup, name: &str, client_cert: bool) -> Connection {
    let tls = OwnedTLSConfig {
        identity: client_cert.then(|| OwnedIdentity::PKCS8 {
            pem: s.pki.client_cert_pem.clone().into_bytes(),
            key: s.pki.client_key_pem.clone().into_bytes(),
        }),
        cert_chain: Some(s.pki.ca_pem.clone()),
    };
    let builder = DefaultConnectionBuilder::new()
        .expect("builder")
        .with_uri_str(format!(
            "amqps://guest:guest@127.0.0.1:{}/%2f",
            s.broker.tls_port()
        ))
        .with_properties(ConnectionProperties::default().with_connection_name(name.into()))
        .with_tls_config(tls);
    tokio::time::timeout(Duration::from_secs(10), builder.connect())
        .await
        .expect("TLS connect timed out")
        .expect("TLS connect")
}

async fn connection(s: &Setup, name: &str) -> Value {
    let http = reqwest::Client::new();
    for _ in 0..200 {
        let all: Value = http
            .get(format!("{}/connections", s.broker.mgmt_url()))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .expect("GET /connections")
            .json()
            .await
            .expect("JSON");
        if let Some(c) = all
            .as_array()
            .and_then(|a| a.iter().find(|c| c["user_provided_name"] == name))
        {
            return c.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("connection {name} not listed");
}

#[tokio::test]
async fn tls_connections_report_their_session_and_certificate() {
    let s = start().await;
    let _with_cert = connect(&s, "with-cert", true).await;
    let _without_cert = connect(&s, "no-cert", false).await;
    let _plain = Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", s.broker.port),
        ConnectionProperties::default().with_connection_name("plain".into()),
    )
    .await
    .expect("plain connect");

    let c = connection(&s, "with-cert").await;
    assert_eq!(c["ssl"], true, "{c}");
    assert!(
        matches!(c["ssl_protocol"].as_str(), Some("tlsv1.3" | "tlsv1.2")),
        "{c}"
    );
    let cipher = c["ssl_cipher"].as_str().expect("ssl_cipher");
    assert!(
        cipher.contains("gcm") || cipher.contains("chacha20"),
        "{cipher}"
    );
    assert!(c["ssl_key_exchange"].is_string(), "{c}");
    assert!(
        c["ssl_hash"].as_str().is_some_and(|h| h.starts_with("sha")),
        "{c}"
    );
    // The certificate holds CN then O; RabbitMQ shows the RDNs last first.
    assert_eq!(c["peer_cert_subject"], "O=Example,CN=alice", "{c}");
    assert_eq!(c["peer_cert_issuer"], "CN=stats test CA", "{c}");
    let validity = c["peer_cert_validity"].as_str().expect("validity");
    let (from, to) = validity.split_once(" - ").expect("two dates");
    assert!(
        from.ends_with('Z') && to.ends_with('Z') && from < to,
        "{validity}"
    );

    let c = connection(&s, "no-cert").await;
    assert_eq!(c["ssl"], true);
    assert!(c["ssl_cipher"].is_string());
    assert_eq!(c["peer_cert_subject"], Value::Null);

    let c = connection(&s, "plain").await;
    assert_eq!(c["ssl"], false);
    for key in [
        "ssl_protocol",
        "ssl_key_exchange",
        "ssl_cipher",
        "ssl_hash",
        "peer_cert_subject",
        "peer_cert_issuer",
        "peer_cert_validity",
    ] {
        assert_eq!(c[key], Value::Null, "{key}");
    }
}
