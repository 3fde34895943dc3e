//! AMQPS: the TLS acceptor built from `[tls]` in the configuration.
//!
//! Certificates and keys are read from PEM files at start; a bad file is a
//! start-up error, not a connection error. The TLS handshake itself runs in
//! the connection's own task under the handshake timeout, so a client that
//! stalls or sends garbage only ever costs its own socket.

use crate::config::TlsConfig;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {what} {}", path.display());
    }
    Ok(certs)
}

/// Builds the acceptor: server certificate and key, and, with
/// `verify_peer`, client certificates checked against `ca_file`.
pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&config.cert_file, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| {
        anyhow::anyhow!(
            "cannot read tls.key_file {}: {e}",
            config.key_file.display()
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?;
    let builder = if config.verify_peer {
        let Some(ca_file) = &config.ca_file else {
            anyhow::bail!("tls.verify_peer needs tls.ca_file");
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca_file, "tls.ca_file")? {
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("bad CA certificate in {}: {e}", ca_file.display()))?;
        }
        let mut verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if !config.fail_if_no_peer_cert {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier
            .build()
            .map_err(|e| anyhow::anyhow!("TLS client verification setup: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let server_config = builder
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("TLS certificate and key do not fit: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(server_config)))
}
