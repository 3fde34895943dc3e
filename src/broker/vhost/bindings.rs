//! Bindings between exchanges and queues.

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
        crate::broker::check_name_length("routing key", key)?;
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
}
