//! A consumer as a queue sees it: credit, priority, and a sink that takes
//! deliveries (implemented by the connection layer, so the queue never
//! touches a socket).

use super::{Queue, QueuedMessage};
use crate::protocol::FieldTable;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

/// Whether a consumer can take a message now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Credit {
    Yes,
    /// Prefetch is used up; an ack will dispatch again.
    No,
    /// The connection's write side is backed up; it will ask for dispatch
    /// again once drained.
    Saturated,
}

/// The channel side of a consumer.
pub trait DeliverySink: Send + Sync {
    /// Channel-level limits (global prefetch, write back-pressure).
    fn credit(&self) -> Credit;
    /// Takes one message for `consumer`. Called with the queue locked, in
    /// queue order; must not block.
    fn deliver(&self, consumer: &Arc<Consumer>, queue: &Arc<Queue>, message: QueuedMessage);
    /// Takes a delivery relayed from another node's queue, unless the
    /// channel is closing (then false: the queue's node takes it back).
    fn deliver_relayed(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        message: QueuedMessage,
    ) -> bool {
        self.deliver(consumer, queue, message);
        true
    }
    /// The queue was deleted under this consumer.
    fn cancelled(&self, consumer_tag: &str);
    /// Asks to call `queue.dispatch()` once the connection can write again.
    fn wake_when_writable(&self, queue: Weak<Queue>);
    /// Identifies the channel: (connection id, channel number).
    fn channel_key(&self) -> (u64, u16);
}

pub struct Consumer {
    pub tag: Arc<str>,
    pub no_ack: bool,
    pub exclusive: bool,
    pub priority: i32,
    /// Per-consumer prefetch; 0 = unlimited.
    pub prefetch: u32,
    /// Delivered and not yet acked by this consumer.
    pub unacked: AtomicU32,
    pub arguments: FieldTable,
    pub sink: Arc<dyn DeliverySink>,
}

impl Consumer {
    pub fn credit(&self) -> Credit {
        if !self.no_ack
            && self.prefetch != 0
            && self.unacked.load(Ordering::Relaxed) >= self.prefetch
        {
            return Credit::No;
        }
        self.sink.credit()
    }

    pub fn on_channel(&self, key: (u64, u16)) -> bool {
        self.sink.channel_key() == key
    }
}
