//! The partitions of super streams: created with the `x-super-stream`
//! exchange, found through its bindings (see `super_stream/`).

use super::*;
use crate::broker::super_stream::group::{ConsumerGroups, GroupHost};
use crate::broker::super_stream::partitions::partition_name;
use crate::protocol::AMQPValue;

impl VHost {
    /// Creates the partitions a super stream lacks, up to `requested`.
    /// Declaring again with more partitions adds them; with fewer changes
    /// nothing (partitions are never removed while the stream exists).
    pub(crate) fn ensure_partitions(
        &self,
        exchange: &Exchange,
        requested: u32,
        home: Option<&str>,
    ) -> Result<(), AmqpError> {
        let existing = self.partitions(&exchange.name).len() as u32;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        for index in existing..requested {
            let name = partition_name(&exchange.name, index);
            match home {
                // Every node applies the exchange's declaration: each
                // makes the partition, or its definition, itself.
                Some(node) => {
                    let record = QueueRecord {
                        vhost: self.name.clone(),
                        name: name.clone(),
                        auto_delete: false,
                        arguments: args.clone(),
                        node: Some(node.to_string()),
                        durable: true,
                        exclusive: false,
                    };
                    self.apply_declare_queue(&record, None)?;
                }
                None => {
                    self.declare_queue_here(
                        QueueDeclare {
                            name: &name,
                            passive: false,
                            durable: true,
                            exclusive: false,
                            auto_delete: false,
                            arguments: &args,
                        },
                        0,
                    )?;
                }
            }
            // The local half: this runs where the exchange's declaration
            // is applied (on every node of a cluster).
            self.apply_bind(&self.binding_record(
                &exchange.name,
                &name,
                true,
                &index.to_string(),
                &FieldTable::default(),
            ))?;
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

impl GroupHost for VHost {
    fn partitions(&self, name: &str) -> Vec<Arc<Queue>> {
        VHost::partitions(self, name)
    }

    fn groups(&self) -> &ConsumerGroups {
        &self.groups
    }
}
