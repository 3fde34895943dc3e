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
/// PASSWORD.
fn parse_amqplain(response: &[u8]) -> Option<(String, String)> {
    let mut framed = (response.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(response);
    let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
    let get = |key: &str| {
        table
            .inner()
            .get(key)
            .and_then(crate::broker::arguments::as_string)
    };
    Some((get("LOGIN")?, get("PASSWORD")?))
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
}
