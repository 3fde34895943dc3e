//! The vhost as its queues' host: what they call back for when
//! dead-lettering and expiring (see `queue/host.rs`).

use super::*;
use crate::broker::queue::{QueueHost, QueuedMessage, Settle};

impl QueueHost for VHost {
    fn page_budget(&self) -> Arc<PageBudget> {
        self.pages.clone()
    }

    fn route_by_name(
        &self,
        exchange: &str,
        keys: &[&str],
        headers: Option<&FieldTable>,
    ) -> RoutedQueues {
        VHost::route_by_name(self, exchange, keys, headers)
    }

    fn deliver(&self, message: Message, queues: &[Arc<Queue>]) -> Delivered {
        VHost::deliver(self, message, queues)
    }

    fn remove_after_sync(&self, seq: u64, id: u64, queue: String) {
        VHost::remove_after_sync(self, seq, id, queue)
    }

    fn remove_queue(&self, queue: &Arc<Queue>) {
        VHost::remove_queue(self, queue);
    }

    fn settle_remote(&self, queue: &Arc<Queue>, messages: Vec<QueuedMessage>, how: Settle) {
        if let Some(relays) = self.replication.relays() {
            relays.settle(queue, messages, how);
        }
    }
}
