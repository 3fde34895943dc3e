//! A small blocking HTTP/1.1 client for the management API: one request per
//! connection (`Connection: close`), Basic auth, JSON bodies, optionally
//! over TLS. Enough for the CLI; no dependency on an HTTP client crate.

use base64::Engine;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

pub struct Client {
    pub host: String,
    pub port: u16,
    authorization: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Client {
    pub fn new(host: &str, port: u16, user: &str, password: &str) -> Client {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Client {
            host: host.to_string(),
            port,
            authorization: format!("Basic {credentials}"),
            tls: None,
        }
    }

    /// Speaks HTTPS, trusting the CA certificates in `ca_file`.
    pub fn with_tls(mut self, ca_file: &Path) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read CA file {}: {e}", ca_file.display()))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("bad CA certificate in {}: {e}", ca_file.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.tls = Some(Arc::new(config));
        Ok(self)
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            self.port,
            self.authorization,
            body.len()
        );
        let unreachable = |e: std::io::Error| {
            format!(
                "cannot reach the management API at {}://{}:{}: {e}",
                self.scheme(),
                self.host,
                self.port
            )
        };
        let stream = TcpStream::connect((self.host.as_str(), self.port)).map_err(unreachable)?;
        let timeout = Some(Duration::from_secs(30));
        stream.set_read_timeout(timeout).map_err(unreachable)?;
        stream.set_write_timeout(timeout).map_err(unreachable)?;
        let raw = match &self.tls {
            None => exchange(stream, request.as_bytes()),
            Some(config) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("bad host name {}: {e}", self.host))?;
                let connection = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| format!("TLS setup: {e}"))?;
                exchange(
                    rustls::StreamOwned::new(connection, stream),
                    request.as_bytes(),
                )
            }
        }
        .map_err(unreachable)?;
        parse(&raw)
    }
}

fn exchange(mut stream: impl Read + Write, request: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        // A TLS peer that closes without close_notify after a complete
        // response: the response is still whole.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e),
    }
}

fn parse(raw: &[u8]) -> Result<Response, String> {
    let bad = || "malformed HTTP response from the management API".to_string();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad())?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(bad)?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body).ok_or_else(bad)?;
    }
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
