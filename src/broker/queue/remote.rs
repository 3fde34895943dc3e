//! A queue that lives on another node of the cluster, as this node sees
//! it: its definition (name, type, arguments) for routing, declares and
//! management, and the node it lives on. It holds no messages and no
//! consumers here: what this node routes to it is forwarded to its node
//! (`broker::forward`), and operations on its contents (purge, delete,
//! counts) are asked of that node.

use super::kind::Kind;
use super::{Queue, QueueArguments, QueueHost, QueueOptions, QueueType};
use std::sync::{Arc, Weak};

/// Where a remote queue lives.
pub struct Home {
    pub node: String,
    pub queue_type: QueueType,
}

impl Queue {
    /// The definition of a queue that lives on `node`.
    pub fn remote(
        name: String,
        vhost: String,
        options: QueueOptions,
        args: QueueArguments,
        host: Weak<dyn QueueHost>,
        node: String,
    ) -> Queue {
        let queue_type = args.queue_type;
        let mut queue = Queue::with_arguments(name, vhost, options, args, host, None);
        queue.kind = Kind::Remote(Arc::new(Home { node, queue_type }));
        queue.shared()
    }

    /// Marks it a cluster's queue (its definition on every node).
    pub fn shared(mut self) -> Queue {
        self.shared = true;
        self
    }

    /// Whether its definition is on every node of the cluster.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The node this queue lives on, when that is another node.
    pub fn remote_node(&self) -> Option<&str> {
        match &self.kind {
            Kind::Remote(home) => Some(&home.node),
            _ => None,
        }
    }

    /// Removes it from its vhost (an auto-delete queue whose last consumer,
    /// on another node, went).
    pub fn remove_from_host(self: &Arc<Self>) {
        if let Some(host) = self.host.upgrade() {
            host.remove_queue(self);
        }
    }

    /// Whether it lives on another node.
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, Kind::Remote(_))
    }
}
