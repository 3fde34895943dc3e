//! What management shows of an AMQPS connection's TLS session, in
//! RabbitMQ's spelling: `ssl_cipher` `aes_256_gcm`, `ssl_key_exchange`
//! `ecdhe_rsa` (`any` under TLS 1.3), `ssl_hash` `sha384`, and the client
//! certificate's subject and issuer as RabbitMQ formats them
//! (`CN=client,O=Example` — the certificate's order reversed, as RFC 4514)
//! and its validity (`2024-01-01T00:00:00Z - 2025-01-01T00:00:00Z`).
//!
//! The certificate is read with a small DER reader: only the fields above
//! are needed, and a certificate it cannot read shows as null.

/// (key exchange, cipher, hash) from a rustls suite name such as
/// `TLS13_AES_256_GCM_SHA384` or `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`.
pub fn suite_parts(suite: &str) -> Option<(String, String, String)> {
    let (kex, rest) = match suite.strip_prefix("TLS13_") {
        Some(rest) => ("any".to_string(), rest),
        None => {
            let rest = suite.strip_prefix("TLS_")?;
            let (kex, rest) = rest.split_once("_WITH_")?;
            (kex.to_lowercase(), rest)
        }
    };
    let (cipher, hash) = rest.rsplit_once('_')?;
    Some((kex, cipher.to_lowercase(), hash.to_lowercase()))
}

/// (subject, issuer, validity) of a DER certificate.
pub fn describe(der: &[u8]) -> Option<(String, String, String)> {
    let (_, certificate, _) = tlv(der)?;
    let (_, tbs, _) = tlv(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    let (_, _serial, after) = tlv(rest)?;
    let (_, _signature, after) = tlv(after)?;
    let (_, issuer, after) = tlv(after)?;
    let (_, validity, after) = tlv(after)?;
    let (_, subject, _) = tlv(after)?;
    let (t1, not_before, after) = tlv(validity)?;
    let (t2, not_after, _) = tlv(after)?;
    let validity = format!("{} - {}", time(t1, not_before)?, time(t2, not_after)?);
    Some((name(subject)?, name(issuer)?, validity))
}

/// One DER element: (tag, contents, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A Name (SEQUENCE of SETs of type-and-value) as `CN=a,O=b`, last RDN first.
fn name(mut seq: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while !seq.is_empty() {
        let (_, set, after) = tlv(seq)?;
        seq = after;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, pair, after) = tlv(attrs)?;
            attrs = after;
            let (_, oid, after) = tlv(pair)?;
            let (_, value, _) = tlv(after)?;
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x06] => "C".to_string(),
                [0x55, 0x04, 0x07] => "L".to_string(),
                [0x55, 0x04, 0x08] => "ST".to_string(),
                [0x55, 0x04, 0x0a] => "O".to_string(),
                [0x55, 0x04, 0x0b] => "OU".to_string(),
                other => oid_text(other),
            };
            parts.push(format!("{key}={}", String::from_utf8_lossy(value)));
        }
    }
    parts.reverse();
    Some(parts.join(","))
}

fn oid_text(oid: &[u8]) -> String {
    let mut out = Vec::new();
    if let Some(first) = oid.first() {
        out.push((first / 40) as u64);
        out.push((first % 40) as u64);
    }
    let mut n = 0u64;
    for b in oid.iter().skip(1) {
        n = (n << 7) | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            out.push(n);
            n = 0;
        }
    }
    out.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

/// UTCTime (`YYMMDDhhmmssZ`) or GeneralizedTime as `YYYY-MM-DDThh:mm:ssZ`.
fn time(tag: u8, value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let full = match tag {
        0x17 if text.len() >= 12 => {
            let yy: u32 = text.get(..2)?.parse().ok()?;
            let century = if yy >= 50 { "19" } else { "20" };
            format!("{century}{text}")
        }
        0x18 => text.to_string(),
        _ => return None,
    };
    let d = |a: usize, b: usize| full.get(a..b);
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        d(0, 4)?,
        d(4, 6)?,
        d(6, 8)?,
        d(8, 10)?,
        d(10, 12)?,
        d(12, 14)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_in_rabbitmq_spelling() {
        assert_eq!(
            suite_parts("TLS13_AES_256_GCM_SHA384"),
            Some(("any".into(), "aes_256_gcm".into(), "sha384".into()))
        );
        assert_eq!(
            suite_parts("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            Some(("ecdhe_rsa".into(), "aes_128_gcm".into(), "sha256".into()))
        );
        assert_eq!(suite_parts("bogus"), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(describe(&[]), None);
        assert_eq!(describe(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(describe(&[0x30, 0x03, 0x30, 0x01]), None);
    }
}
