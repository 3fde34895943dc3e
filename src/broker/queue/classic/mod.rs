//! Classic queue: the type's rules. Its machinery (ready messages, paging,
//! consumers, TTL, dead-lettering) is the queue's own, in `queue/mod.rs`,
//! `ready.rs` and `paging.rs`, which the quorum type runs too.
//!
//! A classic queue takes any declare properties (server-named, exclusive,
//! auto-delete, transient) and every operation: get, purge, nack, browse,
//! consumers with or without acknowledgements.

use super::DeclareProperties;
use crate::protocol::AmqpError;

/// Classic queues take any declare properties.
pub fn check_declare(_req: &DeclareProperties, _resource: &str) -> Result<(), AmqpError> {
    Ok(())
}
