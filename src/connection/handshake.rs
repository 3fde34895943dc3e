//! Connection setup: protocol header, start/start-ok (SASL PLAIN and
//! AMQPLAIN), tune/tune-ok, open/open-ok.

use super::reader::{ReadError, Reader};
use crate::broker::Broker;
use crate::protocol::error::code;
use crate::protocol::{AMQPClass, AMQPValue, AmqpError, FieldTable, Frame, LongString};
use amq_protocol::protocol::connection;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the handshake settled.
pub struct Negotiated {
    pub user: String,
    pub vhost: String,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub cancel_notify: bool,
    /// The client understands connection.blocked/unblocked.
    pub blocked_notify: bool,
    pub client_properties: FieldTable,
    /// The connection's slot under the connection limits.
    pub admitted: super::limits::Admitted,
}

pub enum HandshakeError {
    /// Close the socket with no close frame (e.g. bad header, peer gone).
    Drop,
    /// Send connection.close with this error, then close.
    Close(AmqpError),
}

impl From<ReadError> for HandshakeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Protocol(err) => HandshakeError::Close(err),
            ReadError::Closed | ReadError::Timeout => HandshakeError::Drop,
        }
    }
}

pub fn server_properties(broker: &Broker) -> FieldTable {
    let mut capabilities = FieldTable::default();
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
        capabilities.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    props.insert("product".into(), text("Broker"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert("cluster_name".into(), text(&broker.config.cluster_name()));
    props.insert("copyright".into(), text("The Broker authors"));
    props.insert(
        "information".into(),
        text("An AMQP 0-9-1 broker compatible with RabbitMQ clients"),
    );
    props
}

fn capability(client_properties: &FieldTable, name: &str) -> bool {
    match client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

/// Reads the next method on channel 0, skipping heartbeats.
async fn next_method(reader: &mut Reader) -> Result<AMQPClass, HandshakeError> {
    loop {
        match reader.frame().await? {
            Frame::Heartbeat { .. } => continue,
            Frame::Method { channel: 0, method } => return Ok(*method),
            _ => {
                return Err(HandshakeError::Close(AmqpError::unexpected_frame(
                    "expected a connection method during the handshake",
                )))
            }
        }
    }
}

pub async fn negotiate(
    reader: &mut Reader,
    output: &super::output::Output,
    broker: &Arc<Broker>,
    limits: &Arc<super::limits::ConnectionLimits>,
    peer: SocketAddr,
) -> Result<Negotiated, HandshakeError> {
    let config = &broker.config.amqp;
    output.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(broker),
            mechanisms: LongString::from("PLAIN AMQPLAIN"),
            locales: LongString::from("en_US"),
        })),
    );

    let AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)) =
        next_method(reader).await?
    else {
        return Err(HandshakeError::Close(
            AmqpError::command_invalid("expected connection.start-ok").on(10, 11),
        ));
    };
    let failure_close = capability(&start_ok.client_properties, "authentication_failure_close");
    let mechanism = start_ok.mechanism.as_str().to_string();
    let credentials = match mechanism.as_str() {
        "PLAIN" => parse_plain(start_ok.response.as_bytes()),
        "AMQPLAIN" => parse_amqplain(start_ok.response.as_bytes()),
        other => {
            return Err(HandshakeError::Close(
                AmqpError::connection(
                    code::ACCESS_REFUSED,
                    format!(
                        "unsupported authentication mechanism '{other}'; supported: PLAIN AMQPLAIN"
                    ),
                )
                .on(10, 11),
            ))
        }
    };
    let refused = || {
        if failure_close {
            HandshakeError::Close(AmqpError::connection(
                code::ACCESS_REFUSED,
                format!("Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."),
            ))
        } else {
            HandshakeError::Drop
        }
    };
    let Some((user, password)) = credentials else {
        tracing::warn!(%peer, "login refused: malformed {mechanism} response");
        return Err(refused());
    };
    let loopback = peer.ip().to_canonical().is_loopback();
    if !loopback && broker.config.auth.loopback_users.contains(&user) {
        tracing::warn!(%peer, user, "login refused: user '{user}' can only connect via localhost");
        return Err(refused());
    }
    if broker.users.read().authenticate(&user, &password).is_none() {
        tracing::warn!(%peer, user, "login refused: invalid credentials");
        return Err(refused());
    }

    output.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat,
        })),
    );
    let AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)) =
        next_method(reader).await?
    else {
        return Err(HandshakeError::Close(
            AmqpError::command_invalid("expected connection.tune-ok").on(10, 31),
        ));
    };
    let not_allowed = |field: &str, value: u32, bound: &str, limit: u32| {
        HandshakeError::Close(
            AmqpError::not_allowed(format!(
                "negotiated {field} = {value} is {bound} than the {} allowed value ({limit})",
                if bound == "higher" {
                    "maximum"
                } else {
                    "minimum"
                }
            ))
            .on(10, 31),
        )
    };
    let channel_max = match tune_ok.channel_max {
        0 => config.channel_max,
        c if c > config.channel_max => {
            return Err(not_allowed(
                "channel_max",
                c as u32,
                "higher",
                config.channel_max as u32,
            ))
        }
        c => c,
    };
    let frame_max = match tune_ok.frame_max {
        0 => config.frame_max,
        f if f > config.frame_max => {
            return Err(not_allowed("frame_max", f, "higher", config.frame_max))
        }
        f if f < crate::protocol::FRAME_MIN_SIZE => {
            return Err(not_allowed(
                "frame_max",
                f,
                "lower",
                crate::protocol::FRAME_MIN_SIZE,
            ))
        }
        f => f,
    };

    let AMQPClass::Connection(connection::AMQPMethod::Open(open)) = next_method(reader).await?
    else {
        return Err(HandshakeError::Close(
            AmqpError::command_invalid("expected connection.open").on(10, 40),
        ));
    };
    let vhost = open.virtual_host.to_string();
    if broker.vhost(&vhost).is_none() {
        return Err(HandshakeError::Close(
            AmqpError::not_allowed(format!("vhost {vhost} not found")).on(10, 40),
        ));
    }
    // As RabbitMQ: the vhost's and the user's connection limits are
    // checked before the user's access to the vhost.
    let admitted = limits
        .admit(&broker.config, &user, &vhost)
        .map_err(HandshakeError::Close)?;
    if broker.users.read().permission(&user, &vhost).is_none() {
        return Err(HandshakeError::Close(
            AmqpError::not_allowed(format!(
                "access to vhost '{vhost}' refused for user '{user}'"
            ))
            .on(10, 40),
        ));
    }
    output.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    );
    Ok(Negotiated {
        cancel_notify: capability(&start_ok.client_properties, "consumer_cancel_notify"),
        blocked_notify: capability(&start_ok.client_properties, "connection.blocked"),
        client_properties: start_ok.client_properties.clone(),
        user,
        vhost,
        channel_max,
        frame_max,
        heartbeat: tune_ok.heartbeat,
        admitted,
    })
}

/// PLAIN: `[authzid] \0 user \0 password`.
fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let password = String::from_utf8(parts.next()?.to_vec()).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((user, password))
}

/// AMQPLAIN: a field table without its length prefix, holding LOGIN and
/// PASSWORD as long strings. Walked here entry by entry instead of handed
/// to the general table parser, which recurses once per nested table: a
/// response of nothing but nested tables would exhaust the stack. Nested
/// values are skipped by their length, never descended into.
fn parse_amqplain(response: &[u8]) -> Option<(String, String)> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if input.len() < n {
            return None;
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Some(head)
    }
    fn long(input: &mut &[u8]) -> Option<usize> {
        let len = take(input, 4)?;
        Some(u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
    }
    let mut input = response;
    let (mut login, mut password) = (None, None);
    while !input.is_empty() {
        let key_len = *take(&mut input, 1)?.first()? as usize;
        let key = take(&mut input, key_len)?;
        let kind = *take(&mut input, 1)?.first()?;
        let size = match kind {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'S' | b'x' | b'A' | b'F' => long(&mut input)?,
            _ => return None,
        };
        let value = take(&mut input, size)?;
        if kind == b'S' {
            let text = || String::from_utf8_lossy(value).into_owned();
            match key {
                b"LOGIN" => login = Some(text()),
                b"PASSWORD" => password = Some(text()),
                _ => {}
            }
        }
    }
    Some((login?, password?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_response_is_split_on_nul() {
        assert_eq!(
            parse_plain(b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(parse_plain(b"guest"), None);
    }

    fn amqplain(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, kind, value) in entries {
            out.push(key.len() as u8);
            out.extend_from_slice(key.as_bytes());
            out.push(*kind);
            if matches!(kind, b'S' | b'F') {
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            }
            out.extend_from_slice(value);
        }
        out
    }

    #[test]
    fn amqplain_response_is_read_without_recursion() {
        let response = amqplain(&[
            ("LOGIN", b'S', b"guest"),
            ("n", b'I', &[0, 0, 0, 1]),
            ("PASSWORD", b'S', b"secret"),
        ]);
        assert_eq!(
            parse_amqplain(&response),
            Some(("guest".into(), "secret".into()))
        );
        // Deeply nested tables beside the credentials are skipped whole.
        let depth = 100_000u32;
        let mut nested = Vec::with_capacity(6 * depth as usize);
        for level in 1..=depth {
            nested.extend_from_slice(&[0u8, b'F']);
            nested.extend_from_slice(&(6 * (depth - level)).to_be_bytes());
        }
        let mut response = amqplain(&[("LOGIN", b'S', b"u"), ("PASSWORD", b'S', b"p")]);
        response.extend_from_slice(&amqplain(&[("deep", b'F', &nested)]));
        assert_eq!(parse_amqplain(&response), Some(("u".into(), "p".into())));
        // Truncated or unknown input is refused, not guessed at.
        assert_eq!(parse_amqplain(&response[..response.len() - 1]), None);
        assert_eq!(parse_amqplain(&amqplain(&[("LOGIN", b'?', b"")])), None);
        assert_eq!(parse_amqplain(&amqplain(&[("LOGIN", b'S', b"u")])), None);
    }
}
