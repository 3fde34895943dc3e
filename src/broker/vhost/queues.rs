//! Declaring, looking up and deleting queues.

use super::*;

impl VHost {
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
        crate::broker::check_name_length("queue name", req.name)?;
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
        args.queue_type.validate_declare(
            &DeclareProperties {
                name: req.name,
                durable: req.durable,
                exclusive: req.exclusive,
                auto_delete: req.auto_delete,
            },
            &self.queue_resource(req.name),
        )?;
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
        // An exclusive queue never outlives its connection (RabbitMQ deletes
        // durable ones at start): neither it nor its messages are stored,
        // or it would come back after a crash as a shared queue.
        let stored = req.durable && !req.exclusive;
        let queue = Queue::open(
            name.clone(),
            self.name.clone(),
            options,
            args,
            self.self_ref.clone(),
            self.store.as_ref(),
            stored,
        )?;
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
