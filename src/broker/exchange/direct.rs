//! Direct exchange: the routing key must equal the binding key byte for byte.

use super::{Binding, Destination, Routed};
use std::collections::HashMap;

#[derive(Default)]
pub struct DirectRouter {
    /// Per key, each destination with the number of bindings leading to it
    /// (the same key may be bound with different arguments).
    by_key: HashMap<String, Vec<(Destination, usize)>>,
}

impl DirectRouter {
    pub fn add(&mut self, binding: &Binding) {
        let dests = self.by_key.entry(binding.routing_key.clone()).or_default();
        match dests.iter_mut().find(|(d, _)| d == &binding.destination) {
            Some((_, count)) => *count += 1,
            None => dests.push((binding.destination.clone(), 1)),
        }
    }

    pub fn remove(&mut self, binding: &Binding) {
        let Some(dests) = self.by_key.get_mut(&binding.routing_key) else {
            return;
        };
        if let Some(pos) = dests.iter().position(|(d, _)| d == &binding.destination) {
            dests[pos].1 -= 1;
            if dests[pos].1 == 0 {
                dests.remove(pos);
            }
        }
        if dests.is_empty() {
            self.by_key.remove(&binding.routing_key);
        }
    }

    pub fn route(&self, routing_key: &str, out: &mut Routed) {
        if let Some(dests) = self.by_key.get(routing_key) {
            dests.iter().for_each(|(d, _)| out.add(d));
        }
    }
}
