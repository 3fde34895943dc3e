//! Queue `x-` arguments: parsed once at declare time, validated with
//! RabbitMQ's error texts (`invalid arg 'x-…' for queue … : reason`).

use super::QueueType;
use crate::broker::arguments::{as_int, as_string, type_name};
use crate::broker::policy::Policy;
use crate::protocol::{AMQPValue, AmqpError, FieldTable};

/// Ten years in milliseconds: RabbitMQ's upper bound for TTLs.
const MAX_TTL_MS: i128 = 315_360_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

#[derive(Clone, Debug, Default)]
pub struct QueueArguments {
    pub queue_type: QueueType,
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    pub delivery_limit: Option<u64>,
    /// `x-queue-type: stream`: the stream's retention limits.
    pub stream: Option<crate::store::stream_log::Retention>,
}

impl QueueArguments {
    /// Parses stored arguments. A quorum queue stored before quorum queues
    /// had their own rules (they were served as classic ones), with
    /// arguments the type refuses, is kept as a classic queue rather than
    /// left unrestored with its messages.
    pub fn parse_stored(args: &FieldTable, resource: &str) -> Result<Self, AmqpError> {
        match Self::parse(args, resource) {
            Err(e) => match super::quorum::as_classic(args) {
                Some(classic) => {
                    tracing::warn!(%resource, error = %e, "stored quorum queue has arguments quorum queues refuse; serving it as a classic queue");
                    Self::parse(&classic, resource)
                }
                None => Err(e),
            },
            parsed => parsed,
        }
    }

    /// Parses and validates; `resource` is `queue 'q' in vhost 'v'`.
    pub fn parse(args: &FieldTable, resource: &str) -> Result<Self, AmqpError> {
        let invalid = |arg: &str, reason: String| {
            AmqpError::precondition_failed(format!("invalid arg '{arg}' for {resource}: {reason}"))
        };
        let integer = |arg: &str, value: &AMQPValue| -> Result<i128, AmqpError> {
            as_int(value).ok_or_else(|| {
                invalid(
                    arg,
                    format!("\"expected integer, got {}\"", type_name(value)),
                )
            })
        };
        let non_negative = |arg: &str, value: &AMQPValue| -> Result<u64, AmqpError> {
            let n = integer(arg, value)?;
            if n < 0 {
                return Err(invalid(arg, format!("{{value_negative,{n}}}")));
            }
            Ok(n.min(u64::MAX as i128) as u64)
        };
        let ttl = |arg: &str, value: &AMQPValue, zero_allowed: bool| -> Result<u64, AmqpError> {
            let n = integer(arg, value)?;
            if n < 0 {
                return Err(invalid(arg, format!("{{value_negative,{n}}}")));
            }
            if n == 0 && !zero_allowed {
                return Err(invalid(arg, "{value_zero,0}".into()));
            }
            if n > MAX_TTL_MS {
                return Err(invalid(arg, format!("{{value_too_large,{n}}}")));
            }
            Ok(n as u64)
        };
        let string = |arg: &str, value: &AMQPValue| -> Result<String, AmqpError> {
            as_string(value)
                .ok_or_else(|| invalid(arg, format!("{{unacceptable_type,{}}}", type_name(value))))
        };

        // Each type parses its own arguments; a quorum queue then takes
        // the classic ones it does not refuse. An unknown type is refused
        // below, with the other classic arguments.
        let declared_type = args
            .inner()
            .get("x-queue-type")
            .and_then(as_string)
            .and_then(|name| QueueType::from_name(&name));
        let mut parsed = QueueArguments::default();
        match declared_type {
            Some(QueueType::Stream) => {
                return Ok(QueueArguments {
                    queue_type: QueueType::Stream,
                    stream: Some(super::stream::arguments::parse(args, resource)?),
                    ..QueueArguments::default()
                });
            }
            Some(QueueType::Quorum) => {
                parsed.queue_type = QueueType::Quorum;
                parsed.delivery_limit = super::quorum::parse_arguments(args, resource)?;
            }
            Some(QueueType::Classic) | None => {}
        }
        for (key, value) in args.inner() {
            let key = key.as_str();
            match key {
                // Parsed by the quorum type above (where -1 means no limit).
                "x-delivery-limit" if parsed.queue_type == QueueType::Quorum => {}
                "x-message-ttl" => parsed.message_ttl = Some(ttl(key, value, true)?),
                "x-expires" => parsed.expires = Some(ttl(key, value, false)?),
                "x-max-length" => parsed.max_length = Some(non_negative(key, value)?),
                "x-max-length-bytes" => parsed.max_length_bytes = Some(non_negative(key, value)?),
                "x-delivery-limit" => parsed.delivery_limit = Some(non_negative(key, value)?),
                "x-overflow" => {
                    parsed.overflow = match string(key, value)?.as_str() {
                        "drop-head" => Overflow::DropHead,
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        _ => return Err(invalid(key, "invalid_overflow".into())),
                    }
                }
                "x-max-priority" => {
                    let n = integer(key, value)?;
                    if n < 0 {
                        return Err(invalid(key, format!("{{value_negative,{n}}}")));
                    }
                    if n > 255 {
                        return Err(invalid(key, format!("{{max_value_exceeded,{n}}}")));
                    }
                    parsed.max_priority = Some(n as u8);
                }
                "x-dead-letter-exchange" => match as_string(value) {
                    Some(name) => parsed.dead_letter_exchange = Some(name),
                    None => {
                        return Err(AmqpError::precondition_failed(format!(
                            "invalid type '{}' for arg '{key}' in {resource}",
                            type_name(value)
                        )))
                    }
                },
                "x-dead-letter-routing-key" => {
                    parsed.dead_letter_routing_key = Some(string(key, value)?)
                }
                "x-single-active-consumer" => match value {
                    AMQPValue::Boolean(b) => parsed.single_active_consumer = *b,
                    other => {
                        return Err(invalid(
                            key,
                            format!("{{unacceptable_type,{}}}", type_name(other)),
                        ))
                    }
                },
                "x-queue-type" => match string(key, value)?.as_str() {
                    "classic" | "quorum" => {}
                    other => {
                        return Err(invalid(
                            key,
                            format!("\"unsupported queue type '{other}'\""),
                        ))
                    }
                },
                "x-queue-mode" => match string(key, value)?.as_str() {
                    "default" | "lazy" => {}
                    other => {
                        return Err(invalid(
                            key,
                            format!("\"unsupported queue mode '{other}'\""),
                        ))
                    }
                },
                "x-queue-version" => match integer(key, value)? {
                    1 | 2 => {}
                    other => {
                        return Err(invalid(
                            key,
                            format!("\"unsupported queue version '{other}'\""),
                        ))
                    }
                },
                _ => {}
            }
        }
        if parsed.dead_letter_routing_key.is_some() && parsed.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".into(),
            ));
        }
        Ok(parsed)
    }
}

impl QueueArguments {
    /// These (declared) arguments with `policy` applied: numeric limits
    /// take the lower of the two, other keys keep the declared value.
    pub fn with_policy(&self, declared: &FieldTable, policy: Option<&Policy>) -> QueueArguments {
        let mut out = self.clone();
        let Some(p) = policy else {
            return out;
        };
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        out.message_ttl = min(self.message_ttl, p.u64("message-ttl"));
        out.expires = min(self.expires, p.u64("expires"));
        out.max_length = min(self.max_length, p.u64("max-length"));
        out.max_length_bytes = min(self.max_length_bytes, p.u64("max-length-bytes"));
        out.delivery_limit = if self.queue_type == QueueType::Quorum
            && !declared.inner().contains_key("x-delivery-limit")
        {
            // The policy's limit replaces the type's default of 20.
            p.u64("delivery-limit").or(self.delivery_limit)
        } else {
            min(self.delivery_limit, p.u64("delivery-limit"))
        };
        if out.dead_letter_exchange.is_none() {
            out.dead_letter_exchange = p.string("dead-letter-exchange");
        }
        if out.dead_letter_routing_key.is_none() {
            out.dead_letter_routing_key = p.string("dead-letter-routing-key");
        }
        if !declared.inner().contains_key("x-overflow") {
            out.overflow = match p.string("overflow").as_deref() {
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => Overflow::DropHead,
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::LongString;

    fn parse(key: &str, value: AMQPValue) -> Result<QueueArguments, String> {
        let mut t = FieldTable::default();
        t.insert(key.into(), value);
        QueueArguments::parse(&t, "queue 'q' in vhost '/'").map_err(|e| e.text)
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    #[test]
    fn rabbitmq_texts_for_bad_values() {
        let pre = "PRECONDITION_FAILED - invalid arg";
        assert_eq!(
            parse("x-message-ttl", AMQPValue::LongInt(-1)).unwrap_err(),
            format!("{pre} 'x-message-ttl' for queue 'q' in vhost '/': {{value_negative,-1}}")
        );
        assert_eq!(
            parse("x-message-ttl", s("1000")).unwrap_err(),
            format!("{pre} 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got longstr\"")
        );
        assert_eq!(
            parse("x-expires", AMQPValue::LongInt(0)).unwrap_err(),
            format!("{pre} 'x-expires' for queue 'q' in vhost '/': {{value_zero,0}}")
        );
        assert_eq!(
            parse("x-overflow", s("foo")).unwrap_err(),
            format!("{pre} 'x-overflow' for queue 'q' in vhost '/': invalid_overflow")
        );
        assert_eq!(
            parse("x-overflow", AMQPValue::LongInt(1)).unwrap_err(),
            format!(
                "{pre} 'x-overflow' for queue 'q' in vhost '/': {{unacceptable_type,signedint}}"
            )
        );
        assert_eq!(
            parse("x-max-priority", AMQPValue::LongInt(256)).unwrap_err(),
            format!(
                "{pre} 'x-max-priority' for queue 'q' in vhost '/': {{max_value_exceeded,256}}"
            )
        );
        assert_eq!(
            parse("x-dead-letter-exchange", AMQPValue::LongInt(1)).unwrap_err(),
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"
        );
        assert_eq!(
            parse("x-dead-letter-routing-key", s("k")).unwrap_err(),
            format!("{pre} 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined")
        );
        assert_eq!(
            parse("x-single-active-consumer", s("yes")).unwrap_err(),
            format!("{pre} 'x-single-active-consumer' for queue 'q' in vhost '/': {{unacceptable_type,longstr}}")
        );
        assert_eq!(
            parse("x-queue-type", s("foo")).unwrap_err(),
            format!(
                "{pre} 'x-queue-type' for queue 'q' in vhost '/': \"unsupported queue type 'foo'\""
            )
        );
    }

    #[test]
    fn good_values_parse() {
        assert_eq!(
            parse("x-message-ttl", AMQPValue::ShortShortUInt(0))
                .unwrap()
                .message_ttl,
            Some(0)
        );
        assert_eq!(
            parse("x-max-length", AMQPValue::LongLongInt(0))
                .unwrap()
                .max_length,
            Some(0)
        );
        assert_eq!(
            parse("x-max-priority", AMQPValue::ShortInt(10))
                .unwrap()
                .max_priority,
            Some(10)
        );
        assert_eq!(
            parse("x-overflow", s("reject-publish-dlx"))
                .unwrap()
                .overflow,
            Overflow::RejectPublishDlx
        );
        assert!(parse("x-foo", s("anything")).is_ok());
    }
}
