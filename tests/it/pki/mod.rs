//! A test PKI made with rcgen: a CA signing a certificate for the broker
//! (localhost, 127.0.0.1) and one for a client, written as PEM files.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::PathBuf;

/// A test CA and the PEM files it signed.
pub struct Pki {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Makes the PKI in `dir`: the CA's common name is `ca_name`, the client
/// certificate's subject is `client_subject` (in order).
pub fn make_pki(dir: &std::path::Path, ca_name: &str, client_subject: &[(DnType, &str)]) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("server cert");

    let client_key = KeyPair::generate().expect("client key");
    let mut client_params =
        CertificateParams::new(vec!["client".to_string()]).expect("client params");
    for (kind, value) in client_subject {
        client_params.distinguished_name.push(kind.clone(), *value);
    }
    let client_cert = client_params
        .signed_by(&client_key, &issuer)
        .expect("client cert");

    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    Pki {
        ca_pem: ca_cert.pem(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
        ca_file: write("ca.pem", &ca_cert.pem()),
        cert_file: write("server.pem", &server_cert.pem()),
        key_file: write("server.key", &server_key.serialize_pem()),
    }
}
