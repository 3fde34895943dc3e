//! Declaring and deleting exchanges.

use super::*;

impl VHost {
    /// exchange.declare; on a cluster the declaration is committed to the
    /// metadata group and so made on every node.
    pub fn declare_exchange(&self, req: ExchangeDeclare) -> Result<Arc<Exchange>, AmqpError> {
        if !req.passive && self.replication.cluster().is_some() {
            // What does not depend on the shared state is refused here,
            // before anything is proposed.
            if req.name.is_empty() {
                return Err(default_exchange_error());
            }
            crate::broker::check_name_length("exchange name", req.name)?;
            declared_type(req.kind, req.arguments)?;
            let change = Change::DeclareExchange {
                vhost: self.name.clone(),
                name: req.name.to_string(),
                kind: req.kind.to_string(),
                durable: req.durable,
                auto_delete: req.auto_delete,
                internal: req.internal,
                arguments: req.arguments.clone(),
                home: self.replication.node().map(str::to_string),
            };
            let what = format!("declare {}", self.exchange_resource(req.name));
            if let Some(outcome) = self.replication.replicate(&change, &what) {
                outcome?.into_result()?;
                return self
                    .exchange(req.name)
                    .ok_or_else(|| self.no_exchange(req.name));
            }
        }
        self.apply_declare_exchange(req, None)
            .map(|(exchange, _)| exchange)
    }

    /// The declaration made on this node; also whether it made the
    /// exchange. On a cluster, `home` is the node that proposed it: a super
    /// stream's partitions are cluster queues that live there.
    pub(crate) fn apply_declare_exchange(
        &self,
        req: ExchangeDeclare,
        home: Option<&str>,
    ) -> Result<(Arc<Exchange>, bool), AmqpError> {
        if req.name.is_empty() {
            return Err(default_exchange_error());
        }
        crate::broker::check_name_length("exchange name", req.name)?;
        if req.passive {
            return self
                .exchange(req.name)
                .map(|x| (x, false))
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
            crate::broker::check_name_length(
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
                self.ensure_partitions(&existing, n, home)?;
            }
            return Ok((existing, false));
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
            self.ensure_partitions(&exchange, n, home)?;
        }
        Ok((exchange, true))
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

    /// exchange.delete; on a cluster, committed to the metadata group.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        let change = Change::DeleteExchange {
            vhost: self.name.clone(),
            name: name.to_string(),
            if_unused,
        };
        let what = format!("delete {}", self.exchange_resource(name));
        self.replication
            .commit(&change, &what, || {
                self.apply_delete_exchange(name, if_unused).map(|_| false)
            })
            .map(|_| ())
    }

    /// The deletion made on this node.
    pub(crate) fn apply_delete_exchange(
        &self,
        name: &str,
        if_unused: bool,
    ) -> Result<(), AmqpError> {
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
    pub(super) fn unbind_everywhere(&self, destination: &Destination) {
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

    pub(super) fn auto_delete_if_unused(&self, exchange: &Exchange) {
        if exchange.auto_delete && !exchange.has_bindings() {
            self.remove_exchange(&exchange.name);
        }
    }
}
