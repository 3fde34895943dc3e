//! Consumer side: this node's clients consuming from (and getting from)
//! queues that live on other nodes.

use super::{queued, Outbound, Relays};
use crate::broker::forward::{self, Answer, Call, ConsumeRequest, Relayed, SettleHow};
use crate::broker::queue::{Consumer, Credit, Queue, QueuedMessage, Settle};
use crate::protocol::AmqpError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl Relays {
    /// basic.consume on `queue`, which lives on another node: the consumer
    /// is made there, its deliveries come here.
    pub fn consume(&self, queue: &Arc<Queue>, consumer: Arc<Consumer>) -> Result<(), AmqpError> {
        let (vhost, name) = (queue.vhost.clone(), queue.name.clone());
        self.relay_consumer(queue, consumer, |request| Call::Consume {
            vhost,
            queue: name,
            request,
        })
    }

    /// basic.consume with `x-consumer-group` on a super stream whose
    /// partitions live on another node (`partition` is one of them): the
    /// member joins the group there, its deliveries come here.
    pub fn consume_group(
        &self,
        partition: &Arc<Queue>,
        super_stream: &str,
        group: &str,
        member: Arc<Consumer>,
    ) -> Result<(), AmqpError> {
        let (vhost, super_stream, group) = (
            partition.vhost.clone(),
            super_stream.to_string(),
            group.to_string(),
        );
        self.relay_consumer(partition, member, |request| Call::ConsumeGroup {
            vhost,
            super_stream,
            group,
            request,
        })
    }

    /// Registers `consumer` for deliveries relayed from `queue`'s node and
    /// asks that node (with `call`) to make the consumer there.
    fn relay_consumer(
        &self,
        queue: &Arc<Queue>,
        consumer: Arc<Consumer>,
        call: impl FnOnce(ConsumeRequest) -> Call,
    ) -> Result<(), AmqpError> {
        let Some(node) = queue.remote_node() else {
            return Err(AmqpError::internal("not a queue of another node"));
        };
        let relay = self.next_relay.fetch_add(1, Ordering::Relaxed);
        let call = call(ConsumeRequest {
            relay,
            boot: self.boot,
            tag: consumer.tag.to_string(),
            no_ack: consumer.no_ack,
            exclusive: consumer.exclusive,
            priority: consumer.priority,
            prefetch: consumer.prefetch,
            arguments: consumer.arguments.clone(),
        });
        // In place before the call: deliveries may arrive before its answer.
        self.outbound.lock().insert(
            relay,
            Outbound {
                node: node.to_string(),
                boot: 0,
                consumer,
                queue: queue.clone(),
            },
        );
        match self.ask_blocking(node, &call) {
            Ok(Answer::Boot(boot)) => {
                if let Some(outbound) = self.outbound.lock().get_mut(&relay) {
                    outbound.boot = boot;
                }
                Ok(())
            }
            Ok(other) => {
                self.outbound.lock().remove(&relay);
                Err(forward::unexpected(node, &other))
            }
            Err(e) => {
                self.outbound.lock().remove(&relay);
                Err(e)
            }
        }
    }

    /// basic.cancel (or the channel closing) for a consumer of a queue of
    /// another node; the consumer, if it was one.
    pub fn cancel(
        &self,
        queue: &Arc<Queue>,
        tag: &str,
        channel: (u64, u16),
    ) -> Option<Arc<Consumer>> {
        let (relay, outbound) = {
            let mut outbound = self.outbound.lock();
            let relay = outbound
                .iter()
                .find(|(_, o)| {
                    Arc::ptr_eq(&o.queue, queue)
                        && &*o.consumer.tag == tag
                        && o.consumer.on_channel(channel)
                })
                .map(|(relay, _)| *relay)?;
            (relay, outbound.remove(&relay)?)
        };
        self.tell(&outbound.node, Call::Cancel { relay });
        Some(outbound.consumer)
    }

    /// Acks, nacks and rejects of deliveries from `queue`'s node.
    pub fn settle(&self, queue: &Queue, messages: Vec<QueuedMessage>, how: Settle) {
        let Some(node) = queue.remote_node() else {
            return;
        };
        let how = match how {
            Settle::Ack => SettleHow::Ack,
            Settle::Requeue => SettleHow::Requeue,
            Settle::Reject => SettleHow::Reject,
        };
        let ids = messages.iter().map(|m| m.seq).collect();
        self.tell(node, Call::Settle { ids, how });
    }

    /// basic.get on a queue of another node.
    pub fn get(
        &self,
        queue: &Queue,
        no_ack: bool,
    ) -> Result<Option<(QueuedMessage, usize)>, AmqpError> {
        let Some(node) = queue.remote_node() else {
            return Ok(None);
        };
        let call = Call::Get {
            vhost: queue.vhost.clone(),
            queue: queue.name.clone(),
            no_ack,
            boot: self.boot,
        };
        match self.ask_blocking(node, &call)? {
            Answer::Got(None) => Ok(None),
            Answer::Got(Some((relayed, remaining))) => match queued(relayed) {
                Some(message) => Ok(Some((message, remaining as usize))),
                None => Err(AmqpError::internal("unreadable relayed message")),
            },
            other => Err(forward::unexpected(node, &other)),
        }
    }

    /// Deliveries from node `from` for this node's consumers; returns the
    /// ids of those whose consumer is gone. Answered once the clients'
    /// connections have room again, so that a slow client slows the
    /// queue's node down instead of filling this one.
    pub async fn deliveries(&self, from: &str, batch: Vec<Relayed>) -> Vec<u64> {
        let mut refused = Vec::new();
        let mut consumers: Vec<Arc<Consumer>> = Vec::new();
        for relayed in batch {
            let target = {
                let outbound = self.outbound.lock();
                outbound
                    .get(&relayed.relay)
                    .filter(|o| o.node == from)
                    .map(|o| (o.consumer.clone(), o.queue.clone()))
            };
            let id = relayed.id;
            match (target, queued(relayed)) {
                (Some((consumer, queue)), Some(message)) => {
                    if !consumer.sink.deliver_relayed(&consumer, &queue, message) {
                        refused.push(id);
                        continue;
                    }
                    if !consumers.iter().any(|c| Arc::ptr_eq(c, &consumer)) {
                        consumers.push(consumer);
                    }
                }
                _ => refused.push(id),
            }
        }
        for _ in 0..1000 {
            if !consumers
                .iter()
                .any(|c| c.sink.credit() == Credit::Saturated)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        refused
    }

    /// The queue's node cancelled relay `relay` (the queue was deleted).
    pub fn cancelled(&self, from: &str, relay: u64) {
        let removed = {
            let mut outbound = self.outbound.lock();
            match outbound.get(&relay) {
                Some(o) if o.node == from => outbound.remove(&relay),
                _ => None,
            }
        };
        if let Some(outbound) = removed {
            outbound.consumer.sink.cancelled(&outbound.consumer.tag);
        }
    }

    /// `queue` (another node's) is no longer known here: its consumers are
    /// cancelled.
    pub fn queue_gone(&self, queue: &Arc<Queue>) {
        self.cancel_where(|o| Arc::ptr_eq(&o.queue, queue));
    }

    /// Cancels (to the clients) every consumer relayed from `node`.
    pub(super) fn node_gone(&self, node: &str) {
        let gone = self.cancel_where(|o| o.node == node);
        if gone > 0 {
            tracing::info!(
                node,
                consumers = gone,
                "queue node gone: its relayed consumers are cancelled"
            );
        }
    }

    fn cancel_where(&self, which: impl Fn(&Outbound) -> bool) -> usize {
        let removed: Vec<Outbound> = {
            let mut outbound = self.outbound.lock();
            let relays: Vec<u64> = outbound
                .iter()
                .filter(|(_, o)| which(o))
                .map(|(relay, _)| *relay)
                .collect();
            relays.iter().filter_map(|r| outbound.remove(r)).collect()
        };
        for o in &removed {
            o.consumer.sink.cancelled(&o.consumer.tag);
        }
        removed.len()
    }

    /// Queue nodes this node's consumers are relayed from, with the boot
    /// id each had.
    pub(super) fn queue_nodes(&self) -> Vec<(String, u64)> {
        let mut nodes: Vec<(String, u64)> = self
            .outbound
            .lock()
            .values()
            .filter(|o| o.boot != 0)
            .map(|o| (o.node.clone(), o.boot))
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }
}
