//! Partitioned stream (`x-super-stream`, this broker's extension): the
//! exchange of a stream split into partitions, stream queues named
//! `<name>-0` … `<name>-<N-1>`, each bound with its index as the key. A
//! message goes to exactly one partition:
//!
//! 1. an `x-partition` header (integer) names it;
//! 2. otherwise a non-empty routing key picks it by hash: murmur3 (x86,
//!    32-bit, seed 104729, as RabbitMQ's stream clients hash routing keys)
//!    of the key's UTF-8 bytes, unsigned, modulo the partition count;
//! 3. otherwise (empty key) partitions take turns.
//!
//! Messages with one key stay in one partition, so their order holds.

use super::{Binding, Destination, Routed};
use crate::broker::arguments::as_int;
use crate::protocol::FieldTable;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seed of the routing-key hash.
pub const HASH_SEED: u32 = 104_729;

#[derive(Default)]
pub struct SuperStreamRouter {
    /// Partition index -> its stream queue.
    partitions: BTreeMap<u32, Destination>,
    round_robin: AtomicU64,
}

impl SuperStreamRouter {
    pub fn add(&mut self, binding: &Binding) {
        if let Ok(index) = binding.routing_key.parse::<u32>() {
            self.partitions.insert(index, binding.destination.clone());
        }
    }

    pub fn remove(&mut self, binding: &Binding) {
        if let Ok(index) = binding.routing_key.parse::<u32>() {
            if self.partitions.get(&index) == Some(&binding.destination) {
                self.partitions.remove(&index);
            }
        }
    }

    pub fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Routed) {
        let count = self.partitions.len() as u32;
        if count == 0 {
            return;
        }
        let explicit = headers
            .and_then(|h| h.inner().get("x-partition"))
            .and_then(as_int);
        let index = match explicit {
            Some(i) if i >= 0 && i < count as i128 => i as u32,
            Some(_) => return, // no such partition: unroutable
            None if routing_key.is_empty() => {
                (self.round_robin.fetch_add(1, Ordering::Relaxed) % count as u64) as u32
            }
            None => partition_of(routing_key, count),
        };
        if let Some(destination) = self.partitions.get(&index) {
            out.add(destination);
        }
    }
}

/// The partition a routing key goes to among `count`.
pub fn partition_of(routing_key: &str, count: u32) -> u32 {
    murmur3_32(routing_key.as_bytes(), HASH_SEED) % count.max(1)
}

/// MurmurHash3, x86 32-bit variant.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, byte) in tail.iter().enumerate() {
            k |= (*byte as u32) << (8 * i);
        }
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::super::test_support::queue;
    use super::*;
    use crate::protocol::AMQPValue;

    #[test]
    fn murmur3_matches_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    fn router(n: u32) -> SuperStreamRouter {
        let mut r = SuperStreamRouter::default();
        for i in 0..n {
            r.add(&Binding {
                routing_key: i.to_string(),
                arguments: FieldTable::default(),
                destination: Destination::Queue(queue(&format!("s-{i}"))),
            });
        }
        r
    }

    fn place(r: &SuperStreamRouter, key: &str, headers: Option<&FieldTable>) -> Vec<String> {
        let mut out = Routed::default();
        r.route(key, headers, &mut out);
        out.queues.iter().map(|q| q.name.clone()).collect()
    }

    #[test]
    fn keys_hash_headers_name_and_empty_keys_take_turns() {
        let r = router(3);
        for key in ["order-1", "order-2", "customer-42"] {
            let expected = format!("s-{}", partition_of(key, 3));
            assert_eq!(place(&r, key, None), vec![expected.clone()]);
            assert_eq!(place(&r, key, None), vec![expected]);
        }
        let mut h = FieldTable::default();
        h.insert("x-partition".into(), AMQPValue::LongInt(2));
        assert_eq!(place(&r, "order-1", Some(&h)), vec!["s-2".to_string()]);
        h.insert("x-partition".into(), AMQPValue::LongInt(3));
        assert!(place(&r, "order-1", Some(&h)).is_empty());
        let turns: Vec<Vec<String>> = (0..3).map(|_| place(&r, "", None)).collect();
        assert_eq!(
            turns,
            vec![
                vec!["s-0".to_string()],
                vec!["s-1".into()],
                vec!["s-2".into()]
            ]
        );
    }
}
