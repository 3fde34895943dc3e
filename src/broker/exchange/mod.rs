//! Exchanges: a name, a type, and the bindings its router matches against.
//! One file per exchange type; this file holds what they share.

mod consistent_hash;
pub mod delayed;
mod direct;
mod fanout;
mod headers;
pub mod super_stream;
mod topic;

use super::queue::Queue;
use crate::protocol::{AmqpError, FieldTable};
use parking_lot::RwLock;
use std::sync::Arc;

pub use consistent_hash::validate_weight as validate_consistent_hash_weight;
pub use headers::validate_binding_arguments as validate_headers_binding;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
    ConsistentHash,
    /// A partitioned stream (this broker's extension).
    SuperStream,
}

impl ExchangeKind {
    /// Parses a declared type; unknown types are a connection error (503),
    /// as in RabbitMQ.
    pub fn parse(kind: &str) -> Result<Self, AmqpError> {
        match kind {
            "direct" => Ok(Self::Direct),
            "fanout" => Ok(Self::Fanout),
            "topic" => Ok(Self::Topic),
            "headers" => Ok(Self::Headers),
            "x-consistent-hash" => Ok(Self::ConsistentHash),
            "x-super-stream" => Ok(Self::SuperStream),
            other if other.starts_with("x-") => Err(AmqpError::command_invalid(format!(
                "unknown exchange type '{other}'"
            ))),
            other => Err(AmqpError::command_invalid(format!(
                "invalid exchange type '{other}'"
            ))),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
            Self::ConsistentHash => "x-consistent-hash",
            Self::SuperStream => "x-super-stream",
        }
    }
}

/// Where a binding leads.
#[derive(Clone, Debug)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(String),
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(q) => &q.name,
            Destination::Exchange(e) => e,
        }
    }

    pub fn is_queue(&self) -> bool {
        matches!(self, Destination::Queue(_))
    }
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => a.name == b.name,
            (Destination::Exchange(a), Destination::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Binding {
    pub routing_key: String,
    pub arguments: FieldTable,
    pub destination: Destination,
}

impl Binding {
    fn same_as(&self, other: &Binding) -> bool {
        self.routing_key == other.routing_key
            && self.destination == other.destination
            && self.arguments == other.arguments
    }
}

pub use super::queue::RoutedQueues;

/// What routing one message through one exchange found.
#[derive(Default)]
pub struct Routed {
    pub queues: RoutedQueues,
    pub exchanges: Vec<String>,
}

impl Routed {
    pub fn add(&mut self, destination: &Destination) {
        match destination {
            Destination::Queue(q) => self.queues.push(q.clone()),
            Destination::Exchange(e) => self.exchanges.push(e.clone()),
        }
    }
}

/// The per-type matching structure behind an exchange.
enum Router {
    Direct(direct::DirectRouter),
    Fanout(fanout::FanoutRouter),
    Topic(topic::TopicRouter),
    Headers(headers::HeadersRouter),
    ConsistentHash(consistent_hash::ConsistentHashRouter),
    SuperStream(super_stream::SuperStreamRouter),
}

impl Router {
    fn new(kind: ExchangeKind) -> Self {
        match kind {
            ExchangeKind::Direct => Router::Direct(Default::default()),
            ExchangeKind::Fanout => Router::Fanout(Default::default()),
            ExchangeKind::Topic => Router::Topic(Default::default()),
            ExchangeKind::Headers => Router::Headers(Default::default()),
            ExchangeKind::ConsistentHash => Router::ConsistentHash(Default::default()),
            ExchangeKind::SuperStream => Router::SuperStream(Default::default()),
        }
    }

    fn add(&mut self, binding: &Binding) {
        match self {
            Router::Direct(r) => r.add(binding),
            Router::Fanout(r) => r.add(binding),
            Router::Topic(r) => r.add(binding),
            Router::Headers(r) => r.add(binding),
            Router::ConsistentHash(r) => r.add(binding),
            Router::SuperStream(r) => r.add(binding),
        }
    }

    fn remove(&mut self, binding: &Binding) {
        match self {
            Router::Direct(r) => r.remove(binding),
            Router::Fanout(r) => r.remove(binding),
            Router::Topic(r) => r.remove(binding),
            Router::Headers(r) => r.remove(binding),
            Router::ConsistentHash(r) => r.remove(binding),
            Router::SuperStream(r) => r.remove(binding),
        }
    }

    fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        hash_header: Option<&str>,
        out: &mut Routed,
    ) {
        match self {
            Router::Direct(r) => r.route(routing_key, out),
            Router::Fanout(r) => r.route(out),
            Router::Topic(r) => r.route(routing_key, out),
            Router::Headers(r) => r.route(headers, out),
            Router::ConsistentHash(r) => r.route(routing_key, headers, hash_header, out),
            Router::SuperStream(r) => r.route(routing_key, headers, out),
        }
    }
}

struct BindingTable {
    /// All bindings in creation order: listing, unbind and if-unused.
    list: Vec<Binding>,
    router: Router,
}

pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    /// `x-delayed-message`: messages with an `x-delay` header are held
    /// that many ms before routing.
    pub delayed: bool,
    /// Consistent-hash exchanges: hash this header instead of the key.
    hash_header: Option<String>,
    dedup: Option<super::dedup::Deduplicator>,
    pub arguments: FieldTable,
    /// The policy that applies, if any (it may name an alternate exchange).
    policy: arc_swap::ArcSwapOption<super::policy::Policy>,
    table: RwLock<BindingTable>,
    pub stats: ExchangeStats,
}

/// RabbitMQ's exchange `message_stats`: `publish_in` counts messages
/// published to the exchange, `publish_out` the queue deliveries they
/// made (a message routed to three queues counts three). Relaxed atomics,
/// bumped on the publish path without a lock.
#[derive(Debug, Default)]
pub struct ExchangeStats {
    pub publish_in: std::sync::atomic::AtomicU64,
    pub publish_out: std::sync::atomic::AtomicU64,
}

impl ExchangeStats {
    pub fn published_in(&self) {
        self.publish_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn routed_out(&self, queues: usize) {
        if queues > 0 {
            self.publish_out
                .fetch_add(queues as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// (publish_in, publish_out).
    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.publish_in.load(Relaxed),
            self.publish_out.load(Relaxed),
        )
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Exchange({})", self.name)
    }
}

impl Exchange {
    pub fn new(
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let hash_header =
            super::arguments::get(&arguments, "hash-header").and_then(super::arguments::as_string);
        let dedup = super::dedup::Deduplicator::from_arguments(&arguments);
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            delayed: false,
            hash_header,
            dedup,
            arguments,
            policy: arc_swap::ArcSwapOption::empty(),
            table: RwLock::new(BindingTable {
                list: Vec::new(),
                router: Router::new(kind),
            }),
            stats: ExchangeStats::default(),
        }
    }

    /// Makes this an `x-delayed-message` exchange routing as `kind`.
    pub fn with_delay(mut self) -> Self {
        self.delayed = true;
        self
    }

    /// The declared `alternate-exchange`, else the policy's.
    pub fn alternate_exchange(&self) -> Option<String> {
        super::arguments::get(&self.arguments, "alternate-exchange")
            .and_then(super::arguments::as_string)
            .or_else(|| {
                self.policy
                    .load()
                    .as_ref()
                    .and_then(|p| p.string("alternate-exchange"))
            })
    }

    pub fn set_policy(&self, policy: Option<std::sync::Arc<super::policy::Policy>>) {
        self.policy.store(policy);
    }

    pub fn policy_name(&self) -> Option<String> {
        self.policy.load().as_ref().map(|p| p.name().to_string())
    }

    /// Adds a binding; binding twice is a no-op.
    pub fn bind(&self, binding: Binding) {
        let mut table = self.table.write();
        if table.list.iter().any(|b| b.same_as(&binding)) {
            return;
        }
        table.router.add(&binding);
        table.list.push(binding);
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let mut table = self.table.write();
        let Some(pos) = table.list.iter().position(|b| b.same_as(binding)) else {
            return false;
        };
        let removed = table.list.remove(pos);
        table.router.remove(&removed);
        true
    }

    /// Removes every binding to `destination`; returns how many went.
    pub fn unbind_destination(&self, destination: &Destination) -> usize {
        let mut table = self.table.write();
        let (gone, kept): (Vec<Binding>, Vec<Binding>) = std::mem::take(&mut table.list)
            .into_iter()
            .partition(|b| &b.destination == destination);
        for binding in &gone {
            table.router.remove(binding);
        }
        table.list = kept;
        gone.len()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.table.read().list.clone()
    }

    pub fn has_bindings(&self) -> bool {
        !self.table.read().list.is_empty()
    }

    pub fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Routed) {
        self.table
            .read()
            .router
            .route(routing_key, headers, self.hash_header.as_deref(), out);
    }

    /// The default exchange or one of the `amq.*` every vhost has: not
    /// declared by a client.
    pub fn is_predeclared(&self) -> bool {
        self.name.is_empty() || self.name.starts_with("amq.")
    }

    /// The declared type: `x-delayed-message` for a delaying exchange,
    /// otherwise the routing type.
    pub fn type_name(&self) -> &'static str {
        if self.delayed {
            "x-delayed-message"
        } else {
            self.kind.as_str()
        }
    }

    /// Whether this message repeats a recent deduplication key
    /// (`x-message-deduplication` on the exchange).
    pub fn is_duplicate(&self, message: &super::message::Message) -> bool {
        self.dedup.as_ref().is_some_and(|d| d.is_duplicate(message))
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::broker::queue::{Queue, QueueOptions};

    pub fn queue(name: &str) -> Arc<Queue> {
        Arc::new(Queue::new(name.into(), "/".into(), QueueOptions::default()))
    }

    pub fn names(routed: &Routed) -> Vec<String> {
        let mut names: Vec<String> = routed.queues.iter().map(|q| q.name.clone()).collect();
        names.sort();
        names.dedup();
        names
    }
}
