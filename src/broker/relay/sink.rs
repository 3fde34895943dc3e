//! Queue side: the sink of a relayed consumer, and the sender that ships
//! deliveries to one consumer's node in batches, one batch in flight, so
//! they arrive in the order the queue delivered them.

use super::{relayed, Relays, Unsettled, CALL_TIMEOUT};
use crate::broker::forward::{self, Answer, Call, Relayed};
use crate::broker::queue::{Consumer, Credit, DeliverySink, Queue, QueuedMessage};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::mpsc;

/// Deliveries queued for one node before its consumers have no credit
/// (the queue waits, as for a client that does not read).
const QUEUED_LIMIT: usize = 2048;
const BATCH: usize = 256;

pub(super) struct Sender {
    queue: mpsc::UnboundedSender<Relayed>,
    /// Queued and not yet answered.
    queued: AtomicUsize,
    /// Queues to dispatch again once there is room.
    waiting: Mutex<Vec<Weak<Queue>>>,
}

impl Relays {
    /// The sender to `node`, started on first use.
    pub(super) fn sender(&self, node: &str) -> Option<Arc<Sender>> {
        let mut senders = self.senders.lock();
        if let Some(sender) = senders.get(node).filter(|s| !s.queue.is_closed()) {
            return Some(sender.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (queue, receiver) = mpsc::unbounded_channel();
        let sender = Arc::new(Sender {
            queue,
            queued: AtomicUsize::new(0),
            waiting: Mutex::new(Vec::new()),
        });
        runtime.spawn(send_loop(
            self.me.clone(),
            node.to_string(),
            sender.clone(),
            receiver,
        ));
        senders.insert(node.to_string(), sender.clone());
        Some(sender)
    }
}

async fn send_loop(
    relays: Weak<Relays>,
    node: String,
    sender: Arc<Sender>,
    mut receiver: mpsc::UnboundedReceiver<Relayed>,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let Some(cluster) = relays.upgrade().map(|r| r.cluster.clone()) else {
            return;
        };
        let ids: Vec<u64> = batch.iter().map(|r| r.id).collect();
        let count = ids.len();
        let refused = match cluster
            .call(&node, forward::encode(&Call::Deliver(batch)), CALL_TIMEOUT)
            .await
        {
            Ok(bytes) => match forward::decode::<Answer>(&bytes) {
                Some(Answer::Delivered { refused }) => refused,
                other => {
                    tracing::warn!(%node, "unexpected answer to relayed deliveries: {other:?}");
                    ids
                }
            },
            Err(e) => {
                tracing::warn!(%node, "cannot relay {count} deliveries: {e}");
                ids
            }
        };
        sender.queued.fetch_sub(count, Ordering::Relaxed);
        if let Some(relays) = relays.upgrade() {
            // Not taken there: back into their queues.
            relays.requeue(&node, &refused);
        }
        if sender.queued.load(Ordering::Relaxed) < QUEUED_LIMIT / 2 {
            let waiting = std::mem::take(&mut *sender.waiting.lock());
            for queue in waiting.iter().filter_map(Weak::upgrade) {
                queue.dispatch();
            }
        }
    }
}

/// The sink of a consumer made for a relay: what the queue delivers goes
/// to the consumer's node.
pub(super) struct RelaySink {
    pub relays: Weak<Relays>,
    pub node: String,
    pub relay: u64,
    /// Unique among this node's consumers' channel keys (connection ids
    /// are small; these have the top bit set).
    pub key: (u64, u16),
    pub sender: Arc<Sender>,
}

impl DeliverySink for RelaySink {
    fn credit(&self) -> Credit {
        if self.sender.queued.load(Ordering::Relaxed) >= QUEUED_LIMIT {
            Credit::Saturated
        } else {
            Credit::Yes
        }
    }

    fn deliver(&self, consumer: &Arc<Consumer>, queue: &Arc<Queue>, message: QueuedMessage) {
        let Some(relays) = self.relays.upgrade() else {
            return;
        };
        let id = relays
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let relayed = relayed(self.relay, id, &message);
        if !consumer.no_ack {
            consumer.unacked.fetch_add(1, Ordering::Relaxed);
            let unsettled = Unsettled {
                queue: queue.clone(),
                consumer: Some(consumer.clone()),
                message,
            };
            relays.hold(&self.node, id, unsettled);
        }
        self.sender.queued.fetch_add(1, Ordering::Relaxed);
        let _ = self.sender.queue.send(relayed);
    }

    fn cancelled(&self, _consumer_tag: &str) {
        if let Some(relays) = self.relays.upgrade() {
            relays.forget_consumer(&self.node, self.relay);
            relays.tell(&self.node, Call::Cancelled { relay: self.relay });
        }
    }

    fn wake_when_writable(&self, queue: Weak<Queue>) {
        self.sender.waiting.lock().push(queue);
    }

    fn channel_key(&self) -> (u64, u16) {
        self.key
    }
}
