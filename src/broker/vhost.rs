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
use super::queue::stream::group::ConsumerGroups;
use super::queue::stream::{partitions, Stream};
use super::queue::{quorum, Queue, QueueArguments, QueueOptions, QueueType};
use crate::protocol::{AmqpError, FieldTable};
use crate::store::catalog::{BindingRecord, ExchangeRecord, QueueRecord};
use crate::store::stream_log::{Retention, StreamLog};
use crate::store::Store;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// The direct reply-to pseudo queue name (RabbitMQ's).
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

type NameMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

pub struct VHost {
    pub name: String,
    /// Handed to queues so they can dead-letter and expire themselves.
    self_ref: Weak<VHost>,
    /// Where durable definitions and persistent messages go.
    store: Option<Arc<Store>>,
    /// Looked up by name on every publish: foldhash (seeded per process,
    /// several times faster than SipHash on short names).
    exchanges: RwLock<NameMap<Arc<Exchange>>>,
    queues: RwLock<NameMap<Arc<Queue>>>,
    /// Held by whoever adds or removes a queue, across the change of
    /// `queues` and its catalog write, so that the catalog's fsync happens
    /// outside the `queues` lock that every publish reads, and two changes
    /// of one name reach the catalog in the order they happened.
    queue_definitions: parking_lot::Mutex<()>,
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The message log's "queue" for a delayed message: its due time and
/// exchange. The NUL prefix cannot occur in a real queue name.
fn delayed_holder(due_ms: u64, exchange: &str) -> String {
    format!("\0delayed:{due_ms}:{exchange}")
}

fn parse_delayed_holder(name: &str) -> Option<(u64, &str)> {
    let rest = name.strip_prefix("\0delayed:")?;
    let (due, exchange) = rest.split_once(':')?;
    Some((due.parse().ok()?, exchange))
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
    pub fn new(name: &str, store: Option<Arc<Store>>) -> Arc<Self> {
        Arc::new_cyclic(|self_ref| Self::build(name, self_ref.clone(), store))
    }

    fn build(name: &str, self_ref: Weak<VHost>, store: Option<Arc<Store>>) -> Self {
        let vhost = VHost {
            name: name.to_string(),
            self_ref,
            store,
            exchanges: RwLock::new(NameMap::default()),
            queues: RwLock::new(NameMap::default()),
            queue_definitions: parking_lot::Mutex::new(()),
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

    // ---- exchanges ----

    pub fn declare_exchange(&self, req: ExchangeDeclare) -> Result<Arc<Exchange>, AmqpError> {
        if req.name.is_empty() {
            return Err(default_exchange_error());
        }
        super::check_name_length("exchange name", req.name)?;
        if req.passive {
            return self
                .exchange(req.name)
                .ok_or_else(|| self.no_exchange(req.name));
        }
        let (kind, delayed) = declared_type(req.kind, req.arguments)?;
        let partitions = if kind == ExchangeKind::SuperStream {
            let resource = self.exchange_resource(req.name);
            if !req.durable {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid property 'non-durable' for {resource}"
                )));
            }
            let n = partitions::requested_partitions(req.arguments, &resource)?;
            // Refused before anything is made: a partition's name must fit
            // a short string too.
            super::check_name_length(
                "partition name",
                &partitions::partition_name(req.name, n.saturating_sub(1)),
            )?;
            Some(n)
        } else {
            None
        };
        let mut exchanges = self.exchanges.write();
        if let Some(existing) = exchanges.get(req.name) {
            self.check_exchange_equivalence(existing, &req)?;
            let existing = existing.clone();
            drop(exchanges);
            if let Some(n) = partitions {
                self.ensure_partitions(&existing, n, 0)?;
            }
            return Ok(existing);
        }
        if req.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                req.name
            )));
        }
        let limit = self.max_exchanges.load(Ordering::Relaxed);
        if limit >= 0 {
            // Only new exchanges are counted against it; the predeclared
            // amq.* ones are not the vhost's own.
            let declared = exchanges.keys().filter(|n| !n.starts_with("amq.")).count();
            if declared as i64 >= limit {
                return Err(AmqpError::precondition_failed(format!(
                    "cannot declare exchange '{}': exchange limit in vhost '{}' ({limit}) is reached",
                    req.name, self.name
                )));
            }
        }
        let mut exchange = Exchange::new(
            req.name.to_string(),
            kind,
            req.durable,
            req.auto_delete,
            req.internal,
            req.arguments.clone(),
        );
        if delayed {
            exchange = exchange.with_delay();
        }
        exchange.set_policy(self.policy_for_exchange(req.name));
        let exchange = Arc::new(exchange);
        exchanges.insert(req.name.to_string(), exchange.clone());
        drop(exchanges);
        if let (true, Some(store)) = (exchange.durable, &self.store) {
            store.catalog.put_exchange(&ExchangeRecord {
                vhost: self.name.clone(),
                name: exchange.name.clone(),
                kind: exchange.type_name().to_string(),
                auto_delete: exchange.auto_delete,
                internal: exchange.internal,
                arguments: exchange.arguments.clone(),
            });
        }
        if let Some(n) = partitions {
            self.ensure_partitions(&exchange, n, 0)?;
        }
        Ok(exchange)
    }

    fn check_exchange_equivalence(
        &self,
        existing: &Exchange,

        req: &ExchangeDeclare,
    ) -> Result<(), AmqpError> {
        let resource = self.exchange_resource(req.name);
        let differ = |field: &str, received: &str, current: &str| {
            AmqpError::precondition_failed(format!(
                "inequivalent arg '{field}' for {resource}: received '{received}' but current is '{current}'"
            ))
        };
        if existing.type_name() != req.kind {
            return Err(differ("type", req.kind, existing.type_name()));
        }
        for (field, received, current) in [
            ("durable", req.durable, existing.durable),
            ("auto_delete", req.auto_delete, existing.auto_delete),
            ("internal", req.internal, existing.internal),
        ] {
            if received != current {
                return Err(differ(field, &received.to_string(), &current.to_string()));
            }
        }
        if let Some(text) = arguments::first_difference(
            &existing.arguments,
            req.arguments,
            Some(&["alternate-exchange", "x-delayed-type"]),
            &resource,
        ) {
            return Err(AmqpError::precondition_failed(text));
        }
        Ok(())
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() {
            return Err(default_exchange_error());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{}' in vhost '{}' not allowed",
                name, self.name
            )));
        }
        let Some(exchange) = self.exchange(name) else {
            return Ok(());
        };
        if if_unused && exchange.has_bindings() {
            return Err(AmqpError::precondition_failed(format!(
                "{} in use",
                self.exchange_resource(name)
            )));
        }
        // A super stream's partitions go with it.
        let partitions = self.partitions(name);
        self.remove_exchange(name);
        for queue in partitions {
            self.remove_queue(&queue);
        }
        Ok(())
    }

    fn remove_exchange(&self, name: &str) {
        let Some(removed) = self.exchanges.write().remove(name) else {
            return;
        };
        if let (true, Some(store)) = (removed.durable, &self.store) {
            store.catalog.delete_exchange(&self.name, name);
            store
                .catalog
                .delete_bindings_touching(&self.name, name, false);
        }
        self.unbind_everywhere(&Destination::Exchange(name.to_string()));
    }

    /// Removes every binding leading to `destination`, then deletes
    /// auto-delete exchanges that lost their last binding.
    fn unbind_everywhere(&self, destination: &Destination) {
        let mut emptied = Vec::new();
        for exchange in self.exchanges() {
            if exchange.unbind_destination(destination) > 0
                && exchange.auto_delete
                && !exchange.has_bindings()
            {
                emptied.push(exchange.name.clone());
            }
        }
        for name in emptied {
            self.remove_exchange(&name);
        }
    }

    fn auto_delete_if_unused(&self, exchange: &Exchange) {
        if exchange.auto_delete && !exchange.has_bindings() {
            self.remove_exchange(&exchange.name);
        }
    }

    // ---- queues ----

    /// Declares a queue for connection `conn`; returns it with its ready
    /// message count and consumer count.
    pub fn declare_queue(
        &self,
        req: QueueDeclare,
        conn: u64,
    ) -> Result<(Arc<Queue>, usize, usize), AmqpError> {
        let counts = |q: Arc<Queue>| {
            let (ready, _, consumers) = q.snapshot();
            (q, ready, consumers)
        };
        super::check_name_length("queue name", req.name)?;
        if req.passive {
            let queue = self.usable_queue(req.name, conn)?;
            queue.touch();
            return Ok(counts(queue));
        }
        let display_name = if req.name.is_empty() {
            "amq.gen-…"
        } else {
            req.name
        };
        let args = QueueArguments::parse(req.arguments, &self.queue_resource(display_name))?;
        if args.stream.is_some() {
            check_stream_properties(&req, &self.queue_resource(req.name))?;
        }
        if args.queue_type == QueueType::Quorum {
            quorum::check_declare(
                &quorum::DeclareProperties {
                    name: req.name,
                    durable: req.durable,
                    exclusive: req.exclusive,
                    auto_delete: req.auto_delete,
                },
                &self.queue_resource(req.name),
            )?;
        }
        let _definitions = self.queue_definitions.lock();
        let queues = self.queues.read();
        if let Some(existing) = queues.get(req.name) {
            existing.check_access(conn)?;
            // The exclusive flag must match either way, even on the owning
            // connection (RabbitMQ's strict exclusive-access check).
            if req.exclusive != existing.is_exclusive() {
                return Err(existing.locked_error());
            }
            let resource = existing.resource();
            for (field, received, current) in [
                ("durable", req.durable, existing.options.durable),
                ("auto_delete", req.auto_delete, existing.options.auto_delete),
            ] {
                if received != current {
                    return Err(AmqpError::precondition_failed(format!(
                        "inequivalent arg '{field}' for {resource}: received '{received}' but current is '{current}'"
                    )));
                }
            }
            if let Some(text) = arguments::first_difference(
                &existing.options.arguments,
                req.arguments,
                None,
                &resource,
            ) {
                return Err(AmqpError::precondition_failed(text));
            }
            existing.touch();
            return Ok(counts(existing.clone()));
        }
        if req.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                req.name
            )));
        }
        let name = if req.name.is_empty() {
            names::queue_name()
        } else {
            req.name.to_string()
        };
        let limit = self.max_queues.load(Ordering::Relaxed);
        if limit >= 0 && queues.len() as i64 >= limit {
            return Err(AmqpError::precondition_failed(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({limit}) is reached",
                self.name
            )));
        }
        // Nobody else changes the queues while `_definitions` is held: what
        // was checked holds without the lock publishers read.
        drop(queues);
        let options = QueueOptions {
            durable: req.durable,
            auto_delete: req.auto_delete,
            exclusive_owner: req.exclusive.then_some(conn),
            arguments: req.arguments.clone(),
        };
        let retention = args.stream;
        // An exclusive queue never outlives its connection (RabbitMQ deletes
        // durable ones at start): neither it nor its messages are stored,
        // or it would come back after a crash as a shared queue.
        let stored = req.durable && !req.exclusive;
        let mut queue = Queue::with_arguments(
            name.clone(),
            self.name.clone(),
            options,
            args,
            self.self_ref.clone(),
            if stored {
                self.store.as_ref().map(|s| s.log.clone())
            } else {
                None
            },
        );
        if let Some(retention) = retention {
            queue = queue.with_stream(self.open_stream(&name, retention)?);
        }
        let queue = Arc::new(queue);
        if let (true, Some(store)) = (stored, &self.store) {
            store.catalog.put_queue(&QueueRecord {
                vhost: self.name.clone(),
                name: name.clone(),
                auto_delete: req.auto_delete,
                arguments: req.arguments.clone(),
            });
        }
        // Visible only once its record is on disk.
        self.queues.write().insert(name, queue.clone());
        drop(_definitions);
        queue.apply_policy(self.policy_for_queue(&queue.name));
        queue.start_expiry_timer();
        Ok((queue, 0, 0))
    }

    /// queue.delete: returns the number of ready messages dropped.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: u64,
    ) -> Result<usize, AmqpError> {
        let Some(queue) = self.queue(name) else {
            return Ok(0);
        };
        queue.check_access(conn)?;
        let (ready, _, consumers) = queue.snapshot();
        if if_unused && consumers > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "{} in use",
                queue.resource()
            )));
        }
        if if_empty && ready > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "{} not empty",
                queue.resource()
            )));
        }
        Ok(self.remove_queue(&queue))
    }

    /// Removes a queue (deleted, auto-deleted or exclusive owner gone):
    /// its bindings go, its consumers are told.
    pub fn remove_queue(&self, queue: &Arc<Queue>) -> usize {
        let definitions = self.queue_definitions.lock();
        {
            let mut queues = self.queues.write();
            match queues.get(&queue.name) {
                Some(q) if Arc::ptr_eq(q, queue) => {
                    queues.remove(&queue.name);
                }
                _ => return 0,
            }
        }
        self.unbind_everywhere(&Destination::Queue(queue.clone()));
        if let (true, Some(store)) = (queue.options.durable, &self.store) {
            store.catalog.delete_queue(&self.name, &queue.name);
            store
                .catalog
                .delete_bindings_touching(&self.name, &queue.name, true);
        }
        drop(definitions);
        let (consumers, count) = queue.mark_deleted();
        for consumer in consumers {
            consumer.sink.cancelled(&consumer.tag);
        }
        count
    }

    /// Opens the log of stream queue `name` (created if new).
    fn open_stream(&self, name: &str, retention: Retention) -> Result<Stream, AmqpError> {
        let Some(store) = &self.store else {
            return Err(AmqpError::precondition_failed(
                "stream queues need a data directory",
            ));
        };
        let dir = store.stream_dir(&self.name, name);
        let log = StreamLog::open(&dir, retention).map_err(|e| {
            tracing::error!(queue = name, dir = %dir.display(), "cannot open stream: {e:#}");
            AmqpError::internal(format!("cannot open stream {}", self.queue_resource(name)))
        })?;
        let offsets = store
            .catalog
            .tree("stream_offsets")
            .map_err(|e| tracing::error!("cannot open the stream offsets tree: {e:#}"))
            .ok();
        Ok(Stream::new(
            Arc::new(log),
            store.log.clone(),
            offsets,
            &self.name,
            name,
        ))
    }

    /// Sets the most queues this vhost may hold (`None`: no limit).
    pub fn set_max_queues(&self, limit: Option<u32>) {
        self.max_queues
            .store(limit.map_or(-1, i64::from), Ordering::Relaxed);
    }

    /// Sets the most exchanges this vhost may hold beyond the predeclared
    /// ones (`None`: no limit).
    pub fn set_max_exchanges(&self, limit: Option<u32>) {
        self.max_exchanges
            .store(limit.map_or(-1, i64::from), Ordering::Relaxed);
    }

    // ---- policies ----

    pub fn policies(&self) -> Vec<Arc<Policy>> {
        self.policies.read().clone()
    }

    /// Adds or replaces a policy and applies it at once. Returns whether it
    /// is new; the error is RabbitMQ's validation text.
    pub fn put_policy(&self, mut record: PolicyRecord) -> Result<bool, String> {
        record.vhost = self.name.clone();
        let policy = Arc::new(Policy::new(record)?);
        let created = {
            let mut policies = self.policies.write();
            let before = policies.len();
            policies.retain(|p| p.name() != policy.name());
            let created = policies.len() == before;
            policies.push(policy.clone());
            created
        };
        if let Some(tree) = self.policy_tree() {
            match serde_json::to_vec(&policy.record) {
                Ok(json) => {
                    let _ = tree.insert(policy_key(&self.name, policy.name()), json);
                    let _ = tree.flush();
                }
                Err(e) => tracing::error!("policy not storable: {e}"),
            }
        }
        self.apply_policies();
        Ok(created)
    }

    /// Removes a policy; returns whether it existed.
    pub fn delete_policy(&self, name: &str) -> bool {
        let existed = {
            let mut policies = self.policies.write();
            let before = policies.len();
            policies.retain(|p| p.name() != name);
            policies.len() != before
        };
        if existed {
            if let Some(tree) = self.policy_tree() {
                let _ = tree.remove(policy_key(&self.name, name));
                let _ = tree.flush();
            }
            self.apply_policies();
        }
        existed
    }

    fn policy_for_queue(&self, name: &str) -> Option<Arc<Policy>> {
        policy::select(&self.policies.read(), |p| p.applies_to_queue(name)).cloned()
    }

    pub fn policy_for_exchange(&self, name: &str) -> Option<Arc<Policy>> {
        policy::select(&self.policies.read(), |p| p.applies_to_exchange(name)).cloned()
    }

    /// Re-evaluates which policy applies to every queue and exchange.
    fn apply_policies(&self) {
        for queue in self.queues() {
            queue.apply_policy(self.policy_for_queue(&queue.name));
        }
        for exchange in self.exchanges() {
            exchange.set_policy(self.policy_for_exchange(&exchange.name));
        }
    }

    fn policy_tree(&self) -> Option<sled::Tree> {
        let store = self.store.as_ref()?;
        store
            .catalog
            .tree("policies")
            .map_err(|e| tracing::error!("cannot open the policies tree: {e:#}"))
            .ok()
    }

    /// This vhost's policies from the catalog (at start).
    fn stored_policies(&self) -> Vec<Arc<Policy>> {
        let Some(tree) = self.policy_tree() else {
            return Vec::new();
        };
        let prefix = policy_key(&self.name, "");
        tree.scan_prefix(&prefix)
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| serde_json::from_slice::<PolicyRecord>(&v).ok())
            .filter_map(|r| match Policy::new(r) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    tracing::error!("skipping stored policy: {e}");
                    None
                }
            })
            .collect()
    }

    // ---- bindings ----

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
        conn: u64,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(default_exchange_error());
        }
        let source = self
            .exchange(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        let queue = self.usable_queue(queue, conn)?;
        super::check_name_length("routing key", key)?;
        validate_binding(&source, key, args)?;
        let durable = source.durable && queue.options.durable && !queue.is_exclusive();
        let record = self.binding_record(exchange, &queue.name, true, key, args);
        source.bind(Binding {
            routing_key: key.to_string(),
            arguments: args.clone(),
            destination: Destination::Queue(queue),
        });
        if let (true, Some(store)) = (durable, &self.store) {
            store.catalog.put_binding(&record);
        }
        Ok(())
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
        conn: u64,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(default_exchange_error());
        }
        let (Some(source), Some(queue)) = (self.exchange(exchange), self.queue(queue)) else {
            return Ok(());
        };
        queue.check_access(conn)?;
        let record = self.binding_record(exchange, &queue.name, true, key, args);
        let binding = Binding {
            routing_key: key.to_string(),
            arguments: args.clone(),
            destination: Destination::Queue(queue),
        };
        if source.unbind(&binding) {
            if let Some(store) = &self.store {
                store.catalog.delete_binding(&record);
            }
            self.auto_delete_if_unused(&source);
        }
        Ok(())
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &FieldTable,
    ) -> Result<(), AmqpError> {
        if destination.is_empty() || source.is_empty() {
            return Err(default_exchange_error());
        }
        let src = self
            .exchange(source)
            .ok_or_else(|| self.no_exchange(source))?;
        if self.exchange(destination).is_none() {
            return Err(self.no_exchange(destination));
        }
        super::check_name_length("routing key", key)?;
        validate_binding(&src, key, args)?;
        src.bind(Binding {
            routing_key: key.to_string(),
            arguments: args.clone(),
            destination: Destination::Exchange(destination.to_string()),
        });
        let durable = src.durable && self.exchange(destination).is_some_and(|d| d.durable);
        if let (true, Some(store)) = (durable, &self.store) {
            store
                .catalog
                .put_binding(&self.binding_record(source, destination, false, key, args));
        }
        Ok(())
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &FieldTable,
    ) -> Result<(), AmqpError> {
        if destination.is_empty() || source.is_empty() {
            return Err(default_exchange_error());
        }
        let Some(src) = self.exchange(source) else {
            return Ok(());
        };
        let binding = Binding {
            routing_key: key.to_string(),
            arguments: args.clone(),
            destination: Destination::Exchange(destination.to_string()),
        };
        if src.unbind(&binding) {
            if let Some(store) = &self.store {
                store.catalog.delete_binding(&self.binding_record(
                    source,
                    destination,
                    false,
                    key,
                    args,
                ));
            }
            self.auto_delete_if_unused(&src);
        }
        Ok(())
    }

    fn binding_record(
        &self,
        source: &str,
        destination: &str,
        to_queue: bool,
        key: &str,
        args: &FieldTable,
    ) -> BindingRecord {
        BindingRecord {
            vhost: self.name.clone(),
            source: source.to_string(),
            destination: destination.to_string(),
            destination_is_queue: to_queue,
            routing_key: key.to_string(),
            arguments: args.clone(),
        }
    }

    // ---- restore at start ----

    pub fn restore_exchange(&self, r: &ExchangeRecord) {
        let Ok((kind, delayed)) = declared_type(&r.kind, &r.arguments) else {
            tracing::error!(exchange = %r.name, kind = %r.kind, "skipping stored exchange of unknown type");
            return;
        };
        let mut exchange = Exchange::new(
            r.name.clone(),
            kind,
            true,
            r.auto_delete,
            r.internal,
            r.arguments.clone(),
        );
        if delayed {
            exchange = exchange.with_delay();
        }
        exchange.set_policy(self.policy_for_exchange(&r.name));
        self.exchanges
            .write()
            .insert(r.name.clone(), Arc::new(exchange));
    }

    pub fn restore_queue(&self, r: &QueueRecord) {
        let resource = self.queue_resource(&r.name);
        let args = match QueueArguments::parse(&r.arguments, &resource) {
            Ok(args) => args,
            // Stored before quorum queues had their own rules (they were
            // served as classic ones): kept, as a classic queue, rather
            // than left unrestored with its messages.
            Err(e) if quorum::is_quorum(&r.arguments) => {
                tracing::warn!(queue = %r.name, error = %e, "stored quorum queue has arguments quorum queues refuse; serving it as a classic queue");
                let mut classic = FieldTable::default();
                for (key, value) in r.arguments.inner() {
                    if key.as_str() != "x-queue-type" {
                        classic.insert(key.clone(), value.clone());
                    }
                }
                match QueueArguments::parse(&classic, &resource) {
                    Ok(args) => args,
                    Err(e) => {
                        tracing::error!(queue = %r.name, error = %e, "skipping stored queue with invalid arguments");
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(queue = %r.name, error = %e, "skipping stored queue with invalid arguments");
                return;
            }
        };
        let options = QueueOptions {
            durable: true,
            auto_delete: r.auto_delete,
            exclusive_owner: None,
            arguments: r.arguments.clone(),
        };
        let retention = args.stream;
        let mut queue = Queue::with_arguments(
            r.name.clone(),
            self.name.clone(),
            options,
            args,
            self.self_ref.clone(),
            self.store.as_ref().map(|s| s.log.clone()),
        );
        if let Some(retention) = retention {
            match self.open_stream(&r.name, retention) {
                Ok(stream) => queue = queue.with_stream(stream),
                Err(e) => {
                    tracing::error!(queue = %r.name, error = %e, "skipping stored stream that cannot be opened");
                    return;
                }
            }
        }
        let queue = Arc::new(queue);
        self.queues.write().insert(r.name.clone(), queue.clone());
        queue.apply_policy(self.policy_for_queue(&queue.name));
        queue.start_expiry_timer();
    }

    pub fn restore_binding(&self, r: &BindingRecord) {
        let Some(source) = self.exchange(&r.source) else {
            return;
        };
        let destination = if r.destination_is_queue {
            match self.queue(&r.destination) {
                Some(q) => Destination::Queue(q),
                None => return,
            }
        } else {
            Destination::Exchange(r.destination.clone())
        };
        source.bind(Binding {
            routing_key: r.routing_key.clone(),
            arguments: r.arguments.clone(),
            destination,
        });
    }

    /// Puts a message read back from the log into the queues still holding it.
    pub fn restore_message(&self, recovered: crate::store::message_log::RecoveredMessage) {
        let properties =
            match amq_protocol::protocol::basic::parse_properties(&recovered.raw_properties[..]) {
                Ok((_, p)) => p,
                Err(_) => {
                    tracing::error!(
                        id = recovered.id,
                        "skipping stored message with unreadable properties"
                    );
                    // Dropped for good, not found again at every start.
                    if let Some(store) = &self.store {
                        for (queue, _) in &recovered.queues {
                            store.log.remove(recovered.id, &self.name, queue);
                        }
                    }
                    return;
                }
            };
        let mut message = Message::new(
            recovered.exchange,
            recovered.routing_key,
            properties,
            recovered.raw_properties,
            recovered.body,
        );
        message.store_id = Some(recovered.id);
        let message = Arc::new(message);
        for (queue, delivered) in recovered.queues {
            if let Some((due_ms, exchange)) = parse_delayed_holder(&queue) {
                self.schedule_delayed(exchange.to_string(), message.clone(), due_ms);
                continue;
            }
            match self.queue(&queue) {
                Some(q) => q.restore(message.clone(), delivered),
                None => {
                    // Its queue is gone: tell the log, so the segment can go.
                    if let Some(store) = &self.store {
                        store.log.remove(recovered.id, &self.name, &queue);
                    }
                }
            }
        }
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

    // ---- delivery ----

    /// Hands a routed message to its queues. A persistent message is first
    /// stored once for all its durable queues. Returns whether some queue
    /// refused it (overflow), the log sequence a confirm must wait for, and
    /// the shared message.
    pub fn deliver(
        &self,
        mut message: Message,
        queues: &[Arc<Queue>],
    ) -> (bool, Option<u64>, Arc<Message>) {
        let mut log_seq = None;
        if message.is_persistent() {
            let durable: Vec<&str> = queues
                .iter()
                .filter(|q| q.stores_messages())
                .map(|q| q.name.as_str())
                .collect();
            if let (false, Some(store)) = (durable.is_empty(), &self.store) {
                let (id, seq) = store.log.append(
                    &self.name,
                    &durable,
                    &message.exchange,
                    &message.routing_key,
                    &message.raw_properties,
                    &message.body,
                );
                message.store_id = Some(id);
                log_seq = Some(seq);
            }
        }
        let message = Arc::new(message);
        let mut refused = false;
        for queue in queues {
            if queue.stream().is_some() {
                if let Some(seq) = queue.append_to_stream(&message) {
                    log_seq = Some(log_seq.map_or(seq, |s: u64| s.max(seq)));
                }
                continue;
            }
            refused |= queue.publish(message.clone()) == super::queue::Accepted::Refused;
        }
        (refused, log_seq, message)
    }

    /// Holds a message in an `x-delayed-message` exchange for `delay_ms`,
    /// then routes it. Persistent messages on a durable exchange are stored
    /// (with their due time) so the delay survives a restart; returns the
    /// log sequence a confirm must wait for.
    pub fn delay(
        &self,
        exchange: &Arc<Exchange>,
        mut message: Message,
        delay_ms: u64,
    ) -> Option<u64> {
        let due_ms = now_ms().saturating_add(delay_ms);
        let mut log_seq = None;
        if message.is_persistent() && exchange.durable {
            let holder = delayed_holder(due_ms, &exchange.name);
            match (&self.store, holder.len() <= 255) {
                (Some(store), true) => {
                    let (id, seq) = store.log.append(
                        &self.name,
                        &[holder.as_str()],
                        &message.exchange,
                        &message.routing_key,
                        &message.raw_properties,
                        &message.body,
                    );
                    message.store_id = Some(id);
                    log_seq = Some(seq);
                }
                (Some(_), false) => {
                    tracing::warn!(exchange = %exchange.name, "exchange name too long to persist a delayed message")
                }
                (None, _) => {}
            }
        }
        self.schedule_delayed(exchange.name.clone(), Arc::new(message), due_ms);
        log_seq
    }

    fn schedule_delayed(&self, exchange: String, message: Arc<Message>, due_ms: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let vhost = self.self_ref.clone();
        // A vhost deleted meanwhile still owes the log the removal.
        let store = self.store.clone();
        let vhost_name = self.name.clone();
        let wait = std::time::Duration::from_millis(due_ms.saturating_sub(now_ms()));
        runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            match vhost.upgrade() {
                Some(vhost) => vhost.fire_delayed(&exchange, &message, due_ms),
                None => {
                    if let (Some(store), Some(id)) = (store, message.store_id) {
                        store
                            .log
                            .remove(id, &vhost_name, &delayed_holder(due_ms, &exchange));
                    }
                }
            }
        });
    }

    /// A delayed message is due: route it now through its exchange.
    fn fire_delayed(&self, exchange_name: &str, held: &Message, due_ms: u64) {
        let mut stream_copy = None;
        if let Some(exchange) = self.exchange(exchange_name) {
            let mut message = held.clone();
            message.store_id = None;
            let queues = self.route(
                &exchange,
                &[&message.routing_key.clone()],
                message.properties.headers().as_ref(),
            );
            let to_stream = queues.iter().any(|q| q.stream().is_some());
            let (_, log_seq, _) = self.deliver(message, &queues);
            stream_copy = log_seq.filter(|_| to_stream);
        }
        if let Some(id) = held.store_id {
            let holder = delayed_holder(due_ms, exchange_name);
            match stream_copy {
                Some(seq) => self.remove_after_sync(seq, id, holder),
                None => {
                    if let Some(store) = &self.store {
                        store.log.remove(id, &self.name, &holder);
                    }
                }
            }
        }
    }

    /// Records that message `id` left `queue` once the log has synced past
    /// `seq`. For a message copied into a stream: the writer syncs a
    /// batch's message-log records before it writes the batch's stream
    /// chunks, so a removal sent right after the copy could be on disk
    /// while the copy is not yet, and a crash between loses the message.
    /// Waiting keeps it at least once (in both places after such a crash).
    pub(crate) fn remove_after_sync(&self, seq: u64, id: u64, queue: String) {
        let Some(store) = &self.store else { return };
        let mut synced = store.log.synced();
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if *synced.borrow() < seq => {
                let store = store.clone();
                let vhost = self.name.clone();
                runtime.spawn(async move {
                    // An error: the writer stopped, nothing more is written.
                    // A copy that failed (disk full) is retried but not
                    // waited for: the source keeps the message on disk
                    // (twice rather than never).
                    if synced.wait_for(|s| *s >= seq).await.is_ok()
                        && !store.log.failures().failed(seq)
                    {
                        store.log.remove(id, &vhost, &queue);
                    }
                });
            }
            _ if store.log.failures().failed(seq) => {}
            _ => store.log.remove(id, &self.name, &queue),
        }
    }

    // ---- routing ----

    /// The queues a message published to `exchange` with these routing keys
    /// reaches: through exchange-to-exchange bindings, and the alternate
    /// exchange when nothing matched. Each queue appears once.
    pub fn route(
        &self,
        exchange: &Exchange,
        keys: &[&str],
        headers: Option<&FieldTable>,
    ) -> RoutedQueues {
        let mut routed = Routed::default();
        // Exchanges routed through besides `exchange` (only exchange-to-
        // exchange bindings and alternate exchanges add any, so the usual
        // publish allocates nothing here).
        let mut visited: Vec<String> = Vec::new();
        self.route_through(exchange, keys, headers, &mut routed, &mut visited);
        let mut current_ae_source = exchange.alternate_exchange();
        while routed.queues.is_empty() {
            let Some(ae_name) = current_ae_source.take() else {
                break;
            };
            if ae_name == exchange.name || visited.contains(&ae_name) {
                break;
            }
            let Some(ae) = self.exchange(&ae_name) else {
                break;
            };
            // The alternate's own bindings must not lead back here.
            if !visited.contains(&exchange.name) {
                visited.push(exchange.name.clone());
            }
            visited.push(ae_name);
            self.route_through(&ae, keys, headers, &mut routed, &mut visited);
            current_ae_source = ae.alternate_exchange();
        }
        let mut queues = routed.queues;
        if queues.len() > 1 {
            let mut seen = std::collections::HashSet::new();
            queues.retain(|q| seen.insert(Arc::as_ptr(q)));
        }
        queues
    }

    fn route_through(
        &self,
        exchange: &Exchange,
        keys: &[&str],
        headers: Option<&FieldTable>,
        routed: &mut Routed,
        visited: &mut Vec<String>,
    ) {
        for key in keys {
            exchange.route(key, headers, routed);
        }
        while let Some(next) = routed.exchanges.pop() {
            if next == exchange.name || visited.contains(&next) {
                continue;
            }
            visited.push(next.clone());
            if let Some(dest) = self.exchange(&next) {
                for key in keys {
                    dest.route(key, headers, routed);
                }
            }
        }
    }

    /// Routes by exchange name (`""` is the default exchange); a missing
    /// exchange routes nowhere. Used for dead letters.
    pub fn route_by_name(
        &self,
        exchange: &str,
        keys: &[&str],
        headers: Option<&FieldTable>,
    ) -> RoutedQueues {
        if exchange.is_empty() {
            // One copy per queue, even when CC names it again later on.
            let mut found = RoutedQueues::new();
            for queue in keys.iter().filter_map(|k| self.route_default(k)) {
                if !found.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                    found.push(queue);
                }
            }
            return found;
        }
        match self.exchange(exchange) {
            Some(x) => self.route(&x, keys, headers),
            None => RoutedQueues::new(),
        }
    }

    /// The default exchange: the queue named by the key, or a direct
    /// reply-to consumer.
    pub fn route_default(&self, key: &str) -> Option<Arc<Queue>> {
        if key.starts_with(REPLY_TO_PREFIX) {
            return self.reply_queue(key);
        }
        self.queue(key)
    }
}

/// A stream queue must be client-named, durable, not exclusive and not
/// auto-delete (RabbitMQ's texts).
fn check_stream_properties(req: &QueueDeclare, resource: &str) -> Result<(), AmqpError> {
    if req.name.is_empty() {
        return Err(AmqpError::precondition_failed(
            "Cannot declare a server-named queue for type rabbit_stream_queue",
        ));
    }
    let refused = if !req.durable {
        Some("non-durable")
    } else if req.exclusive {
        Some("exclusive-owner")
    } else if req.auto_delete {
        Some("auto-delete")
    } else {
        None
    };
    match refused {
        Some(property) => Err(AmqpError::precondition_failed(format!(
            "invalid property '{property}' for {resource}"
        ))),
        None => Ok(()),
    }
}

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
        }
    }

    #[test]
    fn a_stored_quorum_queue_with_arguments_quorum_refuses_is_restored_as_classic() {
        let vhost = VHost::new("/", None);
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
