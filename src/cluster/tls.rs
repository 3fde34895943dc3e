//! TLS for node-to-node traffic (`cluster.tls`): every node presents the
//! same kind of certificate as server (to the nodes that dial it) and as
//! client (to the nodes it dials), and checks its peers' against one CA.
//!
//! TLS only adds confidentiality and keeps outsiders off the wire: the
//! HMAC handshake over the shared secret still runs inside the TLS stream
//! and still decides who is a member.
//!
//! Host names are not checked: node addresses are often IP addresses, or
//! names that differ between networks, and a certificate need not list
//! them. The CA proves that the certificate is one of ours; the secret
//! proves that the peer is a member of this cluster.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The node's TLS setup: how it accepts and how it dials.
#[derive(Clone)]
pub struct NodeTls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

impl NodeTls {
    /// Loads the node's certificate chain and key (PEM) and the CA (PEM)
    /// that every node's certificate is signed by. Errors name the files as
    /// the `[tls]` keys they come from.
    pub fn load(cert_file: &Path, key_file: &Path, ca_file: &Path) -> anyhow::Result<NodeTls> {
        // Server side: the AMQPS loader, requiring a client certificate
        // signed by the CA.
        let acceptor = crate::tls::build_acceptor(&crate::tls::CertificateSettings {
            section: "tls",
            cert_file,
            key_file,
            ca_file: Some(ca_file),
            verify_peer: true,
            fail_if_no_peer_cert: true,
            alpn: &[],
        })?;
        // Client side: the same files (already checked just above).
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = crate::tls::read_certs(cert_file, "tls.cert_file")?;
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| anyhow::anyhow!("cannot read tls.key_file {}: {e}", key_file.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in crate::tls::read_certs(ca_file, "tls.ca_file")? {
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("bad CA certificate in {}: {e}", ca_file.display()))?;
        }
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| anyhow::anyhow!("cluster TLS: server verification setup: {e}"))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("cluster TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyNameVerifier { chain }))
            .with_client_auth_cert(certs, key)
            .map_err(|e| anyhow::anyhow!("TLS certificate and key do not fit: {e}"))?;
        Ok(NodeTls {
            acceptor,
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

/// The name a dialer gives for `addr` ("host:port"): its host, or the
/// unspecified address when that is no valid name. Only sent as SNI (for
/// a DNS name); it is not checked against the certificate.
pub(crate) fn server_name(addr: &str) -> ServerName<'static> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
        ServerName::IpAddress(std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED).into())
    })
}

/// WebPKI server verification (chain to the CA, validity, key usage),
/// without the host-name check (see the module comment). The chain is
/// verified before the name, so a name error means the chain was good.
#[derive(Debug)]
struct AnyNameVerifier {
    chain: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
