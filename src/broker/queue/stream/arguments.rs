//! Stream queue arguments and the consumer's `x-stream-offset`, with
//! RabbitMQ's grammar and error texts.

use crate::broker::arguments::{as_int, as_string, type_name};
use crate::protocol::{AMQPValue, AmqpError, FieldTable};
use crate::store::stream_log::{Retention, DEFAULT_SEGMENT_BYTES};
use std::time::Duration;

/// Classic-queue arguments a stream refuses.
const REFUSED: &[&str] = &[
    "x-message-ttl",
    "x-max-length",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-single-active-consumer",
    "x-max-priority",
    "x-expires",
    "x-queue-mode",
];

/// Parses a stream's declare arguments; `resource` is `queue 'q' in vhost 'v'`.
pub fn parse(args: &FieldTable, resource: &str) -> Result<Retention, AmqpError> {
    let invalid = |arg: &str, reason: String| {
        AmqpError::precondition_failed(format!("invalid arg '{arg}' for {resource}: {reason}"))
    };
    let integer = |arg: &str, value: &AMQPValue| -> Result<u64, AmqpError> {
        match as_int(value) {
            Some(n) if n >= 0 => Ok(n.min(u64::MAX as i128) as u64),
            Some(n) => Err(invalid(arg, format!("{{value_negative,{n}}}"))),
            None => Err(invalid(
                arg,
                format!("{{unacceptable_type,{}}}", type_name(value)),
            )),
        }
    };
    let mut retention = Retention {
        max_segment_bytes: DEFAULT_SEGMENT_BYTES,
        ..Retention::default()
    };
    for (key, value) in args.inner() {
        let key = key.as_str();
        if REFUSED.contains(&key) {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg '{key}' for {resource} of queue type rabbit_stream_queue"
            )));
        }
        match key {
            "x-max-length-bytes" => retention.max_bytes = Some(integer(key, value)?),
            "x-stream-max-segment-size-bytes" => {
                retention.max_segment_bytes = integer(key, value)?.max(1)
            }
            "x-initial-cluster-size" => {
                integer(key, value)?;
            }
            "x-stream-filter-size-bytes" => {
                let n = integer(key, value)?;
                if !(16..=255).contains(&n) {
                    return Err(invalid(key, format!("{{value_out_of_range,{n}}}")));
                }
            }
            "x-max-age" => {
                let text = as_string(value).ok_or_else(|| {
                    invalid(key, format!("{{unacceptable_type,{}}}", type_name(value)))
                })?;
                retention.max_age =
                    Some(parse_age(&text).ok_or_else(|| invalid(key, "invalid_max_age".into()))?);
            }
            "x-queue-leader-locator" => match as_string(value).as_deref() {
                Some("client-local" | "balanced") => {}
                _ => return Err(invalid(key, "invalid_queue_locator_arg".into())),
            },
            _ => {}
        }
    }
    Ok(retention)
}

/// `<positive int><unit>` with unit `Y`, `M`, `D`, `h`, `m` or `s` (a year
/// is 365 days and a month 30, as RabbitMQ counts them).
pub fn parse_age(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok().filter(|n| *n > 0)?;
    let seconds = match unit {
        "Y" => 365 * 86_400,
        "M" => 30 * 86_400,
        "D" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(seconds)?))
}

/// Where a consumer starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    First,
    Last,
    Next,
    Offset(u64),
    /// Milliseconds since the epoch: the first chunk written at or after.
    Timestamp(i64),
}

/// Parses `x-stream-offset`; the error is the reason RabbitMQ gives.
pub fn parse_offset(value: &AMQPValue) -> Result<OffsetSpec, String> {
    match value {
        AMQPValue::Timestamp(seconds) => Ok(OffsetSpec::Timestamp(
            (*seconds).min(i64::MAX as u64 / 1000) as i64 * 1000,
        )),
        AMQPValue::Float(_) | AMQPValue::Double(_) => {
            Err(format!("invalid offset specification {value:?}"))
        }
        other => {
            if let Some(n) = as_int(other) {
                return Ok(if n < 0 {
                    OffsetSpec::First
                } else {
                    OffsetSpec::Offset(n.min(u64::MAX as i128) as u64)
                });
            }
            let text = as_string(other).ok_or_else(|| {
                format!("invalid offset specification of type {}", type_name(other))
            })?;
            match text.as_str() {
                "first" => Ok(OffsetSpec::First),
                "last" => Ok(OffsetSpec::Last),
                "next" => Ok(OffsetSpec::Next),
                interval => {
                    let age = parse_age(interval)
                        .ok_or_else(|| format!("invalid offset specification '{interval}'"))?;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    Ok(OffsetSpec::Timestamp(
                        now.saturating_sub(age).as_millis() as i64
                    ))
                }
            }
        }
    }
}

/// A consumer's `x-stream-filter` / `x-stream-match-unfiltered`.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub values: Vec<String>,
    pub match_unfiltered: bool,
}

impl Filter {
    /// `None` when the consumer reads everything.
    pub fn from_arguments(args: &FieldTable) -> Result<Option<Filter>, String> {
        let inner = args.inner();
        let Some(value) = inner.get("x-stream-filter") else {
            return Ok(None);
        };
        let values = match value {
            AMQPValue::FieldArray(items) => items
                .as_slice()
                .iter()
                .map(|v| as_string(v).ok_or("x-stream-filter must hold strings"))
                .collect::<Result<Vec<_>, _>>()?,
            other => vec![as_string(other).ok_or("x-stream-filter must be a string or a list")?],
        };
        let match_unfiltered = matches!(
            inner.get("x-stream-match-unfiltered"),
            Some(AMQPValue::Boolean(true))
        );
        Ok(Some(Filter {
            values,
            match_unfiltered,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::LongString;

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    #[test]
    fn ages_follow_rabbitmq_grammar() {
        assert_eq!(parse_age("7D"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Some(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_age("30m"), Some(Duration::from_secs(1_800)));
        assert_eq!(parse_age("1Y"), Some(Duration::from_secs(365 * 86_400)));
        for bad in ["10", "0s", "1d", "10S", "s", "", "-1s"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }

    #[test]
    fn declare_arguments_are_checked() {
        let resource = "queue 's' in vhost '/'";
        let mut t = FieldTable::default();
        t.insert("x-max-age".into(), s("10"));
        assert_eq!(
            parse(&t, resource).unwrap_err().text,
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 's' in vhost '/': invalid_max_age"
        );
        let mut t = FieldTable::default();
        t.insert("x-max-length".into(), AMQPValue::LongInt(1));
        assert_eq!(
            parse(&t, resource).unwrap_err().text,
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 's' in vhost '/' of queue type rabbit_stream_queue"
        );
        let mut t = FieldTable::default();
        t.insert("x-max-age".into(), s("1h"));
        t.insert("x-max-length-bytes".into(), AMQPValue::LongInt(1000));
        t.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongInt(100),
        );
        let r = parse(&t, resource).unwrap();
        assert_eq!(r.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(r.max_bytes, Some(1000));
        assert_eq!(r.max_segment_bytes, 100);
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset(&s("first")), Ok(OffsetSpec::First));
        assert_eq!(parse_offset(&s("last")), Ok(OffsetSpec::Last));
        assert_eq!(parse_offset(&s("next")), Ok(OffsetSpec::Next));
        assert_eq!(
            parse_offset(&AMQPValue::LongLongInt(5)),
            Ok(OffsetSpec::Offset(5))
        );
        assert_eq!(
            parse_offset(&AMQPValue::ShortShortInt(-1)),
            Ok(OffsetSpec::First)
        );
        assert_eq!(
            parse_offset(&AMQPValue::Timestamp(10)),
            Ok(OffsetSpec::Timestamp(10_000))
        );
        assert!(matches!(
            parse_offset(&s("1h")),
            Ok(OffsetSpec::Timestamp(_))
        ));
        assert!(parse_offset(&s("bogus")).is_err());
        assert!(parse_offset(&AMQPValue::Double(1.0)).is_err());
    }
}
