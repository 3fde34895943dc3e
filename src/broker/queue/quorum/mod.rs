//! Quorum queues, as RabbitMQ 4.x declares and delivers them, on one node.
//!
//! Nothing is replicated yet: the messages live where a durable classic
//! queue keeps them (the message log), and the queue runs the classic
//! queue's code with the quorum type's rules on top, all of which are
//! here: what a declare must look like, which arguments the type takes,
//! the delivery limit (20 unless declared) and the `x-delivery-count` on
//! every redelivery. Replication will replace the storage underneath
//! without changing these.

use super::{DeclareProperties, Members};
use crate::broker::arguments::{as_int, type_name};
use crate::protocol::{AMQPValue, AmqpError, FieldTable};

/// RabbitMQ 4.0's default `x-delivery-limit` for quorum queues.
pub const DEFAULT_DELIVERY_LIMIT: u64 = 20;

/// Classic-queue arguments that quorum queues refuse.
const REFUSED: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
];

/// Whether declare arguments ask for a quorum queue.
pub fn is_quorum(args: &FieldTable) -> bool {
    args.inner()
        .get("x-queue-type")
        .and_then(crate::broker::arguments::as_string)
        .as_deref()
        == Some("quorum")
}

/// A stored queue's arguments without `x-queue-type`, when it is a quorum
/// queue: one stored before quorum queues had their own rules (they were
/// served as classic ones) is kept as a classic queue, rather than left
/// unrestored with its messages, if its arguments are ones quorum refuses.
pub fn as_classic(args: &FieldTable) -> Option<FieldTable> {
    if !is_quorum(args) {
        return None;
    }
    let mut classic = FieldTable::default();
    for (key, value) in args.inner() {
        if key.as_str() != "x-queue-type" {
            classic.insert(key.clone(), value.clone());
        }
    }
    Some(classic)
}

/// One node: it leads, and is the only member (nothing replicated).
pub fn members(node: &str) -> Members<'_> {
    Members {
        leader: node,
        members: vec![node],
        online: vec![node],
    }
}

/// RabbitMQ's declare rules for the type: a named, durable, shared queue
/// that is never auto-deleted; `resource` is `queue 'q' in vhost 'v'`.
pub fn check_declare(req: &DeclareProperties, resource: &str) -> Result<(), AmqpError> {
    if req.name.is_empty() {
        return Err(AmqpError::precondition_failed(
            "Cannot declare a server-named queue for type rabbit_quorum_queue",
        ));
    }
    // RabbitMQ checks in this order.
    DeclareProperties::refuse_first(
        [
            ("auto-delete", req.auto_delete),
            ("exclusive-owner", req.exclusive),
            ("non-durable", !req.durable),
        ],
        resource,
    )
}

/// The quorum-only arguments, and the refusal of those the type does not
/// take. Returns the delivery limit in force: the declared one, none for
/// a negative one (RabbitMQ 4: `-1` turns the limit off), else 20.
pub fn parse_arguments(args: &FieldTable, resource: &str) -> Result<Option<u64>, AmqpError> {
    let invalid = |arg: &str, reason: String| {
        AmqpError::precondition_failed(format!("invalid arg '{arg}' for {resource}: {reason}"))
    };
    let mut limit = Some(DEFAULT_DELIVERY_LIMIT);
    for (key, value) in args.inner() {
        let key = key.as_str();
        if REFUSED.contains(&key) {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg '{key}' for {resource} of queue type rabbit_quorum_queue"
            )));
        }
        let integer = |value: &AMQPValue| {
            as_int(value).ok_or_else(|| {
                invalid(
                    key,
                    format!("\"expected integer, got {}\"", type_name(value)),
                )
            })
        };
        match key {
            "x-delivery-limit" => {
                let n = integer(value)?;
                limit = (n >= 0).then(|| n.min(u64::MAX as i128) as u64);
            }
            "x-quorum-initial-group-size" | "x-max-in-memory-length" | "x-max-in-memory-bytes" => {
                let n = integer(value)?;
                if n < 0 {
                    return Err(invalid(key, format!("{{value_negative,{n}}}")));
                }
            }
            "x-dead-letter-strategy" => match crate::broker::arguments::as_string(value).as_deref()
            {
                Some("at-most-once" | "at-least-once") => {}
                _ => {
                    return Err(invalid(
                        key,
                        "\"expected at-most-once or at-least-once\"".into(),
                    ))
                }
            },
            _ => {}
        }
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn the_delivery_limit_is_20_unless_declared_and_minus_one_turns_it_off() {
        let r = "queue 'q' in vhost '/'";
        assert_eq!(parse_arguments(&table(&[]), r).ok(), Some(Some(20)));
        let five = table(&[("x-delivery-limit", AMQPValue::LongInt(5))]);
        assert_eq!(parse_arguments(&five, r).ok(), Some(Some(5)));
        let off = table(&[("x-delivery-limit", AMQPValue::LongInt(-1))]);
        assert_eq!(parse_arguments(&off, r).ok(), Some(None));
    }

    #[test]
    fn classic_only_arguments_are_refused_with_rabbitmqs_text() {
        let r = "queue 'q' in vhost '/'";
        let err = parse_arguments(&table(&[("x-max-priority", AMQPValue::LongInt(5))]), r)
            .err()
            .map(|e| e.text);
        assert_eq!(
            err.as_deref(),
            Some("PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue")
        );
    }
}
