//! A partitioned stream's partitions: stream queues `<name>-<i>` bound to
//! the `x-super-stream` exchange with key `<i>` (see
//! `exchange/super_stream.rs` for routing).

use crate::broker::arguments::{as_int, get};
use crate::broker::exchange::{Destination, Exchange, ExchangeKind};
use crate::broker::queue::Queue;
use crate::broker::vhost::{QueueDeclare, VHost};
use crate::protocol::{AMQPValue, AmqpError, FieldTable};
use std::sync::Arc;

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

impl VHost {
    /// Creates the partitions a super stream lacks, up to `requested`.
    /// Declaring again with more partitions adds them; with fewer changes
    /// nothing (partitions are never removed while the stream exists).
    pub(crate) fn ensure_partitions(
        &self,
        exchange: &Exchange,
        requested: u32,
        conn: u64,
    ) -> Result<(), AmqpError> {
        let existing = self.partitions(&exchange.name).len() as u32;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        for index in existing..requested {
            let name = partition_name(&exchange.name, index);
            self.declare_queue(
                QueueDeclare {
                    name: &name,
                    passive: false,
                    durable: true,
                    exclusive: false,
                    auto_delete: false,
                    arguments: &args,
                },
                conn,
            )?;
            self.bind_queue(
                &name,
                &exchange.name,
                &index.to_string(),
                &FieldTable::default(),
                conn,
            )?;
        }
        if requested > existing && existing > 0 {
            tracing::info!(
                super_stream = %exchange.name,
                from = existing,
                to = requested,
                "partitions added; routing keys now hash over the new count"
            );
        }
        Ok(())
    }

    /// The partitions of super stream `name`, by index.
    pub fn partitions(&self, name: &str) -> Vec<Arc<Queue>> {
        let Some(exchange) = self.exchange(name) else {
            return Vec::new();
        };
        if exchange.kind != ExchangeKind::SuperStream {
            return Vec::new();
        }
        let mut found: Vec<(u32, Arc<Queue>)> = exchange
            .bindings()
            .into_iter()
            .filter_map(|b| match (b.routing_key.parse::<u32>(), b.destination) {
                (Ok(index), Destination::Queue(q)) => Some((index, q)),
                _ => None,
            })
            .collect();
        found.sort_by_key(|(i, _)| *i);
        found.into_iter().map(|(_, q)| q).collect()
    }
}
