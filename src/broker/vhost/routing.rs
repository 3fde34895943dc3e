//! Routing a message through exchanges (exchange-to-exchange bindings,
//! alternate exchanges) to queues.

use super::*;

impl VHost {
    /// The queues a message published to `exchange` with these routing keys
    /// reaches: through exchange-to-exchange bindings, and the alternate
    /// exchange when nothing matched. Each queue appears once.
    pub fn route(
        &self,
        exchange: &Exchange,
        keys: &[&str],
        headers: Option<&FieldTable>,
    ) -> RoutedQueues {
        let mut routed = Routed::default();
        // Exchanges routed through besides `exchange` (only exchange-to-
        // exchange bindings and alternate exchanges add any, so the usual
        // publish allocates nothing here).
        let mut visited: Vec<String> = Vec::new();
        self.route_through(exchange, keys, headers, &mut routed, &mut visited);
        let mut current_ae_source = exchange.alternate_exchange();
        while routed.queues.is_empty() {
            let Some(ae_name) = current_ae_source.take() else {
                break;
            };
            if ae_name == exchange.name || visited.contains(&ae_name) {
                break;
            }
            let Some(ae) = self.exchange(&ae_name) else {
                break;
            };
            // The alternate's own bindings must not lead back here.
            if !visited.contains(&exchange.name) {
                visited.push(exchange.name.clone());
            }
            visited.push(ae_name);
            self.route_through(&ae, keys, headers, &mut routed, &mut visited);
            current_ae_source = ae.alternate_exchange();
        }
        let mut queues = routed.queues;
        if queues.len() > 1 {
            let mut seen = std::collections::HashSet::new();
            queues.retain(|q| seen.insert(Arc::as_ptr(q)));
        }
        queues
    }

    fn route_through(
        &self,
        exchange: &Exchange,
        keys: &[&str],
        headers: Option<&FieldTable>,
        routed: &mut Routed,
        visited: &mut Vec<String>,
    ) {
        for key in keys {
            exchange.route(key, headers, routed);
        }
        while let Some(next) = routed.exchanges.pop() {
            if next == exchange.name || visited.contains(&next) {
                continue;
            }
            visited.push(next.clone());
            if let Some(dest) = self.exchange(&next) {
                for key in keys {
                    dest.route(key, headers, routed);
                }
            }
        }
    }

    /// Routes by exchange name (`""` is the default exchange); a missing
    /// exchange routes nowhere. Used for dead letters.
    pub fn route_by_name(
        &self,
        exchange: &str,
        keys: &[&str],
        headers: Option<&FieldTable>,
    ) -> RoutedQueues {
        if exchange.is_empty() {
            // One copy per queue, even when CC names it again later on.
            let mut found = RoutedQueues::new();
            for queue in keys.iter().filter_map(|k| self.route_default(k)) {
                if !found.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                    found.push(queue);
                }
            }
            return found;
        }
        match self.exchange(exchange) {
            Some(x) => self.route(&x, keys, headers),
            None => RoutedQueues::new(),
        }
    }

    /// The default exchange: the queue named by the key, or a direct
    /// reply-to consumer (on a cluster, perhaps on another node: then the
    /// reply is forwarded there).
    pub fn route_default(&self, key: &str) -> Option<Arc<Queue>> {
        if let Some(token) = key.strip_prefix(REPLY_TO_PREFIX) {
            return self
                .reply_queue(key)
                .or_else(|| self.remote_reply_queue(key, token));
        }
        self.queue(key)
    }

    /// The reply-to address of a consumer on another cluster node, as a
    /// queue of that node (made for this one message).
    fn remote_reply_queue(&self, key: &str, token: &str) -> Option<Arc<Queue>> {
        self.replication.cluster()?;
        let node = names::reply_to_node(token)?;
        if self.replication.node() == Some(node.as_str()) {
            return None;
        }
        Some(Arc::new(Queue::remote(
            key.to_string(),
            self.name.clone(),
            QueueOptions::default(),
            QueueArguments::default(),
            self.self_ref.clone(),
            node,
        )))
    }
}
