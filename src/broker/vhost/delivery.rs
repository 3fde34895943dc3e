//! Handing routed messages to queues; delayed messages; removals that
//! wait for the log.

use super::*;

impl VHost {
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
            refused |= queue.publish(message.clone()) == crate::broker::queue::Accepted::Refused;
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

    pub(super) fn schedule_delayed(&self, exchange: String, message: Arc<Message>, due_ms: u64) {
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
}
