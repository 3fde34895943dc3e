//! The management API over HTTPS (`[management.tls]`): a rustls client
//! with a test CA made here by rcgen, client certificate verification, a
//! plain-HTTP or untrusting client refused without harm to the listener,
//! unreadable certificate files stopping the start, and the `broker user`
//! CLI reaching a running broker over HTTPS.

use crate::common::TestBroker;
use crate::pki::{make_pki, Pki};
use rcgen::DnType;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

/// A broker whose management API speaks HTTPS.
async fn start(pki: &Pki, verify_peer: bool) -> TestBroker {
    TestBroker::start_with(|config| {
        config.prometheus.enabled = false;
        let tls = &mut config.management.tls;
        tls.enabled = true;
        tls.cert_file = pki.cert_file.clone();
        tls.key_file = pki.key_file.clone();
        tls.ca_file = Some(pki.ca_file.clone());
        tls.verify_peer = verify_peer;
        tls.fail_if_no_peer_cert = verify_peer;
    })
    .await
}

/// A TLS client config trusting `ca_file` (none: trusting nothing), with
/// the test client certificate if asked.
fn client_config(pki: &Pki, trust: bool, with_client_cert: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if trust {
        for cert in CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = if with_client_cert {
        let certs = CertificateDer::pem_slice_iter(pki.client_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes()).unwrap();
        builder.with_client_auth_cert(certs, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// GET /api/overview as guest over HTTPS (HTTP/1.1, one request per
/// connection): the status and JSON body, or the TLS/IO error.
async fn overview(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<(u16, Value)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    tls.write_all(
        b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\n\
          Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Whether the request was answered 200.
fn answered(result: &std::io::Result<(u16, Value)>) -> bool {
    matches!(result, Ok((200, _)))
}

#[tokio::test]
async fn the_management_api_answers_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(
        dir.path(),
        "management test CA",
        &[(DnType::CommonName, "client")],
    );
    let broker = start(&pki, false).await;
    let addr = broker.mgmt_addr();
    let client = client_config(&pki, true, false);
    let (status, body) = overview(&client, addr).await.expect("overview over HTTPS");
    assert_eq!(status, 200, "{body}");
    assert!(body["rabbitmq_version"].is_string(), "{body}");

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        plain.read_to_end(&mut reply),
    )
    .await;
    assert!(
        !reply.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    // A client that does not trust the certificate gets nothing...
    assert!(!answered(
        &overview(&client_config(&pki, false, false), addr).await
    ));
    // ...and a socket that never finishes its handshake holds up no one.
    let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(answered(&overview(&client, addr).await), "still served");
}

#[tokio::test]
async fn client_certificates_are_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(
        dir.path(),
        "management test CA",
        &[(DnType::CommonName, "client")],
    );
    let broker = start(&pki, true).await;
    let addr = broker.mgmt_addr();
    assert!(
        !answered(&overview(&client_config(&pki, true, false), addr).await),
        "no client certificate must be refused"
    );
    assert!(
        answered(&overview(&client_config(&pki, true, true), addr).await),
        "a client certificate signed by the CA is accepted"
    );
}

#[tokio::test]
async fn unreadable_certificate_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
        .current_dir(dir.path())
        .env("BROKER__AMQP__BIND", "127.0.0.1")
        .env("BROKER__AMQP__PORT", "0")
        .env("BROKER__STORAGE__DATA_DIR", dir.path().join("data"))
        .env("BROKER__MANAGEMENT__PORT", "0")
        .env("BROKER__PROMETHEUS__PORT", "0")
        .env("BROKER__MANAGEMENT__TLS__ENABLED", "true")
        .env(
            "BROKER__MANAGEMENT__TLS__CERT_FILE",
            dir.path().join("missing.pem"),
        )
        .env(
            "BROKER__MANAGEMENT__TLS__KEY_FILE",
            dir.path().join("missing.key"),
        )
        .output()
        .expect("run broker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("management.tls.cert_file"), "{stderr}");
}

#[tokio::test]
async fn the_user_cli_reaches_a_running_broker_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(
        dir.path(),
        "management test CA",
        &[(DnType::CommonName, "client")],
    );
    let data = dir.path().join("data");
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    };
    let (amqp_port, http_port) = (free_port(), free_port());
    let env = |command: &mut std::process::Command| {
        command
            .current_dir(dir.path())
            .env("BROKER__AMQP__BIND", "127.0.0.1")
            .env("BROKER__AMQP__PORT", amqp_port.to_string())
            .env("BROKER__STORAGE__DATA_DIR", &data)
            .env("BROKER__MANAGEMENT__BIND", "127.0.0.1")
            .env("BROKER__MANAGEMENT__PORT", http_port.to_string())
            .env("BROKER__PROMETHEUS__PORT", "0")
            .env("BROKER__MANAGEMENT__TLS__ENABLED", "true")
            .env("BROKER__MANAGEMENT__TLS__CERT_FILE", &pki.cert_file)
            .env("BROKER__MANAGEMENT__TLS__KEY_FILE", &pki.key_file)
            .env("BROKER__MANAGEMENT__TLS__CA_FILE", &pki.ca_file)
            .env("RUST_LOG", "warn");
    };
    let mut broker = std::process::Command::new(env!("CARGO_BIN_EXE_broker"));
    env(&mut broker);
    let mut child = broker
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start broker");
    let client = client_config(&pki, true, false);
    let addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let mut up = false;
    for _ in 0..200 {
        if answered(&overview(&client, addr).await) {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let run_cli = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_broker"));
        env(&mut command);
        command.args(args).output().expect("run cli")
    };
    let added = if up {
        Some(run_cli(&[
            "user",
            "add",
            "tess",
            "pw",
            "--tags",
            "monitoring",
        ]))
    } else {
        None
    };
    let listed = up.then(|| run_cli(&["user", "list"]));
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "broker did not serve HTTPS");
    let (added, listed) = (added.unwrap(), listed.unwrap());
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(added.status.success(), "{stderr}");
    assert!(stderr.contains("https://127.0.0.1"), "{stderr}");
    let users = String::from_utf8_lossy(&listed.stdout);
    assert!(users.contains("tess\t[monitoring]"), "{users}");
}
