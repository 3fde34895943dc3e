//! TLS acceptors: AMQPS from `[tls]`, and HTTPS for the management API
//! and Prometheus from `[management.tls]` / `[prometheus.tls]`.
//!
//! Certificates and keys are read from PEM files at start; a bad file is a
//! start-up error, not a connection error. The TLS handshake itself runs in
//! the connection's own task under a timeout, so a client that stalls or
//! sends garbage only ever costs its own socket.

use crate::config::{Config, HttpsConfig, TlsConfig};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

/// What an acceptor is built from, whichever section it comes from.
pub struct CertificateSettings<'a> {
    /// The configuration section, for error messages (`tls`, `management.tls`).
    pub section: &'a str,
    pub cert_file: &'a Path,
    pub key_file: &'a Path,
    pub ca_file: Option<&'a Path>,
    pub verify_peer: bool,
    pub fail_if_no_peer_cert: bool,
    /// ALPN protocols offered (HTTP listeners: `http/1.1`).
    pub alpn: &'a [&'a [u8]],
}

impl TlsConfig {
    pub fn certificates(&self) -> CertificateSettings<'_> {
        CertificateSettings {
            section: "tls",
            cert_file: &self.cert_file,
            key_file: &self.key_file,
            ca_file: self.ca_file.as_deref(),
            verify_peer: self.verify_peer,
            fail_if_no_peer_cert: self.fail_if_no_peer_cert,
            alpn: &[],
        }
    }
}

impl HttpsConfig {
    /// `section` names the table in messages (`management.tls`).
    pub fn certificates<'a>(&'a self, section: &'a str) -> CertificateSettings<'a> {
        CertificateSettings {
            section,
            cert_file: &self.cert_file,
            key_file: &self.key_file,
            ca_file: self.ca_file.as_deref(),
            verify_peer: self.verify_peer,
            fail_if_no_peer_cert: self.fail_if_no_peer_cert,
            alpn: &[b"http/1.1"],
        }
    }
}

impl Config {
    /// Unreadable `[management.tls]` files are a start-up error, as those
    /// of `[tls]` are, rather than an API that silently never listens.
    /// (Checked by the server only: the user CLI needs no key.)
    pub fn check_https(&self) -> anyhow::Result<()> {
        let tls = &self.management.tls;
        if self.management.enabled && tls.enabled {
            build_acceptor(&tls.certificates("management.tls"))?;
        }
        Ok(())
    }
}

pub(crate) fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {what} {}", path.display());
    }
    Ok(certs)
}

/// The AMQPS acceptor.
pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    build_acceptor(&config.certificates())
}

/// Builds an acceptor: server certificate and key, and, with
/// `verify_peer`, client certificates checked against `ca_file`.
pub fn build_acceptor(settings: &CertificateSettings<'_>) -> anyhow::Result<TlsAcceptor> {
    let section = settings.section;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(settings.cert_file, &format!("{section}.cert_file"))?;
    let key = PrivateKeyDer::from_pem_file(settings.key_file).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {section}.key_file {}: {e}",
            settings.key_file.display()
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?;
    let builder = if settings.verify_peer {
        let Some(ca_file) = settings.ca_file else {
            anyhow::bail!("{section}.verify_peer needs {section}.ca_file");
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca_file, &format!("{section}.ca_file"))? {
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("bad CA certificate in {}: {e}", ca_file.display()))?;
        }
        let mut verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if !settings.fail_if_no_peer_cert {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier
            .build()
            .map_err(|e| anyhow::anyhow!("TLS client verification setup: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut server_config = builder
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("TLS certificate and key do not fit: {e}"))?;
    server_config.alpn_protocols = settings.alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(server_config)))
}

/// An HTTPS listener for axum: TCP accepts on one task, each TLS handshake
/// on its own task under a timeout, finished streams handed to the server.
/// A client that connects and never completes the handshake holds only its
/// own socket, not the listener.
pub struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

/// How long an HTTPS client has for its TLS handshake.
const HTTPS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, incoming) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::error!("HTTPS accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(HTTPS_HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "HTTPS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            incoming,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
