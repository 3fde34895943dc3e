//! Settling deliveries a channel takes back: acked messages leave their
//! queues, rejected ones are dead-lettered, requeued ones go back. Each
//! queue's type decides what that means for it (a stream keeps every
//! message; an ack moves a named consumer's tracked offset).

use super::{stream, Consumer, Queue, QueuedMessage};
use std::sync::Arc;

/// What becomes of settled deliveries.
#[derive(Clone, Copy)]
pub enum Settle {
    Ack,
    Requeue,
    /// nack/reject without requeue: dead-lettered as `rejected`.
    Reject,
}

impl Settle {
    pub fn nack(requeue: bool) -> Self {
        if requeue {
            Settle::Requeue
        } else {
            Settle::Reject
        }
    }
}

/// Settles deliveries, each given as its queue, its consumer (none for a
/// basic.get) and the message: grouped per queue, one call each.
pub fn settle(
    taken: impl IntoIterator<Item = (Arc<Queue>, Option<Arc<Consumer>>, QueuedMessage)>,
    how: Settle,
) {
    let mut by_queue: Vec<(Arc<Queue>, Vec<QueuedMessage>)> = Vec::new();
    let mut offsets = stream::AckedOffsets::default();
    for (queue, consumer, message) in taken {
        if let (Settle::Ack, Some(_), Some(consumer)) = (how, queue.stream(), &consumer) {
            offsets.acked(&queue, consumer, message.seq);
        }
        match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &queue)) {
            Some((_, list)) => list.push(message),
            None => by_queue.push((queue, vec![message])),
        }
    }
    offsets.track();
    for (queue, messages) in by_queue {
        queue.settle(messages, how);
    }
}

impl Queue {
    fn settle(self: &Arc<Self>, messages: Vec<QueuedMessage>, how: Settle) {
        if self.is_remote() {
            if let Some(host) = self.host.upgrade() {
                host.settle_remote(self, messages, how);
            }
            return;
        }
        match how {
            Settle::Requeue => self.requeue(messages),
            Settle::Reject => self.rejected(messages),
            Settle::Ack => {
                self.acked(&messages);
                if let Some(stream) = self.stream() {
                    stream.store_tracked();
                }
                self.dispatch();
            }
        }
    }
}
