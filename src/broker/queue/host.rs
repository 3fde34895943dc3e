//! What a queue needs from the vhost it lives in, held weakly so that the
//! queue layer does not depend on the vhost (as `DeliverySink` does for
//! the consumer's connection). Used off the per-message path: at creation,
//! to dead-letter, and when `x-expires` removes the queue.

use super::paging::PageBudget;
use super::{Queue, QueuedMessage, RoutedQueues, Settle};
use crate::broker::message::Message;
use crate::protocol::FieldTable;
use std::sync::Arc;

/// What became of a message handed to its queues.
pub struct Delivered {
    /// Some queue refused it (overflow `reject-publish`).
    pub refused: bool,
    /// The log sequence a confirm waits for (stored persistent message).
    pub log_seq: Option<u64>,
    pub message: Arc<Message>,
    /// Forwarded to queues of other cluster nodes: their answers.
    pub forwarded: Option<Arc<crate::broker::forward::Receipt>>,
}

pub trait QueueHost: Send + Sync {
    /// The broker's paging budget, which the queue pages against.
    fn page_budget(&self) -> Arc<PageBudget>;

    /// The queues exchange `exchange` routes `keys` and `headers` to (the
    /// dead-letter exchange, for a dead letter).
    fn route_by_name(
        &self,
        exchange: &str,
        keys: &[&str],
        headers: Option<&FieldTable>,
    ) -> RoutedQueues;

    /// Hands a routed message to its queues (storing it first if it is
    /// persistent).
    fn deliver(&self, message: Message, queues: &[Arc<Queue>]) -> Delivered;

    /// Records that message `id` left `queue` once the log has synced past
    /// `seq`.
    fn remove_after_sync(&self, seq: u64, id: u64, queue: String);

    /// Removes `queue` from the vhost (it expired).
    fn remove_queue(&self, queue: &Arc<Queue>);

    /// Acks, nacks and rejects of messages of a queue that lives on
    /// another node (they go back to that node).
    fn settle_remote(&self, queue: &Arc<Queue>, messages: Vec<QueuedMessage>, how: Settle);
}

/// The host of a queue made without a vhost (`Queue::new`): an empty
/// `Weak<NoHost>` never upgrades, so none of these is ever called.
pub(super) enum NoHost {}

impl QueueHost for NoHost {
    fn page_budget(&self) -> Arc<PageBudget> {
        match *self {}
    }

    fn route_by_name(&self, _: &str, _: &[&str], _: Option<&FieldTable>) -> RoutedQueues {
        match *self {}
    }

    fn deliver(&self, _: Message, _: &[Arc<Queue>]) -> Delivered {
        match *self {}
    }

    fn remove_after_sync(&self, _: u64, _: u64, _: String) {
        match *self {}
    }

    fn remove_queue(&self, _: &Arc<Queue>) {
        match *self {}
    }

    fn settle_remote(&self, _: &Arc<Queue>, _: Vec<QueuedMessage>, _: Settle) {
        match *self {}
    }
}
