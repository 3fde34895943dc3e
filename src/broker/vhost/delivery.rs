//! Handing routed messages to queues; routing delayed messages when due;
//! removals that wait for the log.

use super::*;
use crate::broker::exchange::delayed::DelayHost;
use crate::broker::queue::{Accepted, Delivered};

impl VHost {
    /// Hands a routed message to its queues. A persistent message is first
    /// stored once for all its durable queues. On a cluster, queues that
    /// live on other nodes get it through their node.
    pub fn deliver(&self, mut message: Message, queues: &[Arc<Queue>]) -> Delivered {
        let mut forwarded = None;
        let mut local = std::borrow::Cow::Borrowed(queues);
        if queues.iter().any(|q| q.is_remote()) {
            let remote: Vec<&Arc<Queue>> = queues.iter().filter(|q| q.is_remote()).collect();
            forwarded = self.forward(&message, &remote);
            local = queues.iter().filter(|q| !q.is_remote()).cloned().collect();
        }
        let queues = &local[..];
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
            match queue.publish(message.clone()) {
                Accepted::Yes => {}
                Accepted::Refused => refused = true,
                Accepted::Logged(seq) => {
                    log_seq = Some(log_seq.map_or(seq, |s: u64| s.max(seq)));
                }
            }
        }
        Delivered {
            refused,
            log_seq,
            message,
            forwarded,
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

/// The vhost routes the messages its `x-delayed-message` exchanges held
/// (see `exchange/delayed.rs`).
impl DelayHost for VHost {
    fn vhost_name(&self) -> &str {
        &self.name
    }

    fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    fn weak(&self) -> Weak<Self> {
        self.self_ref.clone()
    }

    fn route_due(&self, exchange: &str, held: &Message) -> Option<u64> {
        let exchange = self.exchange(exchange)?;
        let mut message = held.clone();
        message.store_id = None;
        let queues = self.route(
            &exchange,
            &[&message.routing_key.clone()],
            message.properties.headers().as_ref(),
        );
        let to_stream = queues.iter().any(|q| q.has_own_log());
        let log_seq = self.deliver(message, &queues).log_seq;
        log_seq.filter(|_| to_stream)
    }

    fn remove_after_sync(&self, seq: u64, id: u64, holder: String) {
        VHost::remove_after_sync(self, seq, id, holder)
    }
}
