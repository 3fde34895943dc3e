//! This vhost and the other nodes of a cluster: messages routed here to
//! queues that live elsewhere are forwarded to their nodes; operations on
//! such a queue's contents are asked of its node; and what other nodes
//! forward here is delivered.

use super::*;
use crate::broker::forward::{self, Answer, Call, Forwarded, Receipt};
use crate::broker::queue::Consumer;

impl VHost {
    /// Forwards `message` to the nodes of `remote` (queues that live
    /// elsewhere, each once); the receipt gets their answers.
    pub(super) fn forward(
        &self,
        message: &Message,
        remote: &[&Arc<Queue>],
    ) -> Option<Arc<Receipt>> {
        let forwarders = self.replication.forwarders()?;
        let receipt = Arc::new(Receipt::default());
        let mut nodes: Vec<&str> = remote.iter().filter_map(|q| q.remote_node()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node in nodes {
            let queues = remote
                .iter()
                .filter(|q| q.remote_node() == Some(node))
                .map(|q| q.name.clone())
                .collect();
            let forwarded = Forwarded {
                vhost: self.name.clone(),
                queues,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
                properties: message.raw_properties.to_vec(),
                body: message.body.to_vec(),
            };
            forwarders.forward(node, forwarded, &receipt);
        }
        Some(receipt)
    }

    /// Asks `node` to do `call` and waits (blocking this thread, as a
    /// metadata change does) for the count it answers.
    pub(super) fn remote_call(&self, node: &str, call: Call) -> Result<usize, AmqpError> {
        match self.ask(node, &call)? {
            Answer::Count(n) => Ok(n as usize),
            Answer::Counts { ready, .. } => Ok(ready as usize),
            other => Err(forward::unexpected(node, &other)),
        }
    }

    /// basic.consume on a queue of another node: its deliveries are
    /// relayed here (see `relay`).
    pub fn consume_remote(
        &self,
        queue: &Arc<Queue>,
        consumer: Arc<Consumer>,
    ) -> Result<(), AmqpError> {
        self.relays()?.consume(queue, consumer)
    }

    /// A consumer group member on a super stream whose partitions live on
    /// another node (`partition` is one of them).
    pub fn consume_group_remote(
        &self,
        partition: &Arc<Queue>,
        super_stream: &str,
        group: &str,
        member: Arc<Consumer>,
    ) -> Result<(), AmqpError> {
        self.relays()?
            .consume_group(partition, super_stream, group, member)
    }

    /// basic.cancel of a consumer of a queue of another node.
    pub fn cancel_remote(&self, queue: &Arc<Queue>, tag: &str, channel: (u64, u16)) {
        if let Ok(relays) = self.relays() {
            relays.cancel(queue, tag, channel);
        }
    }

    /// basic.get on a queue of another node.
    pub fn get_remote(
        &self,
        queue: &Queue,
        no_ack: bool,
    ) -> Result<Option<(crate::broker::queue::QueuedMessage, usize)>, AmqpError> {
        self.relays()?.get(queue, no_ack)
    }

    fn relays(&self) -> Result<&Arc<crate::broker::relay::Relays>, AmqpError> {
        self.replication
            .relays()
            .ok_or_else(|| AmqpError::internal("not a cluster node"))
    }

    /// queue.purge: here, or by the queue's node.
    pub fn purge_queue(&self, queue: &Queue) -> Result<usize, AmqpError> {
        match queue.remote_node() {
            Some(node) => self.remote_call(
                node,
                Call::PurgeQueue {
                    vhost: self.name.clone(),
                    name: queue.name.clone(),
                },
            ),
            None => Ok(queue.purge()),
        }
    }

    /// (ready messages, consumers) of a queue, asked of its node when it
    /// lives on another (404 when that node is down, as RabbitMQ).
    pub fn remote_counts(&self, queue: &Queue) -> Result<(usize, usize), AmqpError> {
        let Some(node) = queue.remote_node() else {
            let (ready, _, consumers) = queue.snapshot();
            return Ok((ready, consumers));
        };
        let call = Call::QueueCounts {
            vhost: self.name.clone(),
            name: queue.name.clone(),
        };
        match self.ask(node, &call)? {
            Answer::Counts { ready, consumers } => Ok((ready as usize, consumers as usize)),
            other => Err(forward::unexpected(node, &other)),
        }
    }

    fn ask(&self, node: &str, call: &Call) -> Result<Answer, AmqpError> {
        self.relays()?.ask_blocking(node, call)
    }

    /// Delivers messages another node routed to queues of this node;
    /// returns, per message, whether it was refused, once the persistent
    /// ones are on disk.
    pub async fn accept_forwarded(&self, messages: Vec<Forwarded>) -> Vec<bool> {
        let mut refused = Vec::with_capacity(messages.len());
        let mut last_seq = None;
        let mut seqs = Vec::with_capacity(messages.len());
        for forwarded in messages {
            let properties =
                match amq_protocol::protocol::basic::parse_properties(&forwarded.properties[..]) {
                    Ok((_, properties)) => properties,
                    Err(_) => {
                        refused.push(true);
                        seqs.push(None);
                        continue;
                    }
                };
            let queues: Vec<Arc<Queue>> = forwarded
                .queues
                .iter()
                .filter_map(|name| self.route_default(name))
                .filter(|q| !q.is_remote())
                .collect();
            let message = Message::new(
                forwarded.exchange,
                forwarded.routing_key,
                properties,
                forwarded.properties.into(),
                forwarded.body.into(),
            );
            let delivered = self.deliver(message, &queues);
            refused.push(delivered.refused);
            seqs.push(delivered.log_seq);
            last_seq = last_seq.max(delivered.log_seq);
        }
        if let (Some(seq), Some(store)) = (last_seq, &self.store) {
            let mut synced = store.log.synced();
            let _ = synced.wait_for(|s| *s >= seq).await;
            let failures = store.log.failures();
            for (refused, seq) in refused.iter_mut().zip(seqs) {
                *refused |= seq.is_some_and(|s| failures.failed(s));
            }
        }
        refused
    }
}
