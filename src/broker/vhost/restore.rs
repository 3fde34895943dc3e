//! Restoring definitions and messages at start.

use super::*;
use crate::broker::exchange::delayed;

impl VHost {
    pub fn restore_exchange(&self, r: &ExchangeRecord) {
        let Ok((kind, delayed)) = declared_type(&r.kind, &r.arguments) else {
            tracing::error!(exchange = %r.name, kind = %r.kind, "skipping stored exchange of unknown type");
            return;
        };
        let mut exchange = Exchange::new(
            r.name.clone(),
            kind,
            true,
            r.auto_delete,
            r.internal,
            r.arguments.clone(),
        );
        if delayed {
            exchange = exchange.with_delay();
        }
        exchange.set_policy(self.policy_for_exchange(&r.name));
        self.exchanges
            .write()
            .insert(r.name.clone(), Arc::new(exchange));
    }

    pub fn restore_queue(&self, r: &QueueRecord) {
        let resource = self.queue_resource(&r.name);
        let args = match QueueArguments::parse_stored(&r.arguments, &resource) {
            Ok(args) => args,
            Err(e) => {
                tracing::error!(queue = %r.name, error = %e, "skipping stored queue with invalid arguments");
                return;
            }
        };
        let elsewhere = r
            .node
            .as_ref()
            .filter(|node| self.replication.node() != Some(node.as_str()));
        if elsewhere.is_none() && (!r.durable || r.exclusive) {
            // This node's transient or exclusive queue of a cluster: gone
            // with the restart, as in RabbitMQ; the others are told once
            // the cluster is up (`forget_gone_queues`).
            self.gone_queues.lock().push(r.name.clone());
            return;
        }
        let options = QueueOptions {
            durable: r.durable,
            auto_delete: r.auto_delete,
            exclusive_owner: r.exclusive.then_some(super::queues::NO_CONNECTION),
            arguments: r.arguments.clone(),
        };
        let queue = match elsewhere {
            Some(node) => Queue::remote(
                r.name.clone(),
                self.name.clone(),
                options,
                args,
                self.self_ref.clone(),
                node.clone(),
            ),
            None => match Queue::open(
                r.name.clone(),
                self.name.clone(),
                options,
                args,
                self.self_ref.clone(),
                self.store.as_ref(),
                true,
            ) {
                Ok(queue) if r.node.is_some() => queue.shared(),
                Ok(queue) => queue,
                Err(e) => {
                    tracing::error!(queue = %r.name, error = %e, "skipping stored queue that cannot be opened");
                    return;
                }
            },
        };
        let queue = Arc::new(queue);
        self.queues.write().insert(r.name.clone(), queue.clone());
        queue.apply_policy(self.policy_for_queue(&queue.name));
        if !queue.is_remote() {
            queue.start_expiry_timer();
        }
    }

    /// Tells the other nodes that this node's transient and exclusive
    /// queues did not survive its restart.
    pub fn forget_gone_queues(&self) {
        for name in std::mem::take(&mut *self.gone_queues.lock()) {
            self.replication.propose_in_background(
                Change::DeleteQueue {
                    vhost: self.name.clone(),
                    name: name.clone(),
                },
                format!("delete {}", self.queue_resource(&name)),
            );
        }
    }

    pub fn restore_binding(&self, r: &BindingRecord) {
        let Some(source) = self.exchange(&r.source) else {
            return;
        };
        let destination = if r.destination_is_queue {
            match self.queue(&r.destination) {
                Some(q) => Destination::Queue(q),
                None => return,
            }
        } else {
            Destination::Exchange(r.destination.clone())
        };
        source.bind(Binding {
            routing_key: r.routing_key.clone(),
            arguments: r.arguments.clone(),
            destination,
        });
    }

    /// Puts a message read back from the log into the queues still holding it.
    pub fn restore_message(&self, recovered: crate::store::message_log::RecoveredMessage) {
        let properties =
            match amq_protocol::protocol::basic::parse_properties(&recovered.raw_properties[..]) {
                Ok((_, p)) => p,
                Err(_) => {
                    tracing::error!(
                        id = recovered.id,
                        "skipping stored message with unreadable properties"
                    );
                    // Dropped for good, not found again at every start.
                    if let Some(store) = &self.store {
                        for (queue, _) in &recovered.queues {
                            store.log.remove(recovered.id, &self.name, queue);
                        }
                    }
                    return;
                }
            };
        let mut message = Message::new(
            recovered.exchange,
            recovered.routing_key,
            properties,
            recovered.raw_properties,
            recovered.body,
        );
        message.store_id = Some(recovered.id);
        let message = Arc::new(message);
        for (queue, delivered) in recovered.queues {
            if let Some((due_ms, exchange)) = delayed::parse_holder(&queue) {
                delayed::schedule(self, exchange.to_string(), message.clone(), due_ms);
                continue;
            }
            match self.queue(&queue) {
                Some(q) => q.restore(message.clone(), delivered),
                None => {
                    // Its queue is gone: tell the log, so the segment can go.
                    if let Some(store) = &self.store {
                        store.log.remove(recovered.id, &self.name, &queue);
                    }
                }
            }
        }
    }
}
