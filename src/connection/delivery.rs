//! The channel side of consuming: delivery tags, unacked messages, and the
//! credit rules (per-consumer and per-channel prefetch, write back-pressure).
//! Queues call into this (as a `DeliverySink`) with their own lock held, so
//! this lock is always taken after a queue's and never the other way round.

use super::output::{Outbound, Output};
use crate::broker::queue::{Consumer, Credit, DeliverySink, Queue, QueuedMessage};
use crate::broker::registry::ChannelStats;
use amq_protocol::protocol::basic::{AMQPMethod, Cancel};
use amq_protocol::protocol::AMQPClass;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

pub struct Unacked {
    pub queue: Arc<Queue>,
    pub consumer: Option<Arc<Consumer>>,
    pub message: QueuedMessage,
}

#[derive(Default)]
struct Tags {
    next: u64,
    unacked: UnackedList,
}

/// Unacked deliveries in tag order. Tags only grow, so a delivery is
/// pushed at the back and acks (usually of the oldest) take from the
/// front; tags used by no-ack deliveries leave no holes to store. Cheaper
/// per message than a map (no node allocation or rebalancing).
struct UnackedList<T = Unacked>(VecDeque<(u64, T)>);

impl<T> Default for UnackedList<T> {
    fn default() -> Self {
        UnackedList(VecDeque::new())
    }
}

/// A list this much larger than its contents gives memory back.
const SHRINK_ABOVE: usize = 4096;

impl<T> UnackedList<T> {
    fn push(&mut self, tag: u64, entry: T) {
        debug_assert!(self.0.back().is_none_or(|(last, _)| *last < tag));
        self.0.push_back((tag, entry));
    }

    fn position(&self, tag: u64) -> Option<usize> {
        match self.0.front() {
            Some((first, _)) if *first == tag => Some(0),
            _ => self.0.binary_search_by_key(&tag, |(t, _)| *t).ok(),
        }
    }

    fn remove(&mut self, tag: u64) -> Option<T> {
        let entry = self.0.remove(self.position(tag)?).map(|(_, e)| e);
        self.shrink();
        entry
    }

    /// Every entry up to and including the one tagged `tag`; `None` when
    /// no entry has that tag.
    fn take_through(&mut self, tag: u64) -> Option<Vec<T>> {
        let end = self.position(tag)? + 1;
        let taken = self.0.drain(..end).map(|(_, e)| e).collect();
        self.shrink();
        Some(taken)
    }

    fn take_all(&mut self) -> Vec<T> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// After a burst, a list far larger than what it holds shrinks.
    fn shrink(&mut self) {
        let capacity = self.0.capacity();
        if capacity > SHRINK_ABOVE && self.0.len() < capacity / 8 {
            self.0.shrink_to(capacity / 4);
        }
    }
}

pub struct ChannelDelivery {
    key: (u64, u16),
    output: Arc<Output>,
    tags: Mutex<Tags>,
    unacked_count: AtomicU32,
    /// basic.qos with global=true; 0 = unlimited.
    global_prefetch: AtomicU32,
    cancel_notify: bool,
    closed: AtomicBool,
    /// This channel's message counters (management's channel stats).
    pub stats: Arc<ChannelStats>,
}

impl ChannelDelivery {
    pub fn new(
        connection_id: u64,
        channel: u16,
        output: Arc<Output>,
        cancel_notify: bool,
        stats: Arc<ChannelStats>,
    ) -> Self {
        ChannelDelivery {
            key: (connection_id, channel),
            output,
            tags: Mutex::new(Tags {
                next: 1,
                unacked: UnackedList::default(),
            }),
            unacked_count: AtomicU32::new(0),
            global_prefetch: AtomicU32::new(0),
            cancel_notify,
            closed: AtomicBool::new(false),
            stats,
        }
    }

    pub fn set_global_prefetch(&self, count: u32) {
        self.global_prefetch.store(count, Ordering::Relaxed);
    }

    /// Stops all further deliveries (the channel is closing).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// basic.get-ok: assigns a tag and tracks the message unless no-ack.
    pub fn deliver_get(
        &self,
        queue: &Arc<Queue>,
        message: QueuedMessage,
        remaining: usize,
        no_ack: bool,
    ) {
        let mut tags = self.tags.lock();
        let delivery_tag = tags.next;
        tags.next += 1;
        let (redelivered, body) = (message.redelivered, message.message.clone());
        self.count_delivery(no_ack, redelivered, &self.stats.get, &self.stats.get_no_ack);
        if !no_ack {
            tags.unacked.push(
                delivery_tag,
                Unacked {
                    queue: queue.clone(),
                    consumer: None,
                    message,
                },
            );
            self.unacked_count.fetch_add(1, Ordering::Relaxed);
        }
        self.output.send(Outbound::GetOk {
            channel: self.key.1,
            delivery_tag,
            redelivered,
            message_count: remaining.min(u32::MAX as usize) as u32,
            message: body,
        });
    }

    fn count_delivery(
        &self,
        no_ack: bool,
        redelivered: bool,
        with_ack: &AtomicU64,
        without_ack: &AtomicU64,
    ) {
        let counter = if no_ack { without_ack } else { with_ack };
        counter.fetch_add(1, Ordering::Relaxed);
        if redelivered {
            self.stats.redeliver.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the unacked entries an ack/nack/reject names: one tag, or with
    /// `multiple` every tag up to it (0 = all). An unknown tag is an error.
    pub fn take(&self, delivery_tag: u64, multiple: bool) -> Result<Vec<Unacked>, u64> {
        let mut tags = self.tags.lock();
        let taken: Vec<Unacked> = if multiple {
            if delivery_tag == 0 {
                tags.unacked.take_all()
            } else {
                tags.unacked
                    .take_through(delivery_tag)
                    .ok_or(delivery_tag)?
            }
        } else {
            match tags.unacked.remove(delivery_tag) {
                Some(entry) => vec![entry],
                None => return Err(delivery_tag),
            }
        };
        drop(tags);
        self.release_credit(&taken);
        Ok(taken)
    }

    /// Takes every unacked entry (recover, channel close).
    pub fn take_all(&self) -> Vec<Unacked> {
        let taken = self.tags.lock().unacked.take_all();
        self.release_credit(&taken);
        taken
    }

    fn release_credit(&self, taken: &[Unacked]) {
        self.unacked_count
            .fetch_sub(taken.len() as u32, Ordering::Relaxed);
        for entry in taken {
            if let Some(consumer) = &entry.consumer {
                consumer.unacked.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl ChannelDelivery {
    /// One delivery; with `unless_closed`, none once the channel is
    /// closing (checked under the tags lock, which `take_all` also takes
    /// after the channel is marked closed: a delivery taken here is either
    /// refused or requeued by the close).
    #[inline]
    fn deliver_unless_closed(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        message: QueuedMessage,
        unless_closed: bool,
    ) -> bool {
        let consumer_tag = consumer.tag.clone();
        let mut tags = self.tags.lock();
        if unless_closed && self.closed.load(Ordering::Acquire) {
            return false;
        }
        let delivery_tag = tags.next;
        tags.next += 1;
        let (redelivered, body) = (message.redelivered, message.message.clone());
        self.count_delivery(
            consumer.no_ack,
            redelivered,
            &self.stats.deliver,
            &self.stats.deliver_no_ack,
        );
        if !consumer.no_ack {
            consumer.unacked.fetch_add(1, Ordering::Relaxed);
            self.unacked_count.fetch_add(1, Ordering::Relaxed);
            tags.unacked.push(
                delivery_tag,
                Unacked {
                    queue: queue.clone(),
                    consumer: Some(consumer.clone()),
                    message,
                },
            );
        }
        // Sent under the lock so that tags reach the socket in order.
        self.output.send(Outbound::Deliver {
            channel: self.key.1,
            consumer_tag,
            delivery_tag,
            redelivered,
            message: body,
        });
        true
    }
}

impl DeliverySink for ChannelDelivery {
    fn credit(&self) -> Credit {
        if self.closed.load(Ordering::Acquire) {
            return Credit::No;
        }
        let global = self.global_prefetch.load(Ordering::Relaxed);
        if global != 0 && self.unacked_count.load(Ordering::Relaxed) >= global {
            return Credit::No;
        }
        if self.output.is_saturated() {
            return Credit::Saturated;
        }
        Credit::Yes
    }

    fn deliver(&self, consumer: &Arc<Consumer>, queue: &Arc<Queue>, message: QueuedMessage) {
        self.deliver_unless_closed(consumer, queue, message, false);
    }

    fn deliver_relayed(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        message: QueuedMessage,
    ) -> bool {
        self.deliver_unless_closed(consumer, queue, message, true)
    }

    fn cancelled(&self, consumer_tag: &str) {
        if self.cancel_notify && !self.closed.load(Ordering::Acquire) {
            self.output.method(
                self.key.1,
                AMQPClass::Basic(AMQPMethod::Cancel(Cancel {
                    consumer_tag: crate::protocol::text::short(consumer_tag),
                    nowait: true,
                })),
            );
        }
    }

    fn wake_when_writable(&self, queue: Weak<Queue>) {
        self.output.wake_when_writable(queue);
    }

    fn channel_key(&self) -> (u64, u16) {
        self.key
    }
}

#[cfg(test)]
mod tests {
    use super::UnackedList;

    #[test]
    fn unacked_list_takes_by_tag_with_gaps() {
        let mut list = UnackedList::default();
        // Tags 2, 4 and 6 went to a no-ack consumer: never stored.
        for tag in [1, 3, 5, 7, 8, 9] {
            list.push(tag, tag * 10);
        }
        assert!(list.position(2).is_none());
        assert_eq!(list.take_through(2), None);
        assert_eq!(list.remove(2), None);
        assert_eq!(list.remove(5), Some(50));
        assert_eq!(list.remove(5), None);
        assert!(list.position(1).is_some() && list.position(9).is_some());
        // multiple=true through 7 takes 1, 3 and 7; 8 and 9 stay.
        assert_eq!(list.take_through(7), Some(vec![10, 30, 70]));
        assert_eq!(list.remove(1), None);
        assert_eq!(list.take_all(), vec![80, 90]);
        assert!(list.take_all().is_empty());
    }

    #[test]
    fn unacked_list_gives_memory_back_after_a_burst() {
        let mut list = UnackedList::default();
        for tag in 1..=100_000u64 {
            list.push(tag, ());
        }
        let burst = list.0.capacity();
        assert!(list.take_through(99_990).is_some());
        assert_eq!(list.0.len(), 10);
        assert!(list.0.capacity() < burst / 2, "{}", list.0.capacity());
    }
}
