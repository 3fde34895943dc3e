//! What the stream type refuses, with RabbitMQ's codes and texts: its
//! declare properties, and the operations a log that keeps every message
//! has no meaning for (get, purge, nack, automatic acknowledgement).

use super::super::DeclareProperties;
use crate::protocol::{AmqpError, FieldTable};

/// RabbitMQ's declare rules for the type: a named, durable, shared queue
/// that is never auto-deleted; `resource` is `queue 'q' in vhost 'v'`.
pub fn check_declare(req: &DeclareProperties, resource: &str) -> Result<(), AmqpError> {
    if req.name.is_empty() {
        return Err(AmqpError::precondition_failed(
            "Cannot declare a server-named queue for type rabbit_stream_queue",
        ));
    }
    // RabbitMQ checks in this order (not the quorum type's).
    DeclareProperties::refuse_first(
        [
            ("non-durable", !req.durable),
            ("exclusive-owner", req.exclusive),
            ("auto-delete", req.auto_delete),
        ],
        resource,
    )
}

/// RabbitMQ's 540 for an operation stream queues do not support.
pub fn unsupported(operation: &str, resource: &str) -> AmqpError {
    AmqpError::not_implemented(format!(
        "{operation} not supported by stream queues {resource}"
    ))
}

/// A stream consumer acknowledges (its acks are its credit), has a
/// prefetch count, and valid `x-stream-offset` and filter arguments.
pub fn check_consume(
    resource: &str,
    no_ack: bool,
    prefetch: u32,
    arguments: &FieldTable,
) -> Result<(), AmqpError> {
    if no_ack {
        return Err(unsupported("automatic acknowledgement", resource));
    }
    if prefetch == 0 {
        return Err(AmqpError::precondition_failed(format!(
            "consumer prefetch count is not set for '{resource}'"
        )));
    }
    super::consume_options(resource, arguments)?;
    Ok(())
}

/// Management's refusal to browse a stream.
pub fn browse_refused(resource: &str) -> String {
    format!("browse is not supported on stream {resource}: consume with x-stream-offset instead")
}
