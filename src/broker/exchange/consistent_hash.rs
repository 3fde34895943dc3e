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

/// The most ring points one binding may ask for. Each point is a ring
/// entry inserted under the exchange's lock: an unbounded weight
/// (4294967295) would take the memory of the machine.
pub const MAX_WEIGHT: u32 = 1000;

#[derive(Default)]
pub struct ConsistentHashRouter {
    /// Each ring point's destinations, sorted, so that the owner of a
    /// point (the first) does not depend on the order of binding: two
    /// bindings to one destination share their first points, and two
    /// destinations' points may collide (CRC-32). Kept with repeats so
    /// that removing one binding leaves the other's points in place.
    ring: BTreeMap<u32, Vec<Destination>>,
}

/// The binding key must be an integer weight from 1 to `MAX_WEIGHT`.
pub fn validate_weight(key: &str) -> Result<u32, AmqpError> {
    let weight = key.trim().parse::<u32>().map_err(|_| {
        AmqpError::precondition_failed(format!("The binding key must be an integer: <<\"{key}\">>"))
    })?;
    if !(1..=MAX_WEIGHT).contains(&weight) {
        return Err(AmqpError::precondition_failed(format!(
            "The binding key (weight) must be from 1 to {MAX_WEIGHT}: <<\"{key}\">>"
        )));
    }
    Ok(weight)
}

/// Where a destination's `point`-th point sits on the ring.
fn point_hash(dest: &Destination, point: u32) -> u32 {
    let id = format!(
        "{}\0{}\0{point}",
        if dest.is_queue() { "q" } else { "e" },
        dest.name()
    );
    crc32c::crc32c(id.as_bytes())
}

/// The order that decides which destination owns a shared point.
fn rank(dest: &Destination) -> (bool, &str) {
    (!dest.is_queue(), dest.name())
}

impl ConsistentHashRouter {
    /// Adds the binding's points only: the cost is its weight, not the
    /// size of the ring.
    pub fn add(&mut self, binding: &Binding) {
        let weight = validate_weight(&binding.routing_key).unwrap_or(0);
        let dest = &binding.destination;
        for point in 0..weight {
            let owners = self.ring.entry(point_hash(dest, point)).or_default();
            let at = owners.partition_point(|d| rank(d) <= rank(dest));
            owners.insert(at, dest.clone());
        }
    }

    pub fn remove(&mut self, binding: &Binding) {
        let weight = validate_weight(&binding.routing_key).unwrap_or(0);
        let dest = &binding.destination;
        for point in 0..weight {
            let hash = point_hash(dest, point);
            if let Some(owners) = self.ring.get_mut(&hash) {
                if let Some(at) = owners.iter().position(|d| d == dest) {
                    owners.remove(at);
                }
                if owners.is_empty() {
                    self.ring.remove(&hash);
                }
            }
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
        if let Some(dest) = found.and_then(|(_, owners)| owners.first()) {
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

    fn bind(r: &mut ConsistentHashRouter, name: &str, weight: &str) -> Binding {
        let binding = Binding {
            routing_key: weight.into(),
            arguments: FieldTable::default(),
            destination: Destination::Queue(queue(name)),
        };
        r.add(&binding);
        binding
    }

    fn placements(r: &ConsistentHashRouter) -> Vec<String> {
        (0..2000)
            .map(|i| {
                let mut out = Routed::default();
                r.route(&format!("k{i}"), None, None, &mut out);
                out.queues
                    .first()
                    .map(|q| q.name.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn the_ring_does_not_depend_on_binding_order_and_unbinding_restores_it() {
        let mut one = ConsistentHashRouter::default();
        bind(&mut one, "a", "10");
        bind(&mut one, "b", "20");
        let mut other = ConsistentHashRouter::default();
        bind(&mut other, "b", "20");
        bind(&mut other, "a", "10");
        assert_eq!(placements(&one), placements(&other));
        // Two bindings of one queue share their first points: removing the
        // smaller keeps the larger whole.
        let before = placements(&one);
        let extra = bind(&mut one, "a", "5");
        one.remove(&extra);
        assert_eq!(placements(&one), before);
        let c = bind(&mut one, "c", "30");
        one.remove(&c);
        assert_eq!(placements(&one), before);
    }

    #[test]
    fn weights_are_bounded() {
        assert_eq!(validate_weight("1000").ok(), Some(1000));
        for bad in ["0", "1001", "4294967295"] {
            assert_eq!(
                validate_weight(bad).unwrap_err().text,
                format!("PRECONDITION_FAILED - The binding key (weight) must be from 1 to 1000: <<\"{bad}\">>")
            );
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
