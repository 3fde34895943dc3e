//! A partitioned stream's partitions: stream queues `<name>-<i>` bound to
//! the `x-super-stream` exchange with key `<i>` (see
//! `exchange/super_stream.rs` for routing; `vhost/partitions.rs` creates
//! and finds them).

use crate::broker::arguments::{as_int, get};
use crate::protocol::{AmqpError, FieldTable};

/// Partitions when `x-partitions` is not given (as `rabbitmq-streams
/// add_super_stream`).
pub const DEFAULT_PARTITIONS: u32 = 3;
/// Upper bound on `x-partitions`.
pub const MAX_PARTITIONS: u32 = 1024;

/// The `x-partitions` a super stream is declared with.
pub fn requested_partitions(args: &FieldTable, resource: &str) -> Result<u32, AmqpError> {
    match get(args, "x-partitions") {
        None => Ok(DEFAULT_PARTITIONS),
        Some(value) => match as_int(value) {
            Some(n) if n >= 1 && n <= MAX_PARTITIONS as i128 => Ok(n as u32),
            _ => Err(AmqpError::precondition_failed(format!(
                "invalid arg 'x-partitions' for {resource}: expected an integer from 1 to {MAX_PARTITIONS}"
            ))),
        },
    }
}

/// The name of partition `index` of super stream `name`.
pub fn partition_name(name: &str, index: u32) -> String {
    format!("{name}-{index}")
}
