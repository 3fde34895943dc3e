//! Bindings between exchanges and queues. On a cluster node, a binding to
//! a cluster's queue, and one between two exchanges (every exchange is the
//! cluster's), is committed to the metadata group and so made on every
//! node; a binding to a node's own transient or exclusive queue stays here.

use super::*;

impl VHost {
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
        crate::broker::check_name_length("routing key", key)?;
        validate_binding(&source, key, args)?;
        let record = self.binding_record(exchange, &queue.name, true, key, args);
        if queue.is_shared() {
            let what = format!("bind {} to {}", queue.resource(), source.name);
            if let Some(outcome) = self
                .replication
                .replicate(&Change::Bind(record.clone()), &what)
            {
                return outcome?.into_result().map(|_| ());
            }
        }
        self.apply_bind(&record)
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
        let (Some(_), Some(queue)) = (self.exchange(exchange), self.queue(queue)) else {
            return Ok(());
        };
        queue.check_access(conn)?;
        let record = self.binding_record(exchange, &queue.name, true, key, args);
        if queue.is_shared() {
            let what = format!("unbind {} from {exchange}", queue.resource());
            let change = Change::Unbind(record.clone());
            if let Some(outcome) = self.replication.replicate(&change, &what) {
                return outcome?.into_result().map(|_| ());
            }
        }
        self.apply_unbind(&record)
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
        crate::broker::check_name_length("routing key", key)?;
        validate_binding(&src, key, args)?;
        let record = self.binding_record(source, destination, false, key, args);
        let what = format!("bind {} to {source}", self.exchange_resource(destination));
        self.replication
            .commit(&Change::Bind(record.clone()), &what, || {
                self.apply_bind(&record).map(|_| false)
            })
            .map(|_| ())
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
        if self.exchange(source).is_none() {
            return Ok(());
        }
        let record = self.binding_record(source, destination, false, key, args);
        let what = format!(
            "unbind {} from {source}",
            self.exchange_resource(destination)
        );
        self.replication
            .commit(&Change::Unbind(record.clone()), &what, || {
                self.apply_unbind(&record).map(|_| false)
            })
            .map(|_| ())
    }

    /// The binding made on this node (a missing source or destination
    /// refuses it: the declare that made them came first in the log).
    pub(crate) fn apply_bind(&self, record: &BindingRecord) -> Result<(), AmqpError> {
        let source = self
            .exchange(&record.source)
            .ok_or_else(|| self.no_exchange(&record.source))?;
        let (destination, durable) = if record.destination_is_queue {
            let queue = self
                .queue(&record.destination)
                .ok_or_else(|| self.no_queue(&record.destination))?;
            let durable = queue.options.durable && !queue.is_exclusive();
            (Destination::Queue(queue), durable)
        } else {
            let durable = self
                .exchange(&record.destination)
                .ok_or_else(|| self.no_exchange(&record.destination))?
                .durable;
            (Destination::Exchange(record.destination.clone()), durable)
        };
        source.bind(Binding {
            routing_key: record.routing_key.clone(),
            arguments: record.arguments.clone(),
            destination,
        });
        if let (true, Some(store)) = (source.durable && durable, &self.store) {
            store.catalog.put_binding(record);
        }
        Ok(())
    }

    /// The unbinding made on this node; an auto-delete exchange that lost
    /// its last binding goes.
    pub(crate) fn apply_unbind(&self, record: &BindingRecord) -> Result<(), AmqpError> {
        let Some(source) = self.exchange(&record.source) else {
            return Ok(());
        };
        let destination = if record.destination_is_queue {
            match self.queue(&record.destination) {
                Some(queue) => Destination::Queue(queue),
                None => return Ok(()),
            }
        } else {
            Destination::Exchange(record.destination.clone())
        };
        let binding = Binding {
            routing_key: record.routing_key.clone(),
            arguments: record.arguments.clone(),
            destination,
        };
        if source.unbind(&binding) {
            if let Some(store) = &self.store {
                store.catalog.delete_binding(record);
            }
            self.auto_delete_if_unused(&source);
        }
        Ok(())
    }

    pub(super) fn binding_record(
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
}
