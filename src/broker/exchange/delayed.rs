//! `x-delayed-message` exchanges (RabbitMQ's delayed message exchange
//! plugin): a message with a positive `x-delay` header is held for that
//! many milliseconds, then routed as the exchange's `x-delayed-type` says.
//!
//! Holding is here: storing the message (so the delay survives a restart),
//! the timer, and the log's bookkeeping once it fired. Routing it when due
//! is the vhost's, reached through `DelayHost` (generic, not `dyn`: a
//! delayed publish costs no dynamic call).

use super::Exchange;
use crate::broker::arguments;
use crate::broker::message::Message;
use crate::store::Store;
use std::sync::{Arc, Weak};

/// What holding a delayed message needs from the vhost of its exchange.
pub trait DelayHost: Send + Sync + Sized + 'static {
    /// The vhost's name, under which the message log keeps its messages.
    fn vhost_name(&self) -> &str;

    /// Where persistent messages are stored, if anywhere.
    fn store(&self) -> Option<&Arc<Store>>;

    /// Itself, weakly: a pending delay does not keep the vhost alive.
    fn weak(&self) -> Weak<Self>;

    /// Routes a copy of due message `held` through exchange `exchange`,
    /// if it still exists, and hands it to the queues (the copy is stored
    /// anew for them). Returns the log sequence a copy written to a stream
    /// waits for, if there is one.
    fn route_due(&self, exchange: &str, held: &Message) -> Option<u64>;

    /// Records that message `id` left `holder` once the log has synced
    /// past `seq`.
    fn remove_after_sync(&self, seq: u64, id: u64, holder: String);
}

impl Exchange {
    /// How long (ms) this exchange holds `message`; `None` when it routes
    /// it now (not a delaying exchange, or no positive `x-delay`).
    pub fn delay_of(&self, message: &Message) -> Option<u64> {
        if !self.delayed {
            return None;
        }
        let delay = message
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delay"))
            .and_then(arguments::as_int)?;
        (delay > 0).then(|| delay.min(u64::MAX as i128) as u64)
    }

    /// Holds `message` for `delay_ms`, then routes it through `host`.
    /// Persistent messages on a durable exchange are stored (with their
    /// due time) so the delay survives a restart; returns the log sequence
    /// a confirm must wait for.
    pub fn delay<H: DelayHost>(
        &self,
        host: &H,
        mut message: Message,
        delay_ms: u64,
    ) -> Option<u64> {
        let due_ms = now_ms().saturating_add(delay_ms);
        let mut log_seq = None;
        if message.is_persistent() && self.durable {
            let holder = holder(due_ms, &self.name);
            match (host.store(), holder.len() <= 255) {
                (Some(store), true) => {
                    let (id, seq) = store.log.append(
                        host.vhost_name(),
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
                    tracing::warn!(exchange = %self.name, "exchange name too long to persist a delayed message")
                }
                (None, _) => {}
            }
        }
        schedule(host, self.name.clone(), Arc::new(message), due_ms);
        log_seq
    }
}

/// Routes `message` through exchange `exchange` of `host` at `due_ms` (ms
/// since the Unix epoch); at once if that has passed (after a restart).
pub fn schedule<H: DelayHost>(host: &H, exchange: String, message: Arc<Message>, due_ms: u64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let vhost = host.weak();
    // A vhost deleted meanwhile still owes the log the removal.
    let store = host.store().cloned();
    let vhost_name = host.vhost_name().to_string();
    let wait = std::time::Duration::from_millis(due_ms.saturating_sub(now_ms()));
    runtime.spawn(async move {
        tokio::time::sleep(wait).await;
        match vhost.upgrade() {
            Some(vhost) => fire(&*vhost, &exchange, &message, due_ms),
            None => {
                if let (Some(store), Some(id)) = (store, message.store_id) {
                    store
                        .log
                        .remove(id, &vhost_name, &holder(due_ms, &exchange));
                }
            }
        }
    });
}

/// A delayed message is due: route it now through its exchange.
fn fire<H: DelayHost>(host: &H, exchange: &str, held: &Message, due_ms: u64) {
    let stream_copy = host.route_due(exchange, held);
    if let Some(id) = held.store_id {
        let holder = holder(due_ms, exchange);
        match stream_copy {
            Some(seq) => host.remove_after_sync(seq, id, holder),
            None => {
                if let Some(store) = host.store() {
                    store.log.remove(id, host.vhost_name(), &holder);
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The message log's "queue" for a delayed message: its due time and
/// exchange. The NUL prefix cannot occur in a real queue name.
fn holder(due_ms: u64, exchange: &str) -> String {
    format!("\0delayed:{due_ms}:{exchange}")
}

/// The due time and exchange of a message log "queue" that holds a
/// delayed message; `None` for a real queue.
pub fn parse_holder(name: &str) -> Option<(u64, &str)> {
    let rest = name.strip_prefix("\0delayed:")?;
    let (due, exchange) = rest.split_once(':')?;
    Some((due.parse().ok()?, exchange))
}
