//! Classic queue: ready messages in FIFO order (per priority level for a
//! priority queue), consumers served round-robin (highest consumer priority
//! first), unacked messages counted until acked or requeued at their
//! original position. TTL, length limits, delivery limits and dead-lettering
//! follow RabbitMQ's semantics.
//!
//! All state sits behind one short-held mutex; nothing awaits while holding
//! it. Dead letters are collected under the lock and republished after it is
//! released, so two queues dead-lettering into each other cannot deadlock.

mod arguments;
pub mod classic;
mod consumer;
pub mod dead_letter;
mod host;
mod kind;
mod page_io;
pub mod paging;
pub mod quorum;
mod ready;
pub mod remote;
mod settle;
pub mod stream;

pub use arguments::{Overflow, QueueArguments};
pub use consumer::{Consumer, Credit, DeliverySink};
pub use dead_letter::Reason;
pub use host::{Delivered, QueueHost};
use kind::Kind;
pub use kind::{DeclareProperties, Members, QueueType};
pub use settle::{settle, Settle};

use super::message::Message;
use super::policy::Policy;
use crate::protocol::{AMQPValue, AmqpError, FieldTable};
use crate::store::MessageLog;
use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use ready::Ready;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

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
    /// When it expires: the lower of the queue's and the message's TTL.
    pub expires_at: Option<Instant>,
    /// How many times it was delivered and came back (x-delivery-limit).
    pub delivery_count: u32,
}

struct QueueState {
    ready: Ready,
    next_seq: u64,
    consumers: Vec<Arc<Consumer>>,
    /// Round-robin position among consumers.
    next_consumer: usize,
    ever_had_consumer: bool,
    /// When the armed expiry timer fires, if one is armed.
    expiry_timer: Option<Instant>,
    /// Last use, for `x-expires`.
    last_used: Instant,
    /// Whether a message with an expiry was queued since the queue was
    /// last seen empty.
    may_expire: bool,
}

/// Counters read by management and metrics without taking the lock
/// (relaxed atomics). `delivered` is the sum of the four delivery kinds
/// (RabbitMQ's `deliver_get`), kept as one counter for the rate sampler.
#[derive(Default)]
pub struct QueueCounters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub redelivered: AtomicU64,
    /// To consumers in manual-ack mode (RabbitMQ's `deliver`).
    pub deliver: AtomicU64,
    /// To consumers in auto-ack mode (`deliver_no_ack`).
    pub deliver_no_ack: AtomicU64,
    /// basic.get in manual-ack mode (`get`).
    pub get: AtomicU64,
    /// basic.get in auto-ack mode (`get_no_ack`).
    pub get_no_ack: AtomicU64,
    /// basic.get on an empty queue (`get_empty`).
    pub get_empty: AtomicU64,
    /// The last two read-time samples of `kinds()`, oldest first, for
    /// their rates (taken by management reads, never on the hot path).
    kind_samples: Mutex<[Option<KindSample>; 2]>,
    /// Since when management reads saw no activity (`idle_since`).
    pub idle: crate::broker::registry::IdleMark,
}

/// When the delivery kinds were sampled, and their counts.
type KindSample = (Instant, [u64; 5]);

impl QueueCounters {
    /// Counts one delivery of the given kind.
    fn delivery(&self, get: bool, no_ack: bool) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let kind = match (get, no_ack) {
            (false, false) => &self.deliver,
            (false, true) => &self.deliver_no_ack,
            (true, false) => &self.get,
            (true, true) => &self.get_no_ack,
        };
        kind.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything the queue did: messages in, out and acked, empty gets.
    pub fn activity(&self) -> u64 {
        [
            &self.published,
            &self.delivered,
            &self.acked,
            &self.get_empty,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .fold(0u64, u64::wrapping_add)
    }

    /// `deliver`, `deliver_no_ack`, `get`, `get_no_ack`, `get_empty`.
    pub fn kinds(&self) -> [u64; 5] {
        [
            &self.deliver,
            &self.deliver_no_ack,
            &self.get,
            &self.get_no_ack,
            &self.get_empty,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }

    /// The counts of `kinds()` and their per-second rates between the
    /// last two samples. A read samples again when the newest sample is at
    /// least `interval` old, so the rate covers the last `interval` or,
    /// when reads are rarer, the time between the last two reads.
    pub fn kinds_with_rates(&self, interval: Duration) -> [(u64, f64); 5] {
        let now = Instant::now();
        let counts = self.kinds();
        let mut samples = self.kind_samples.lock();
        let due = samples[1].is_none_or(|(at, _)| now.duration_since(at) >= interval);
        if due {
            samples[0] = samples[1].take();
            samples[1] = Some((now, counts));
        }
        let mut rates = [0.0; 5];
        if let [Some((t0, a)), Some((t1, b))] = *samples {
            let secs = t1.duration_since(t0).as_secs_f64();
            if secs > 0.0 {
                for (rate, (a, b)) in rates.iter_mut().zip(a.iter().zip(b.iter())) {
                    *rate = b.saturating_sub(*a) as f64 / secs;
                }
            }
        }
        let mut out = [(0, 0.0); 5];
        for (slot, (count, rate)) in out.iter_mut().zip(counts.into_iter().zip(rates)) {
            *slot = (count, rate);
        }
        out
    }
}

/// The queues a message was routed to: almost always one or two, kept
/// inline (no allocation per published message).
pub type RoutedQueues = smallvec::SmallVec<[Arc<Queue>; 2]>;

/// Messages leaving the queue for its dead-letter exchange.
type DeadLetters = Vec<(Arc<Message>, Reason)>;

pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub options: QueueOptions,
    /// The declared arguments.
    pub args: QueueArguments,
    /// The arguments in force: the declared ones with the policy applied.
    effective: ArcSwap<QueueArguments>,
    /// The policy that applies, if any.
    policy: ArcSwapOption<Policy>,
    /// Whether the `x-expires` timer task runs, and its wake-up when the
    /// period changes.
    expiry_task: AtomicBool,
    expiry_changed: Arc<tokio::sync::Notify>,
    /// The vhost, to dead-letter through and to be removed from.
    host: Weak<dyn QueueHost>,
    /// The message log, for a durable queue: persistent messages in it are
    /// stored there until they leave the queue.
    log: Option<Arc<MessageLog>>,
    /// `x-message-deduplication`: repeats of a recent key are dropped.
    dedup: Option<crate::broker::dedup::Deduplicator>,
    /// The queue's type, holding what the type itself needs (a stream's
    /// log and readers).
    kind: Kind,
    /// A cluster's queue: its definition is on every node (see `remote`).
    shared: bool,
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

/// Whether a queue took a published message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    Yes,
    /// Refused by `x-overflow: reject-publish(-dlx)`: nack the publisher.
    Refused,
    /// Taken into a log of the queue's own (a stream): a confirm waits
    /// until the log has synced past this sequence.
    Logged(u64),
}

impl Queue {
    pub fn new(name: String, vhost: String, options: QueueOptions) -> Self {
        Self::with_arguments(
            name,
            vhost,
            options,
            QueueArguments::default(),
            Weak::<host::NoHost>::new(),
            None,
        )
    }

    /// A queue of the vhost `host`, paging against its broker's budget (a
    /// queue without a vhost has a budget of its own).
    pub fn with_arguments(
        name: String,
        vhost: String,
        options: QueueOptions,
        args: QueueArguments,
        host: Weak<dyn QueueHost>,
        log: Option<Arc<MessageLog>>,
    ) -> Self {
        let dedup = crate::broker::dedup::Deduplicator::from_arguments(&options.arguments);
        let args_type = args.queue_type;
        let paging = paging::Limits::from_arguments(&options.arguments);
        let pages = host
            .upgrade()
            .map_or_else(Default::default, |h| h.page_budget());
        Queue {
            name,
            vhost,
            options,
            state: Mutex::new(QueueState {
                ready: Ready::with_limits(args.max_priority, paging, pages),
                next_seq: 0,
                consumers: Vec::new(),
                next_consumer: 0,
                ever_had_consumer: false,
                expiry_timer: None,
                may_expire: false,
                last_used: Instant::now(),
            }),
            dedup,
            effective: ArcSwap::from_pointee(args.clone()),
            policy: ArcSwapOption::empty(),
            expiry_task: AtomicBool::new(false),
            expiry_changed: Default::default(),
            args,
            host,
            kind: Kind::of(args_type),
            shared: false,
            log,
            unacked: AtomicUsize::new(0),
            deleted: AtomicBool::new(false),
            counters: QueueCounters::default(),
        }
    }

    /// Makes it page against `pages`, the broker's budget: for a queue
    /// made without a vhost (`new`), which otherwise has a budget of its
    /// own. Before it holds any message.
    pub fn with_page_budget(mut self, pages: Arc<paging::PageBudget>) -> Self {
        let limits = paging::Limits::from_arguments(&self.options.arguments);
        self.state.get_mut().ready = Ready::with_limits(self.args.max_priority, limits, pages);
        self
    }

    /// The stream, for a stream queue.
    pub fn stream(&self) -> Option<&Arc<stream::Stream>> {
        match &self.kind {
            Kind::Stream(stream) => Some(stream),
            Kind::Classic | Kind::Quorum | Kind::Remote(_) => None,
        }
    }

    /// `classic`, `quorum` or `stream`.
    pub fn type_name(&self) -> &'static str {
        self.queue_type().name()
    }

    pub fn queue_type(&self) -> QueueType {
        self.kind.queue_type()
    }

    /// Appends a message to this stream queue (every stream message is
    /// stored, persistent or not). Returns the log sequence a confirm waits
    /// for; `None` for a deleted queue.
    fn append_to_stream(&self, stream: &stream::Stream, message: Arc<Message>) -> Option<u64> {
        if self.is_deleted() {
            return None;
        }
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        Some(stream.append(message))
    }

    /// A stream reader handed a message to a consumer.
    pub(crate) fn stream_delivered(&self, no_ack: bool) {
        self.counters.delivery(false, no_ack);
        if !no_ack {
            self.unacked.fetch_add(1, Ordering::Relaxed);
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
        match &self.kind {
            Kind::Stream(stream) => stream.message_count(),
            // Known on its node only.
            Kind::Classic | Kind::Quorum | Kind::Remote(_) => self.state.lock().ready.len(),
        }
    }

    pub fn unacked_count(&self) -> usize {
        self.unacked.load(Ordering::Relaxed)
    }

    pub fn consumer_count(&self) -> usize {
        match &self.kind {
            Kind::Stream(stream) => stream.consumer_count(),
            Kind::Classic | Kind::Quorum | Kind::Remote(_) => self.state.lock().consumers.len(),
        }
    }

    /// (ready, ready bytes, consumers) in one lock.
    pub fn snapshot(&self) -> (usize, usize, usize) {
        if let Kind::Stream(stream) = &self.kind {
            return (
                stream.message_count(),
                stream.log.bytes() as usize,
                stream.consumer_count(),
            );
        }
        let st = self.state.lock();
        (st.ready.len(), st.ready.bytes(), st.consumers.len())
    }

    /// Whether persistent messages in this classic queue go to the message
    /// log (durable and not exclusive, with a data directory).
    pub fn stores_messages(&self) -> bool {
        self.log.is_some() && !matches!(self.kind, Kind::Stream(_))
    }

    /// Whether this queue keeps `message` in the message log.
    pub fn stores(&self, message: &Message) -> bool {
        self.log.is_some() && message.store_id.is_some()
    }

    /// The message left this queue for good: its log entry for this queue
    /// can go.
    fn forget(&self, message: &Message) {
        if let Some(id) = message.store_id {
            self.forget_id(id);
        }
    }

    fn forget_id(&self, id: u64) {
        if let Some(log) = &self.log {
            log.remove(id, &self.vhost, &self.name);
        }
    }

    /// Forgets what `Ready::drain` took out; returns how many messages.
    fn forget_drained(&self, drained: ready::Drained) -> usize {
        for m in &drained.messages {
            self.forget(&m.message);
        }
        for id in drained.store_ids {
            self.forget_id(id);
        }
        drained.count
    }

    /// How many ready messages are paged out to disk.
    pub fn paged_count(&self) -> usize {
        self.state.lock().ready.paged_len()
    }

    /// The queue's page files (see `paging`), once the page I/O thread
    /// has done what was asked of it so far.
    pub fn page_files(&self) -> Vec<std::path::PathBuf> {
        let budget = self.state.lock().ready.page_budget();
        budget.settle_io();
        self.state.lock().ready.page_files()
    }

    /// Batches of paged messages read back through a read-ahead.
    pub fn prefetched_page_batches(&self) -> u64 {
        self.state.lock().ready.prefetched_batches()
    }

    /// Puts a message read back from the log at the tail (start-up only).
    pub fn restore(self: &Arc<Self>, message: Arc<Message>, redelivered: bool) {
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let expires_at = self.expiry_of(&self.effective.load(), &message);
        st.may_expire |= expires_at.is_some();
        st.ready.push_back(QueuedMessage {
            seq,
            message,
            redelivered,
            expires_at,
            delivery_count: 0,
        });
    }

    /// Records a use (declare, get, consumer gone) for `x-expires`.
    pub fn touch(&self) {
        self.state.lock().last_used = Instant::now();
    }

    /// When `message` expires in this queue: the lower of the queue's and
    /// the message's TTL (the clock is read only if there is one).
    fn expiry_of(&self, args: &QueueArguments, message: &Message) -> Option<Instant> {
        let per_message = message
            .properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().trim_start_matches('+').parse::<u64>().ok());
        let ttl = match (args.message_ttl, per_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|ms| Instant::now() + Duration::from_millis(ms))
    }

    fn over_limit(
        args: &QueueArguments,
        st: &QueueState,
        extra_bytes: usize,
        extra: usize,
    ) -> bool {
        args.max_length
            .is_some_and(|max| (st.ready.len() + extra) as u64 > max)
            || args
                .max_length_bytes
                .is_some_and(|max| (st.ready.bytes() + extra_bytes) as u64 > max)
    }

    /// Appends a message and hands it on if a consumer has credit.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> Accepted {
        if let Kind::Stream(stream) = &self.kind {
            // Every stream message is stored: a confirm waits for its log
            // sequence.
            return match self.append_to_stream(stream, message) {
                Some(seq) => Accepted::Logged(seq),
                None => Accepted::Yes,
            };
        }
        if self.is_deleted() {
            // Raced with the queue's deletion: it will never hold the message.
            self.forget(&message);
            return Accepted::Yes;
        }
        if self
            .dedup
            .as_ref()
            .is_some_and(|d| d.is_duplicate(&message))
        {
            self.forget(&message);
            return Accepted::Yes;
        }
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let mut dead = DeadLetters::new();
        let accepted = {
            let mut st = self.state.lock();
            // One load of the arguments in force for the whole publish.
            let args = self.effective.load();
            let overflow = args.overflow;
            let refuse = overflow != Overflow::DropHead
                && Self::over_limit(&args, &st, message.body_size(), 1);
            if refuse {
                if overflow == Overflow::RejectPublishDlx {
                    dead.push((message, Reason::Maxlen));
                } else {
                    self.forget(&message);
                }
                Accepted::Refused
            } else {
                let seq = st.next_seq;
                st.next_seq += 1;
                let expires_at = self.expiry_of(&args, &message);
                st.may_expire |= expires_at.is_some();
                let queued = QueuedMessage {
                    seq,
                    message,
                    redelivered: false,
                    expires_at,
                    delivery_count: 0,
                };
                // Nothing waiting and a consumer ready: hand it over at once.
                // This is also how a TTL of 0 gets delivered rather than
                // expired.
                let direct = if st.ready.is_empty() && !st.consumers.is_empty() {
                    pick_consumer(&st, self)
                } else {
                    None
                };
                match direct {
                    Some(index) => {
                        let consumer = st.consumers[index].clone();
                        st.next_consumer = index + 1;
                        self.record_delivery(&queued, false, consumer.no_ack);
                        consumer.sink.deliver(&consumer, self, queued);
                    }
                    None => st.ready.push_back(queued),
                }
                // drop-head: the oldest go, dead-lettered as maxlen.
                while Self::over_limit(&args, &st, 0, 0) {
                    match st.ready.pop_oldest_lowest() {
                        Some(old) => dead.push((old.message, Reason::Maxlen)),
                        None => break,
                    }
                }
                self.dispatch_locked(&mut st, &mut dead);
                Accepted::Yes
            }
        };
        self.dead_letter(dead);
        accepted
    }

    /// Delivers ready messages while some consumer has credit.
    pub fn dispatch(self: &Arc<Self>) {
        if let Kind::Stream(stream) = &self.kind {
            stream.wake();
            return;
        }
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            self.dispatch_locked(&mut st, &mut dead);
        }
        self.dead_letter(dead);
    }

    /// Drops expired messages at the head (RabbitMQ expires from the head
    /// only), then arms a timer for the next head expiry.
    fn expire_head(self: &Arc<Self>, st: &mut QueueState, dead: &mut DeadLetters) {
        // Nothing that can expire was queued since the queue was last empty:
        // skip the clock and the head lookup (most queues, most publishes).
        if !st.may_expire {
            return;
        }
        if st.ready.is_empty() {
            st.may_expire = false;
            return;
        }
        let now = Instant::now();
        while st
            .ready
            .front()
            .is_some_and(|m| m.expires_at.is_some_and(|at| at <= now))
        {
            if let Some(expired) = st.ready.pop_front() {
                dead.push((expired.message, Reason::Expired));
            }
        }
        let Some(at) = st.ready.front().and_then(|m| m.expires_at) else {
            return;
        };
        if st.expiry_timer.is_some_and(|armed| armed <= at) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        st.expiry_timer = Some(at);
        let queue = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            if let Some(queue) = queue.upgrade() {
                queue.state.lock().expiry_timer = None;
                queue.dispatch();
            }
        });
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState, dead: &mut DeadLetters) {
        loop {
            self.expire_head(st, dead);
            if st.ready.is_empty() || st.consumers.is_empty() {
                return;
            }
            let Some(index) = pick_consumer(st, self) else {
                return;
            };
            let Some(queued) = st.ready.pop_front() else {
                return;
            };
            let consumer = st.consumers[index].clone();
            st.next_consumer = index + 1;
            self.record_delivery(&queued, false, consumer.no_ack);
            consumer.sink.deliver(&consumer, self, queued);
        }
    }

    /// Counts a delivery to a consumer, or to basic.get when `get`.
    fn record_delivery(&self, queued: &QueuedMessage, get: bool, no_ack: bool) {
        self.counters.delivery(get, no_ack);
        if queued.redelivered {
            self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        if no_ack {
            // Auto-ack: delivered means gone.
            self.forget(&queued.message);
        } else {
            self.unacked.fetch_add(1, Ordering::Relaxed);
            if let (Some(log), Some(id)) = (&self.log, queued.message.store_id) {
                log.delivered(id, &self.vhost, &self.name);
            }
        }
    }

    /// basic.get: the head message and how many remain.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueuedMessage, usize)> {
        let mut dead = DeadLetters::new();
        let got = {
            let mut st = self.state.lock();
            st.last_used = Instant::now();
            self.expire_head(&mut st, &mut dead);
            let got = st.ready.pop_front().map(|queued| {
                self.record_delivery(&queued, true, no_ack);
                (queued, st.ready.len())
            });
            if got.is_none() {
                self.counters.get_empty.fetch_add(1, Ordering::Relaxed);
            }
            got
        };
        self.dead_letter(dead);
        got
    }

    /// Management's browse: copies of up to `count` ready messages from
    /// position `offset` (0 = the head), and how many are ready in all.
    /// Nothing is taken, reordered or flagged redelivered; expired head
    /// messages go first, as for a get. Not for stream queues.
    pub fn browse(self: &Arc<Self>, offset: usize, count: usize) -> (Vec<QueuedMessage>, usize) {
        let mut dead = DeadLetters::new();
        let browsed = {
            let mut st = self.state.lock();
            self.expire_head(&mut st, &mut dead);
            (st.ready.peek(offset, count), st.ready.len())
        };
        self.dead_letter(dead);
        browsed
    }

    /// 403 when an exclusive consumer is in the way.
    pub fn check_consumer_allowed(&self, exclusive: bool) -> Result<(), AmqpError> {
        if let Kind::Stream(_) = &self.kind {
            return Ok(());
        }
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
        if let Kind::Stream(stream) = &self.kind {
            let (spec, filter) = stream::consume_options(&self.resource(), &consumer.arguments)?;
            stream.add_consumer(self, consumer, spec, filter);
            return Ok(());
        }
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            self.check_exclusive_use(&st, consumer.exclusive)?;
            st.consumers.push(consumer);
            st.ever_had_consumer = true;
            self.dispatch_locked(&mut st, &mut dead);
        }
        self.dead_letter(dead);
        Ok(())
    }

    /// Removes a consumer. Returns it, and whether the queue should now be
    /// auto-deleted (it had consumers and this was the last).
    pub fn remove_consumer(
        self: &Arc<Self>,
        tag: &str,
        channel: (u64, u16),
    ) -> Option<(Arc<Consumer>, bool)> {
        if let Kind::Stream(stream) = &self.kind {
            return stream.remove_consumer(tag, channel).map(|c| (c, false));
        }
        let removed = {
            let mut st = self.state.lock();
            let pos = st
                .consumers
                .iter()
                .position(|c| &*c.tag == tag && c.on_channel(channel))?;
            let consumer = st.consumers.remove(pos);
            st.last_used = Instant::now();
            let auto_delete =
                self.options.auto_delete && st.ever_had_consumer && st.consumers.is_empty();
            (consumer, auto_delete, pos == 0)
        };
        // With a single active consumer, the next one in line takes over.
        if self.args.single_active_consumer && removed.2 {
            self.dispatch();
        }
        Some((removed.0, removed.1))
    }

    /// Acked messages leave the queue for good.
    pub fn acked(&self, messages: &[QueuedMessage]) {
        let count = messages.len();
        self.unacked
            .fetch_sub(count.min(self.unacked_count()), Ordering::Relaxed);
        self.counters
            .acked
            .fetch_add(count as u64, Ordering::Relaxed);
        if !matches!(self.kind, Kind::Stream(_)) {
            for m in messages {
                self.forget(&m.message);
            }
        }
    }

    /// Rejected without requeue: the messages leave, dead-lettered as
    /// `rejected` when the queue has a dead-letter exchange.
    pub fn rejected(self: &Arc<Self>, messages: Vec<QueuedMessage>) {
        let count = messages.len();
        self.unacked
            .fetch_sub(count.min(self.unacked_count()), Ordering::Relaxed);
        if let Kind::Stream(_) = &self.kind {
            return;
        }
        self.counters
            .acked
            .fetch_add(count as u64, Ordering::Relaxed);
        // dead_letter records their removal once the copies are stored.
        self.dead_letter(
            messages
                .into_iter()
                .map(|m| (m.message, Reason::Rejected))
                .collect(),
        );
        self.dispatch();
    }

    /// Puts unacked messages back at their original positions, flagged
    /// redelivered, then dispatches. With `x-delivery-limit`, a message that
    /// came back too often is dead-lettered instead.
    pub fn requeue(self: &Arc<Self>, messages: Vec<QueuedMessage>) {
        if messages.is_empty() {
            return;
        }
        self.unacked
            .fetch_sub(messages.len().min(self.unacked_count()), Ordering::Relaxed);
        if let Kind::Stream(stream) = &self.kind {
            // A stream keeps every message; there is nothing to put back,
            // but the credit came back.
            stream.wake();
            return;
        }
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            // Checked under the lock: `mark_deleted` sets the flag before it
            // drains, so nothing put back here can miss that drain.
            if self.is_deleted() {
                drop(st);
                // Nowhere to go back to: they leave for good, or a queue
                // declared later under this name finds them after a restart.
                for m in &messages {
                    self.forget(&m.message);
                }
                return;
            }
            let effective = self.effective.load();
            // Quorum queues count every return (x-delivery-count on each
            // redelivery), with or without a limit.
            let counted =
                effective.delivery_limit.is_some() || self.args.queue_type == QueueType::Quorum;
            for mut queued in messages {
                queued.redelivered = true;
                if counted {
                    queued.delivery_count += 1;
                    if effective
                        .delivery_limit
                        .is_some_and(|limit| queued.delivery_count as u64 > limit)
                    {
                        dead.push((queued.message, Reason::DeliveryLimit));
                        continue;
                    }
                    let mut counted = with_delivery_count(&queued.message, queued.delivery_count);
                    counted.store_id = queued.message.store_id;
                    queued.message = Arc::new(counted);
                }
                st.may_expire |= queued.expires_at.is_some();
                st.ready.insert_by_seq(queued);
            }
            self.dispatch_locked(&mut st, &mut dead);
        }
        self.dead_letter(dead);
    }

    /// Drops all ready messages; returns how many.
    pub fn purge(&self) -> usize {
        let drained = self.state.lock().ready.drain();
        self.forget_drained(drained)
    }

    /// Marks the queue deleted and returns its consumers (to be told) and
    /// the number of ready messages dropped.
    pub fn mark_deleted(&self) -> (Vec<Arc<Consumer>>, usize) {
        self.deleted.store(true, Ordering::Release);
        if let Kind::Stream(stream) = &self.kind {
            let count = stream.message_count();
            return (stream.destroy(), count);
        }
        let (consumers, dropped) = {
            let mut st = self.state.lock();
            (std::mem::take(&mut st.consumers), st.ready.drain())
        };
        (consumers, self.forget_drained(dropped))
    }

    /// Republishes dead letters to the dead-letter exchange (outside the
    /// queue lock); without one they are dropped.
    /// The messages leave this queue; their removal from the log is
    /// recorded after any dead-letter copy was stored.
    fn dead_letter(&self, dead: DeadLetters) {
        if dead.is_empty() {
            return;
        }
        let args = self.effective.load();
        let (Some(dlx), Some(vhost)) = (&args.dead_letter_exchange, self.host.upgrade()) else {
            for (message, _) in &dead {
                self.forget(message);
            }
            return;
        };
        let dlrk = args.dead_letter_routing_key.as_deref();
        for (message, reason) in dead {
            let (letter, keys) = dead_letter::build(&message, &self.name, reason, dlx, dlrk);
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut targets = vhost.route_by_name(dlx, &keys, letter.properties.headers().as_ref());
            targets.retain(|target| {
                let cycle = dead_letter::is_silent_cycle(&letter, &target.name);
                if cycle {
                    tracing::debug!(queue = %target.name, "dead letter dropped: cycle without rejection");
                }
                !cycle
            });
            // A persistent dead letter is stored for its durable targets
            // before the source's removal record reaches the log, so a
            // crash in between keeps it (at least once). A stream's copy is
            // written after the message log's records of its batch: the
            // removal waits for the sync that covers the copy.
            let to_stream = targets.iter().any(|t| t.has_own_log());
            let log_seq = vhost.deliver(letter, &targets).log_seq;
            match (log_seq.filter(|_| to_stream), message.store_id) {
                (Some(seq), Some(id)) if self.log.is_some() => {
                    vhost.remove_after_sync(seq, id, self.name.clone())
                }
                _ => self.forget(&message),
            }
        }
    }

    /// Starts the `x-expires` timer: the queue is deleted once unused for
    /// that long (no consumers, no declare, no get).
    pub fn start_expiry_timer(self: &Arc<Self>) {
        if self.effective.load().expires.is_none() || self.expiry_task.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.expiry_task.store(false, Ordering::Release);
            return;
        };
        let queue = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let Some(q) = queue.upgrade() else { return };
                if q.is_deleted() {
                    return;
                }
                // The period may change with a policy.
                let Some(ms) = q.effective.load().expires else {
                    q.expiry_task.store(false, Ordering::Release);
                    return;
                };
                let idle_until = {
                    let mut st = q.state.lock();
                    if !st.consumers.is_empty() {
                        st.last_used = Instant::now();
                    }
                    st.last_used + Duration::from_millis(ms)
                };
                if Instant::now() >= idle_until {
                    if let Some(vhost) = q.host.upgrade() {
                        tracing::info!(queue = %q.name, "queue expired (x-expires)");
                        vhost.remove_queue(&q);
                    }
                    return;
                }
                let changed = q.expiry_changed.clone();
                drop(q);
                tokio::select! {
                    _ = tokio::time::sleep_until(idle_until.into()) => {}
                    _ = changed.notified() => {}
                }
            }
        });
    }

    /// The policy that applies to this queue changed (or first applies):
    /// the arguments in force are recomputed and new limits enforced now.
    pub fn apply_policy(self: &Arc<Self>, policy: Option<Arc<Policy>>) {
        if let Kind::Stream(_) = &self.kind {
            // Stream retention is set at declaration (see docs/streams.md).
            self.policy.store(policy);
            return;
        }
        let effective = self
            .args
            .with_policy(&self.options.arguments, policy.as_deref());
        self.effective.store(Arc::new(effective));
        self.policy.store(policy);
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            if self.effective.load().overflow == Overflow::DropHead {
                while Self::over_limit(&self.effective.load(), &st, 0, 0) {
                    match st.ready.pop_oldest_lowest() {
                        Some(old) => dead.push((old.message, Reason::Maxlen)),
                        None => break,
                    }
                }
            }
            self.dispatch_locked(&mut st, &mut dead);
        }
        self.dead_letter(dead);
        self.expiry_changed.notify_one();
        self.start_expiry_timer();
    }

    /// The name of the policy in force, if any.
    pub fn policy_name(&self) -> Option<String> {
        self.policy.load().as_ref().map(|p| p.name().to_string())
    }

    /// The policy's definition in force (management's
    /// `effective_policy_definition`).
    pub fn policy_definition(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.policy
            .load()
            .as_ref()
            .map(|p| p.record.definition.clone())
    }

    /// The arguments in force (declared, with the policy applied).
    pub fn effective_arguments(&self) -> Arc<QueueArguments> {
        self.effective.load_full()
    }
}

/// The message with an `x-delivery-count` header (as quorum queues add it).
fn with_delivery_count(message: &Message, count: u32) -> Message {
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    headers.insert(
        "x-delivery-count".into(),
        AMQPValue::LongLongInt(count as i64),
    );
    let properties =
        crate::protocol::BasicProperties::clone(&message.properties).with_headers(headers);
    let raw = crate::protocol::encode::properties(&properties);
    Message::new(
        message.exchange.clone(),
        message.routing_key.clone(),
        properties,
        raw,
        message.body.clone(),
    )
}

/// The consumer to serve next: among those with credit, the highest
/// priority, round-robin within a priority; with a single active consumer,
/// only the first registered. Consumers held back by write back-pressure
/// ask to be woken.
fn pick_consumer(st: &QueueState, queue: &Arc<Queue>) -> Option<usize> {
    let n = if queue.args.single_active_consumer {
        1
    } else {
        st.consumers.len()
    };
    let start = if queue.args.single_active_consumer {
        0
    } else {
        st.next_consumer
    };
    let mut best: Option<usize> = None;
    let mut saturated = Vec::new();
    for i in 0..n {
        let index = (start + i) % st.consumers.len();
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

/// Read access for the management API (`/api/consumers`, `/api/channels`).
impl Queue {
    /// The queue's consumers in registration order (with single active
    /// consumer, the first one is the active one).
    pub fn consumer_list(&self) -> Vec<Arc<Consumer>> {
        self.state.lock().consumers.clone()
    }
}
