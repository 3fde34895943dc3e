//! Consistent-hash exchange (`x-consistent-hash`, as RabbitMQ's plugin):
//! each binding's key is its weight, the number of points it gets on a hash
//! ring; a message goes to the one destination whose point follows the
//! hash of its routing key (or of the header named by the exchange argument
//! `hash-header`). The hash is CRC-32C of the UTF-8 bytes, so clients can
//! predict placement; adding a destination moves only the keys that land on
//! its new points.

use super::{Binding, Destination, Routed};
use crate::broker::arguments::as_string;
use crate::protocol::{AmqpError, FieldTable};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct ConsistentHashRouter {
    bindings: Vec<(Destination, u32)>,
    ring: BTreeMap<u32, Destination>,
}

/// The binding key must be a positive integer weight.
pub fn validate_weight(key: &str) -> Result<u32, AmqpError> {
    key.trim().parse::<u32>().map_err(|_| {
        AmqpError::precondition_failed(format!("The binding key must be an integer: <<\"{key}\">>"))
    })
}

impl ConsistentHashRouter {
    fn rebuild(&mut self) {
        self.ring.clear();
        for (dest, weight) in &self.bindings {
            for point in 0..*weight {
                let id = format!(
                    "{}\0{}\0{point}",
                    if dest.is_queue() { "q" } else { "e" },
                    dest.name()
                );
                self.ring
                    .insert(crc32c::crc32c(id.as_bytes()), dest.clone());
            }
        }
    }

    pub fn add(&mut self, binding: &Binding) {
        let weight = validate_weight(&binding.routing_key).unwrap_or(0);
        self.bindings.push((binding.destination.clone(), weight));
        self.rebuild();
    }

    pub fn remove(&mut self, binding: &Binding) {
        let weight = validate_weight(&binding.routing_key).unwrap_or(0);
        if let Some(pos) = self
            .bindings
            .iter()
            .position(|(d, w)| d == &binding.destination && *w == weight)
        {
            self.bindings.remove(pos);
            self.rebuild();
        }
    }

    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        hash_header: Option<&str>,
        out: &mut Routed,
    ) {
        let input = match hash_header {
            Some(name) => match headers
                .and_then(|h| h.inner().get(name))
                .and_then(as_string)
            {
                Some(value) => value,
                None => return,
            },
            None => routing_key.to_string(),
        };
        let hash = crc32c::crc32c(input.as_bytes());
        let found = self
            .ring
            .range(hash..)
            .next()
            .or_else(|| self.ring.iter().next());
        if let Some((_, dest)) = found {
            out.add(dest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::queue;
    use super::*;

    #[test]
    fn keys_spread_by_weight_and_stay_put() {
        let mut r = ConsistentHashRouter::default();
        for (name, weight) in [("a", "10"), ("b", "30")] {
            r.add(&Binding {
                routing_key: weight.into(),
                arguments: FieldTable::default(),
                destination: Destination::Queue(queue(name)),
            });
        }
        let place = |r: &ConsistentHashRouter, key: &str| {
            let mut out = Routed::default();
            r.route(key, None, None, &mut out);
            assert_eq!(out.queues.len(), 1);
            out.queues[0].name.clone()
        };
        let keys: Vec<String> = (0..4000).map(|i| format!("order-{i}")).collect();
        let before: Vec<String> = keys.iter().map(|k| place(&r, k)).collect();
        let to_b = before.iter().filter(|q| *q == "b").count();
        assert!(
            (2400..3600).contains(&to_b),
            "weight 30 of 40 should get ~3000, got {to_b}"
        );
        // Same key, same place.
        assert_eq!(place(&r, "order-7"), before[7]);
        // A new destination takes keys only for itself.
        r.add(&Binding {
            routing_key: "20".into(),
            arguments: FieldTable::default(),
            destination: Destination::Queue(queue("c")),
        });
        for (k, old) in keys.iter().zip(&before) {
            let now = place(&r, k);
            assert!(now == *old || now == "c", "{k} moved from {old} to {now}");
        }
    }

    #[test]
    fn weight_must_be_an_integer() {
        assert_eq!(
            validate_weight("abc").unwrap_err().text,
            "PRECONDITION_FAILED - The binding key must be an integer: <<\"abc\">>"
        );
    }
}
