//! Classic queue: ready messages in FIFO order, consumers served round-robin
//! (highest priority first), unacked messages counted until acked or
//! requeued at their original position.
//!
//! All state sits behind one short-held mutex; nothing awaits while holding
//! it, and deliveries are handed to the consumer's channel without copying
//! the body.

mod consumer;

pub use consumer::{Consumer, Credit, DeliverySink};

use super::message::Message;
use crate::protocol::{AmqpError, FieldTable};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct QueueOptions {
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub arguments: FieldTable,
}

/// A message in a queue, with its position (for requeue order).
#[derive(Clone, Debug)]
pub struct QueuedMessage {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<QueuedMessage>,
    ready_bytes: usize,
    next_seq: u64,
    consumers: Vec<Arc<Consumer>>,
    /// Round-robin position among consumers.
    next_consumer: usize,
    ever_had_consumer: bool,
}

/// Counters read by management and metrics without taking the lock.
#[derive(Default)]
pub struct QueueCounters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub redelivered: AtomicU64,
}

pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub options: QueueOptions,
    state: Mutex<QueueState>,
    unacked: AtomicUsize,
    deleted: AtomicBool,
    pub counters: QueueCounters,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queue({})", self.name)
    }
}

impl Queue {
    pub fn new(name: String, vhost: String, options: QueueOptions) -> Self {
        Queue {
            name,
            vhost,
            options,
            state: Mutex::new(QueueState::default()),
            unacked: AtomicUsize::new(0),
            deleted: AtomicBool::new(false),
            counters: QueueCounters::default(),
        }
    }

    /// `queue 'q' in vhost 'v'`, as RabbitMQ names resources in errors.
    pub fn resource(&self) -> String {
        format!("queue '{}' in vhost '{}'", self.name, self.vhost)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn is_exclusive(&self) -> bool {
        self.options.exclusive_owner.is_some()
    }

    /// Whether connection `conn` may use this queue (405 otherwise).
    pub fn check_access(&self, conn: u64) -> Result<(), AmqpError> {
        match self.options.exclusive_owner {
            Some(owner) if owner != conn => Err(self.locked_error()),
            _ => Ok(()),
        }
    }

    pub fn locked_error(&self) -> AmqpError {
        AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            self.resource()
        ))
    }

    pub fn message_count(&self) -> usize {
        self.state.lock().ready.len()
    }

    pub fn unacked_count(&self) -> usize {
        self.unacked.load(Ordering::Relaxed)
    }

    pub fn consumer_count(&self) -> usize {
        self.state.lock().consumers.len()
    }

    /// (ready, ready bytes, consumers) in one lock.
    pub fn snapshot(&self) -> (usize, usize, usize) {
        let st = self.state.lock();
        (st.ready.len(), st.ready_bytes, st.consumers.len())
    }

    /// Appends a message and hands it on if a consumer has credit.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) {
        if self.is_deleted() {
            return;
        }
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready_bytes += message.body_size();
        st.ready.push_back(QueuedMessage {
            seq,
            message,
            redelivered: false,
        });
        self.dispatch_locked(&mut st);
    }

    /// Delivers ready messages while some consumer has credit.
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let Some(index) = pick_consumer(st, self) else {
                return;
            };
            let Some(queued) = st.ready.pop_front() else {
                return;
            };
            st.ready_bytes -= queued.message.body_size();
            let consumer = st.consumers[index].clone();
            st.next_consumer = index + 1;
            self.record_delivery(&queued, consumer.no_ack);
            consumer.sink.deliver(&consumer, self, queued);
        }
    }

    fn record_delivery(&self, queued: &QueuedMessage, no_ack: bool) {
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        if queued.redelivered {
            self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        if !no_ack {
            self.unacked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// basic.get: the head message and how many remain.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueuedMessage, usize)> {
        let mut st = self.state.lock();
        let queued = st.ready.pop_front()?;
        st.ready_bytes -= queued.message.body_size();
        self.record_delivery(&queued, no_ack);
        Some((queued, st.ready.len()))
    }

    /// 403 when an exclusive consumer is in the way.
    pub fn check_consumer_allowed(&self, exclusive: bool) -> Result<(), AmqpError> {
        let st = self.state.lock();
        self.check_exclusive_use(&st, exclusive)
    }

    fn check_exclusive_use(&self, st: &QueueState, exclusive: bool) -> Result<(), AmqpError> {
        if st.consumers.iter().any(|c| c.exclusive) || (exclusive && !st.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!(
                "{} in exclusive use",
                self.resource()
            )));
        }
        Ok(())
    }

    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> Result<(), AmqpError> {
        let mut st = self.state.lock();
        self.check_exclusive_use(&st, consumer.exclusive)?;
        st.consumers.push(consumer);
        st.ever_had_consumer = true;
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// Removes a consumer. Returns it, and whether the queue should now be
    /// auto-deleted (it had consumers and this was the last).
    pub fn remove_consumer(&self, tag: &str, channel: (u64, u16)) -> Option<(Arc<Consumer>, bool)> {
        let mut st = self.state.lock();
        let pos = st
            .consumers
            .iter()
            .position(|c| c.tag == tag && c.on_channel(channel))?;
        let consumer = st.consumers.remove(pos);
        let auto_delete =
            self.options.auto_delete && st.ever_had_consumer && st.consumers.is_empty();
        Some((consumer, auto_delete))
    }

    /// Acked messages leave the queue for good.
    pub fn acked(&self, count: usize) {
        self.unacked
            .fetch_sub(count.min(self.unacked_count()), Ordering::Relaxed);
        self.counters
            .acked
            .fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Puts unacked messages back at their original positions, flagged
    /// redelivered, then dispatches.
    pub fn requeue(self: &Arc<Self>, mut messages: Vec<QueuedMessage>) {
        if messages.is_empty() {
            return;
        }
        self.unacked
            .fetch_sub(messages.len().min(self.unacked_count()), Ordering::Relaxed);
        if self.is_deleted() {
            return;
        }
        messages.sort_by_key(|m| m.seq);
        let mut st = self.state.lock();
        for mut queued in messages {
            queued.redelivered = true;
            st.ready_bytes += queued.message.body_size();
            let pos = st.ready.partition_point(|m| m.seq < queued.seq);
            st.ready.insert(pos, queued);
        }
        self.dispatch_locked(&mut st);
    }

    /// Drops all ready messages; returns how many.
    pub fn purge(&self) -> usize {
        let mut st = self.state.lock();
        let count = st.ready.len();
        st.ready.clear();
        st.ready_bytes = 0;
        count
    }

    /// Marks the queue deleted and returns its consumers (to be told) and
    /// the number of ready messages dropped.
    pub fn mark_deleted(&self) -> (Vec<Arc<Consumer>>, usize) {
        self.deleted.store(true, Ordering::Release);
        let mut st = self.state.lock();
        let count = st.ready.len();
        st.ready.clear();
        st.ready_bytes = 0;
        (std::mem::take(&mut st.consumers), count)
    }
}

/// The consumer to serve next: among those with credit, the highest
/// priority, round-robin within a priority. Consumers held back by write
/// back-pressure ask to be woken.
fn pick_consumer(st: &QueueState, queue: &Arc<Queue>) -> Option<usize> {
    let n = st.consumers.len();
    let mut best: Option<usize> = None;
    let mut saturated = Vec::new();
    for i in 0..n {
        let index = (st.next_consumer + i) % n;
        let consumer = &st.consumers[index];
        match consumer.credit() {
            Credit::Yes => {
                if best.is_none_or(|b| consumer.priority > st.consumers[b].priority) {
                    best = Some(index);
                }
            }
            Credit::Saturated => saturated.push(index),
            Credit::No => {}
        }
    }
    if best.is_none() {
        for index in saturated {
            st.consumers[index]
                .sink
                .wake_when_writable(Arc::downgrade(queue));
        }
    }
    best
}
