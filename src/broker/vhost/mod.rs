//! A virtual host: its exchanges, queues and the bindings between them, and
//! routing of published messages through them.

use super::arguments;
use super::exchange::{
    validate_consistent_hash_weight, validate_headers_binding, Binding, Destination, Exchange,
    ExchangeKind, Routed, RoutedQueues,
};
use super::message::Message;
use super::names;
use super::policy::{self, Policy, PolicyRecord};
use crate::broker::metadata::{Change, Replication};
use crate::broker::queue::paging::PageBudget;
use crate::broker::queue::{DeclareProperties, Delivered, Queue, QueueArguments, QueueOptions};
use crate::broker::super_stream::group::ConsumerGroups;
use crate::broker::super_stream::partitions;
use crate::protocol::{AmqpError, FieldTable};
use crate::store::catalog::{BindingRecord, ExchangeRecord, QueueRecord};
use crate::store::Store;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// The direct reply-to pseudo queue name (RabbitMQ's).
mod bindings;
mod changes;
mod delivery;
mod exchanges;
mod forwarding;
mod policies;
pub use policies::PolicyError;
pub mod publish;
mod queue_host;
mod queues;
mod restore;
mod routing;
mod super_streams;

pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

type NameMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

pub struct VHost {
    pub name: String,
    /// Handed to queues (their `QueueHost`) so they can dead-letter and
    /// expire themselves, and to delayed-message timers.
    self_ref: Weak<VHost>,
    /// Where durable definitions and persistent messages go.
    store: Option<Arc<Store>>,
    /// The broker's paging budget: its queues take it from here.
    pub pages: Arc<PageBudget>,
    /// The broker's: on a cluster, exchanges change through it.
    replication: Arc<Replication>,
    /// Looked up by name on every publish: foldhash (seeded per process,
    /// several times faster than SipHash on short names).
    exchanges: RwLock<NameMap<Arc<Exchange>>>,
    queues: RwLock<NameMap<Arc<Queue>>>,
    /// Held by whoever adds or removes a queue, across the change of
    /// `queues` and its catalog write, so that the catalog's fsync happens
    /// outside the `queues` lock that every publish reads, and two changes
    /// of one name reach the catalog in the order they happened.
    queue_definitions: parking_lot::Mutex<()>,
    /// This node's transient and exclusive cluster queues found at start:
    /// deleted cluster-wide once the cluster is up.
    gone_queues: parking_lot::Mutex<Vec<String>>,
    /// Direct reply-to consumers by their full reply address.
    reply_queues: RwLock<NameMap<Arc<Queue>>>,
    /// Consumer groups on this vhost's partitioned streams.
    pub groups: ConsumerGroups,
    /// Message stats of the default exchange (it has no `Exchange`).
    pub default_exchange_stats: crate::broker::exchange::ExchangeStats,
    policies: RwLock<Vec<Arc<Policy>>>,
    /// `limits.vhosts."<name>".max_queues`; -1 = no limit.
    max_queues: std::sync::atomic::AtomicI64,
    /// `limits.vhosts."<name>".max_exchanges` (not counting the predeclared
    /// `amq.*` exchanges); -1 = no limit.
    max_exchanges: std::sync::atomic::AtomicI64,
}

pub struct ExchangeDeclare<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: &'a FieldTable,
}

pub struct QueueDeclare<'a> {
    pub name: &'a str,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: &'a FieldTable,
}

/// Binding arguments and keys as the source's type requires.
fn validate_binding(source: &Exchange, key: &str, args: &FieldTable) -> Result<(), AmqpError> {
    match source.kind {
        ExchangeKind::Headers => validate_headers_binding(args),
        ExchangeKind::ConsistentHash => validate_consistent_hash_weight(key).map(|_| ()),
        _ => Ok(()),
    }
}

/// The routing type of a declared exchange type, and whether it delays
/// (`x-delayed-message` routes as its `x-delayed-type` argument says).
fn declared_type(kind: &str, args: &FieldTable) -> Result<(ExchangeKind, bool), AmqpError> {
    if kind != "x-delayed-message" {
        return ExchangeKind::parse(kind).map(|k| (k, false));
    }
    let inner = arguments::get(args, "x-delayed-type").and_then(arguments::as_string);
    match inner.as_deref().map(ExchangeKind::parse) {
        Some(Ok(k)) => Ok((k, true)),
        _ => Err(AmqpError::precondition_failed(
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )),
    }
}

fn default_exchange_error() -> AmqpError {
    AmqpError::access_refused("operation not permitted on the default exchange")
}

impl VHost {
    pub fn new(
        name: &str,
        store: Option<Arc<Store>>,
        pages: Arc<PageBudget>,
        replication: Arc<Replication>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|self_ref| Self::build(name, self_ref.clone(), store, pages, replication))
    }

    fn build(
        name: &str,
        self_ref: Weak<VHost>,
        store: Option<Arc<Store>>,
        pages: Arc<PageBudget>,
        replication: Arc<Replication>,
    ) -> Self {
        let vhost = VHost {
            name: name.to_string(),
            self_ref,
            store,
            pages,
            replication,
            exchanges: RwLock::new(NameMap::default()),
            queues: RwLock::new(NameMap::default()),
            queue_definitions: parking_lot::Mutex::new(()),
            gone_queues: parking_lot::Mutex::new(Vec::new()),
            reply_queues: RwLock::new(NameMap::default()),
            groups: ConsumerGroups::default(),
            default_exchange_stats: Default::default(),
            policies: RwLock::new(Vec::new()),
            max_queues: std::sync::atomic::AtomicI64::new(-1),
            max_exchanges: std::sync::atomic::AtomicI64::new(-1),
        };
        *vhost.policies.write() = vhost.stored_policies();
        let predeclared = [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ];
        {
            let mut exchanges = vhost.exchanges.write();
            for (name, kind) in predeclared {
                let exchange =
                    Exchange::new(name.into(), kind, true, false, false, FieldTable::default());
                exchanges.insert(name.into(), Arc::new(exchange));
            }
        }
        vhost
    }

    pub fn exchange_resource(&self, name: &str) -> String {
        format!("exchange '{}' in vhost '{}'", name, self.name)
    }

    pub fn queue_resource(&self, name: &str) -> String {
        format!("queue '{}' in vhost '{}'", name, self.name)
    }

    pub fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no {}", self.exchange_resource(name)))
    }

    pub fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no {}", self.queue_resource(name)))
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.read().get(name).cloned()
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// A queue that connection `conn` may use: 404 if missing, 405 if it is
    /// another connection's exclusive queue.
    pub fn usable_queue(&self, name: &str, conn: u64) -> Result<Arc<Queue>, AmqpError> {
        let queue = self.queue(name).ok_or_else(|| self.no_queue(name))?;
        queue.check_access(conn)?;
        Ok(queue)
    }

    // ---- direct reply-to ----

    pub fn add_reply_queue(&self, queue: Arc<Queue>) {
        self.reply_queues.write().insert(queue.name.clone(), queue);
    }

    pub fn remove_reply_queue(&self, name: &str) {
        if let Some(queue) = self.reply_queues.write().remove(name) {
            queue.mark_deleted();
        }
    }

    pub fn reply_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.reply_queues.read().get(name).cloned()
    }
}

/// A stream queue must be client-named, durable, not exclusive and not
/// auto-delete (RabbitMQ's texts).
fn policy_key(vhost: &str, name: &str) -> Vec<u8> {
    [vhost.as_bytes(), &[0], name.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AMQPValue;

    fn record(name: &str, pairs: &[(&str, AMQPValue)]) -> QueueRecord {
        let mut arguments = FieldTable::default();
        for (k, v) in pairs {
            arguments.insert((*k).into(), v.clone());
        }
        QueueRecord {
            vhost: "/".into(),
            name: name.into(),
            auto_delete: false,
            arguments,
            node: None,
            durable: true,
            exclusive: false,
        }
    }

    #[test]
    fn a_stored_quorum_queue_with_arguments_quorum_refuses_is_restored_as_classic() {
        let vhost = VHost::new("/", None, Default::default(), Default::default());
        let quorum = AMQPValue::LongString("quorum".into());
        vhost.restore_queue(&record("qq", &[("x-queue-type", quorum.clone())]));
        vhost.restore_queue(&record(
            "old",
            &[
                ("x-queue-type", quorum),
                ("x-max-priority", AMQPValue::LongInt(5)),
            ],
        ));
        assert_eq!(vhost.queue("qq").map(|q| q.type_name()), Some("quorum"));
        assert_eq!(vhost.queue("old").map(|q| q.type_name()), Some("classic"));
    }
}
