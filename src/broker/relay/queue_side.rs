//! Queue side: serving another node's consumers and gets of this node's
//! queues, and taking back what they settle.

use super::sink::RelaySink;
use super::{relayed, Inbound, Relays, Unsettled};
use crate::broker::forward::{ConsumeRequest, Relayed, SettleHow};
use crate::broker::queue::{settle, Consumer, DeliverySink, Queue, Settle};
use crate::protocol::AmqpError;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

impl Relays {
    /// Node `from` (started as `boot`) has been seen: what an earlier
    /// start of it left is taken back first.
    fn note_boot(&self, from: &str, boot: u64) {
        let stale = {
            let inbound = self.inbound.lock();
            inbound.get(from).is_some_and(|i| i.boot != boot)
        };
        if stale {
            self.drop_node(from);
        }
        self.inbound
            .lock()
            .entry(from.to_string())
            .or_default()
            .boot = boot;
    }

    /// A consumer whose deliveries go to node `from` as relay
    /// `request.relay`.
    pub fn relayed_consumer(
        &self,
        from: &str,
        request: ConsumeRequest,
    ) -> Result<Arc<Consumer>, AmqpError> {
        self.note_boot(from, request.boot);
        let sender = self
            .sender(from)
            .ok_or_else(|| AmqpError::internal("no runtime for relayed deliveries"))?;
        let local = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sink = RelaySink {
            relays: self.me.clone(),
            node: from.to_string(),
            relay: request.relay,
            key: (1 << 63 | local, 0),
            sender,
        };
        Ok(Arc::new(Consumer {
            tag: Arc::from(request.tag.as_str()),
            no_ack: request.no_ack,
            exclusive: request.exclusive,
            priority: request.priority,
            prefetch: request.prefetch,
            unacked: AtomicU32::new(0),
            arguments: request.arguments,
            sink: Arc::new(sink) as Arc<dyn DeliverySink>,
        }))
    }

    /// Records the consumer group member joined for relay `relay` of node
    /// `from` (it leaves when the relay is cancelled or the node goes).
    pub fn add_member(
        &self,
        from: &str,
        relay: u64,
        member: Arc<crate::broker::super_stream::group::Member>,
    ) {
        self.inbound
            .lock()
            .entry(from.to_string())
            .or_default()
            .members
            .insert(relay, member);
    }

    /// Adds a consumer of `queue` for relay `request.relay` of node `from`.
    pub fn serve_consume(
        &self,
        from: &str,
        queue: &Arc<Queue>,
        request: ConsumeRequest,
    ) -> Result<(), AmqpError> {
        queue.check_consume(request.no_ack, request.prefetch, &request.arguments)?;
        queue.check_consumer_allowed(request.exclusive)?;
        let relay = request.relay;
        let consumer = self.relayed_consumer(from, request)?;
        self.inbound
            .lock()
            .entry(from.to_string())
            .or_default()
            .consumers
            .insert(relay, (queue.clone(), consumer.clone()));
        if let Err(e) = queue.add_consumer(consumer) {
            self.forget_consumer(from, relay);
            return Err(e);
        }
        Ok(())
    }

    /// Cancels relay `relay` of node `from`: its consumer goes (what it
    /// had not settled stays out until settled); an auto-delete queue that
    /// lost its last consumer goes too.
    pub fn serve_cancel(&self, from: &str, relay: u64) {
        let member = self
            .inbound
            .lock()
            .get_mut(from)
            .and_then(|i| i.members.remove(&relay));
        if let Some(member) = member {
            member.leave();
            return;
        }
        let Some((queue, consumer)) = self.forget_consumer(from, relay) else {
            return;
        };
        if let Some((_, auto_delete)) =
            queue.remove_consumer(&consumer.tag, consumer.sink.channel_key())
        {
            if auto_delete {
                queue.remove_from_host();
            }
        }
    }

    pub(super) fn forget_consumer(
        &self,
        from: &str,
        relay: u64,
    ) -> Option<(Arc<Queue>, Arc<Consumer>)> {
        self.inbound
            .lock()
            .get_mut(from)
            .and_then(|i| i.consumers.remove(&relay))
    }

    /// Deliveries node `from` settled.
    pub fn serve_settle(&self, from: &str, ids: &[u64], how: SettleHow) {
        let taken = self.take(from, ids);
        let how = match how {
            SettleHow::Ack => Settle::Ack,
            SettleHow::Requeue => Settle::Requeue,
            SettleHow::Reject => Settle::Reject,
        };
        settle(taken, how);
    }

    /// Deliveries that did not reach node `from`: back into their queues.
    pub(super) fn requeue(&self, from: &str, ids: &[u64]) {
        if !ids.is_empty() {
            settle(self.take(from, ids), Settle::Requeue);
        }
    }

    /// Takes unsettled deliveries out (their consumers get the credit back).
    fn take(
        &self,
        from: &str,
        ids: &[u64],
    ) -> Vec<(
        Arc<Queue>,
        Option<Arc<Consumer>>,
        crate::broker::queue::QueuedMessage,
    )> {
        let mut inbound = self.inbound.lock();
        let Some(node) = inbound.get_mut(from) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| node.unsettled.remove(id))
            .map(release)
            .collect()
    }

    /// basic.get for node `from`.
    pub fn serve_get(
        &self,
        from: &str,
        boot: u64,
        queue: &Arc<Queue>,
        no_ack: bool,
    ) -> Result<Option<(Relayed, u64)>, AmqpError> {
        queue.check_get()?;
        self.note_boot(from, boot);
        let Some((message, remaining)) = queue.get(no_ack) else {
            return Ok(None);
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let relayed = relayed(0, id, &message);
        if !no_ack {
            let queue = queue.clone();
            self.hold(
                from,
                id,
                Unsettled {
                    queue,
                    consumer: None,
                    message,
                },
            );
        }
        Ok(Some((relayed, remaining as u64)))
    }

    /// Node `from` is gone (or restarted): its consumers go and what they
    /// had not settled goes back into the queues.
    pub(super) fn drop_node(&self, from: &str) {
        let Some(Inbound {
            consumers,
            members,
            unsettled,
            ..
        }) = self.inbound.lock().remove(from)
        else {
            return;
        };
        for member in members.into_values() {
            member.leave();
        }
        if !consumers.is_empty() || !unsettled.is_empty() {
            tracing::info!(
                node = from,
                consumers = consumers.len(),
                unacked = unsettled.len(),
                "cluster node gone: its consumers are removed and their unacked messages requeued"
            );
        }
        for (queue, consumer) in consumers.into_values() {
            remove_consumer(&queue, &consumer);
        }
        settle(unsettled.into_values().map(release), Settle::Requeue);
    }

    /// Nodes with consumers of this node's queues, or deliveries out.
    pub(super) fn consumer_nodes(&self) -> Vec<(String, u64)> {
        self.inbound
            .lock()
            .iter()
            .map(|(node, i)| (node.clone(), i.boot))
            .collect()
    }
}

/// Removes a relayed consumer from its queue; an auto-delete queue that
/// lost its last consumer goes.
fn remove_consumer(queue: &Arc<Queue>, consumer: &Consumer) {
    if let Some((_, true)) = queue.remove_consumer(&consumer.tag, consumer.sink.channel_key()) {
        queue.remove_from_host();
    }
}

/// An unsettled delivery leaving: its consumer has the credit back.
fn release(
    entry: Unsettled,
) -> (
    Arc<Queue>,
    Option<Arc<Consumer>>,
    crate::broker::queue::QueuedMessage,
) {
    if let Some(consumer) = &entry.consumer {
        consumer.unacked.fetch_sub(1, Ordering::Relaxed);
    }
    (entry.queue, entry.consumer, entry.message)
}
