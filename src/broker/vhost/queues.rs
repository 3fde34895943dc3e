//! Declaring, looking up and deleting queues.

use super::*;

impl VHost {
    /// Declares a queue for connection `conn`; returns it with its ready
    /// message count and consumer count. On a cluster node a durable,
    /// non-exclusive queue is declared on every node (see
    /// `declare_shared_queue`).
    pub fn declare_queue(
        &self,
        req: QueueDeclare,
        conn: u64,
    ) -> Result<(Arc<Queue>, usize, usize), AmqpError> {
        self.declare(req, conn, true)
    }

    /// Declares a queue on this node only (a super stream's partitions,
    /// made on every node by the exchange's own declaration).
    pub(super) fn declare_queue_here(
        &self,
        req: QueueDeclare,
        conn: u64,
    ) -> Result<(Arc<Queue>, usize, usize), AmqpError> {
        self.declare(req, conn, false)
    }

    fn declare(
        &self,
        req: QueueDeclare,
        conn: u64,
        share: bool,
    ) -> Result<(Arc<Queue>, usize, usize), AmqpError> {
        let counts = |q: Arc<Queue>| {
            let (ready, _, consumers) = q.snapshot();
            (q, ready, consumers)
        };
        crate::broker::check_name_length("queue name", req.name)?;
        if req.passive {
            let queue = self.usable_queue(req.name, conn)?;
            queue.touch();
            if queue.is_remote() {
                let (ready, consumers) = self.remote_counts(&queue)?;
                return Ok((queue, ready, consumers));
            }
            return Ok(counts(queue));
        }
        let display_name = if req.name.is_empty() {
            "amq.gen-…"
        } else {
            req.name
        };
        let args = QueueArguments::parse(req.arguments, &self.queue_resource(display_name))?;
        args.queue_type.validate_declare(
            &DeclareProperties {
                name: req.name,
                durable: req.durable,
                exclusive: req.exclusive,
                auto_delete: req.auto_delete,
            },
            &self.queue_resource(req.name),
        )?;
        if share && self.replication.cluster().is_some() {
            return self.declare_shared_queue(req, conn);
        }
        let _definitions = self.queue_definitions.lock();
        let queues = self.queues.read();
        if let Some(existing) = queues.get(req.name) {
            check_equivalent(existing, &req, conn)?;
            existing.touch();
            return Ok(counts(existing.clone()));
        }
        check_reserved(req.name)?;
        let name = if req.name.is_empty() {
            names::queue_name()
        } else {
            req.name.to_string()
        };
        self.check_queue_limit(queues.len(), &name)?;
        // Nobody else changes the queues while `_definitions` is held: what
        // was checked holds without the lock publishers read.
        drop(queues);
        let options = QueueOptions {
            durable: req.durable,
            auto_delete: req.auto_delete,
            exclusive_owner: req.exclusive.then_some(conn),
            arguments: req.arguments.clone(),
        };
        // An exclusive queue never outlives its connection (RabbitMQ deletes
        // durable ones at start): neither it nor its messages are stored,
        // or it would come back after a crash as a shared queue.
        let stored = req.durable && !req.exclusive;
        let queue = self.add_queue(name, options, args, stored, None)?;
        drop(_definitions);
        queue.apply_policy(self.policy_for_queue(&queue.name));
        queue.start_expiry_timer();
        Ok((queue, 0, 0))
    }

    /// A queue declared on a cluster node: its definition is committed to
    /// the metadata group, so every node has it (an exclusive one is only
    /// usable by its connection all the same); it lives on this node
    /// (RabbitMQ's client-local placement) unless placed elsewhere.
    fn declare_shared_queue(
        &self,
        req: QueueDeclare,
        conn: u64,
    ) -> Result<(Arc<Queue>, usize, usize), AmqpError> {
        if let Some(existing) = self.queue(req.name) {
            check_equivalent(&existing, &req, conn)?;
            existing.touch();
            let (ready, consumers) = self.remote_counts(&existing)?;
            return Ok((existing, ready, consumers));
        }
        check_reserved(req.name)?;
        let name = if req.name.is_empty() {
            names::queue_name()
        } else {
            req.name.to_string()
        };
        // An exclusive queue lives with its connection.
        let node = if req.exclusive {
            self.replication.node().unwrap_or_default().to_string()
        } else {
            self.placement(req.arguments)
        };
        let change = Change::DeclareQueue {
            record: QueueRecord {
                vhost: self.name.clone(),
                name: name.clone(),
                auto_delete: req.auto_delete,
                arguments: req.arguments.clone(),
                node: Some(node),
                durable: req.durable,
                exclusive: req.exclusive,
            },
            owner: req.exclusive.then_some(conn),
        };
        let what = format!("declare {}", self.queue_resource(&name));
        self.replication.commit(&change, &what, || Ok(false))?;
        let queue = self.queue(&name).ok_or_else(|| self.no_queue(&name))?;
        let (ready, _, consumers) = queue.snapshot();
        Ok((queue, ready, consumers))
    }

    /// The node a new cluster queue goes to: this one (RabbitMQ's
    /// `client-local`), or with `x-queue-leader-locator: balanced` the
    /// reachable member with the fewest of this vhost's queues (this node
    /// first among equals).
    fn placement(&self, arguments: &FieldTable) -> String {
        let here = self.replication.node().unwrap_or_default().to_string();
        let locator =
            arguments::get(arguments, "x-queue-leader-locator").and_then(arguments::as_string);
        let balanced = matches!(locator.as_deref(), Some("balanced"));
        let Some(cluster) = self.replication.cluster().filter(|_| balanced) else {
            return here;
        };
        let mut load: HashMap<String, usize> = cluster
            .member_names()
            .into_iter()
            .filter(|node| *node == here || cluster.is_reachable(node))
            .map(|node| (node, 0))
            .collect();
        for queue in self.queues().iter().filter(|q| q.is_shared()) {
            let node = queue.remote_node().unwrap_or(&here);
            if let Some(count) = load.get_mut(node) {
                *count += 1;
            }
        }
        load.into_iter()
            .min_by_key(|(node, count)| (*count, *node != here, node.clone()))
            .map_or(here, |(node, _)| node)
    }

    /// The declaration of a cluster queue made on this node: the queue
    /// itself if it lives here, its definition otherwise. Whether it made
    /// the queue.
    pub(crate) fn apply_declare_queue(
        &self,
        record: &QueueRecord,
        owner: Option<u64>,
    ) -> Result<bool, AmqpError> {
        let name = record.name.as_str();
        let node = record.node.as_deref().unwrap_or_default();
        let here = self.replication.node() == Some(node);
        let args = QueueArguments::parse(&record.arguments, &self.queue_resource(name))?;
        let _definitions = self.queue_definitions.lock();
        let queues = self.queues.read();
        if let Some(existing) = queues.get(name) {
            let req = QueueDeclare {
                name,
                passive: false,
                durable: record.durable,
                exclusive: record.exclusive,
                auto_delete: record.auto_delete,
                arguments: &record.arguments,
            };
            // Access was the proposer's to check.
            let as_owner = existing.options.exclusive_owner.unwrap_or(0);
            check_equivalent(existing, &req, as_owner)?;
            return Ok(false);
        }
        self.check_queue_limit(queues.len(), name)?;
        drop(queues);
        let exclusive_owner = match (record.exclusive, here) {
            (false, _) => None,
            (true, true) => Some(owner.unwrap_or(NO_CONNECTION)),
            // No connection of this node may use it.
            (true, false) => Some(NO_CONNECTION),
        };
        let options = QueueOptions {
            durable: record.durable,
            auto_delete: record.auto_delete,
            exclusive_owner,
            arguments: record.arguments.clone(),
        };
        let stored = here && record.durable && !record.exclusive;
        let home = Some(node.to_string());
        let queue = self.add_queue(name.to_string(), options, args, stored, home)?;
        drop(_definitions);
        queue.apply_policy(self.policy_for_queue(&queue.name));
        if here {
            queue.start_expiry_timer();
        }
        Ok(true)
    }

    fn check_queue_limit(&self, count: usize, name: &str) -> Result<(), AmqpError> {
        let limit = self.max_queues.load(Ordering::Relaxed);
        if limit >= 0 && count as i64 >= limit {
            return Err(AmqpError::precondition_failed(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({limit}) is reached",
                self.name
            )));
        }
        Ok(())
    }

    /// Makes and adds a queue, its record stored first when `stored`. On a
    /// cluster, `home` is the node a shared queue lives on: this node's
    /// own (then `stored`), or another's (then only its definition).
    fn add_queue(
        &self,
        name: String,
        options: QueueOptions,
        args: QueueArguments,
        stored: bool,
        home: Option<String>,
    ) -> Result<Arc<Queue>, AmqpError> {
        let record = QueueRecord {
            vhost: self.name.clone(),
            name: name.clone(),
            auto_delete: options.auto_delete,
            arguments: options.arguments.clone(),
            node: home.clone(),
            durable: options.durable,
            exclusive: options.exclusive_owner.is_some(),
        };
        let queue = match home.filter(|node| self.replication.node() != Some(node)) {
            Some(node) => Queue::remote(
                name.clone(),
                self.name.clone(),
                options,
                args,
                self.self_ref.clone(),
                node,
            ),
            None => Queue::open(
                name.clone(),
                self.name.clone(),
                options,
                args,
                self.self_ref.clone(),
                self.store.as_ref(),
                stored,
            )?,
        };
        let queue = Arc::new(if record.node.is_some() {
            queue.shared()
        } else {
            queue
        });
        // A cluster's queue is recorded whatever it is (every node must
        // know it after a restart; see `restore_queue`).
        if let (true, Some(store)) = (stored || record.node.is_some(), &self.store) {
            store.catalog.put_queue(&record);
        }
        // Visible only once its record is on disk.
        self.queues.write().insert(name, queue.clone());
        Ok(queue)
    }

    /// queue.delete: returns the number of ready messages dropped. A
    /// cluster's queue is deleted on every node; one that lives on another
    /// node is deleted by that node (which knows whether it is unused or
    /// empty).
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
        if let Some(node) = queue.remote_node() {
            return self.remote_call(
                node,
                crate::broker::forward::Call::DeleteQueue {
                    vhost: self.name.clone(),
                    name: name.to_string(),
                    if_unused,
                    if_empty,
                },
            );
        }
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
        if queue.is_shared() {
            let change = Change::DeleteQueue {
                vhost: self.name.clone(),
                name: name.to_string(),
            };
            let what = format!("delete {}", queue.resource());
            if let Some(outcome) = self.replication.replicate(&change, &what) {
                return outcome?.into_count();
            }
        }
        Ok(self.remove_queue_here(&queue))
    }

    /// The deletion of a cluster's queue made on this node: the queue, or
    /// its definition.
    pub(crate) fn apply_delete_queue(&self, name: &str) -> usize {
        match self.queue(name) {
            Some(queue) => self.remove_queue_here(&queue),
            None => {
                // One this node recorded but did not bring back (its own
                // transient or exclusive queue, gone with its restart).
                if let Some(store) = &self.store {
                    store.catalog.delete_queue(&self.name, name);
                }
                0
            }
        }
    }

    /// Removes a queue (auto-deleted, expired, exclusive owner gone, vhost
    /// deleted): its bindings go, its consumers are told. A cluster's
    /// queue that lives here is then removed from the other nodes too.
    pub fn remove_queue(&self, queue: &Arc<Queue>) -> usize {
        let count = self.remove_queue_here(queue);
        if queue.is_shared() && !queue.is_remote() {
            self.replication.propose_in_background(
                Change::DeleteQueue {
                    vhost: self.name.clone(),
                    name: queue.name.clone(),
                },
                format!("delete {}", queue.resource()),
            );
        }
        count
    }

    /// Removes a queue from this node.
    fn remove_queue_here(&self, queue: &Arc<Queue>) -> usize {
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
        if let (true, Some(store)) = (queue.options.durable || queue.is_shared(), &self.store) {
            store.catalog.delete_queue(&self.name, &queue.name);
            store
                .catalog
                .delete_bindings_touching(&self.name, &queue.name, true);
        }
        drop(definitions);
        if let (true, Some(relays)) = (queue.is_remote(), self.replication.relays()) {
            relays.queue_gone(queue);
        }
        let (consumers, count) = queue.mark_deleted();
        for consumer in consumers {
            consumer.sink.cancelled(&consumer.tag);
        }
        count
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
}

/// A redeclare must match the queue: exclusive flag, durable, auto-delete
/// and arguments (RabbitMQ's 405 and 406 texts).
fn check_equivalent(existing: &Queue, req: &QueueDeclare, conn: u64) -> Result<(), AmqpError> {
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
    if let Some(text) =
        arguments::first_difference(&existing.options.arguments, req.arguments, None, &resource)
    {
        return Err(AmqpError::precondition_failed(text));
    }
    Ok(())
}

fn check_reserved(name: &str) -> Result<(), AmqpError> {
    if name.starts_with("amq.") {
        return Err(AmqpError::access_refused(format!(
            "queue name '{name}' contains reserved prefix 'amq.*'"
        )));
    }
    Ok(())
}

/// The owner of an exclusive queue that no connection of this node may
/// use (its connection is on another node, or gone).
pub(super) const NO_CONNECTION: u64 = u64::MAX;
