//! The topic exchange's matcher against a slow reference of RabbitMQ's
//! semantics (`#` zero or more words, `*` exactly one): the same queues
//! for every key and set of bindings, in bounded time (libFuzzer's
//! `-timeout` catches a matcher that blows up). Input: routing key and
//! binding keys separated by 0xFF, each byte mapped onto a small alphabet
//! (`a`, `b`, `*`, `#`, `.`) so that patterns collide and nest.
#![no_main]

use broker::broker::exchange::{Binding, Destination, Exchange, ExchangeKind, Routed};
use broker::broker::queue::{Queue, QueueOptions};
use broker::protocol::FieldTable;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fn text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(255)
        .map(|b| match b % 8 {
            0 | 1 => 'a',
            2 => 'b',
            3 => '*',
            4 => '#',
            _ => '.',
        })
        .collect()
}

fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Whether `pattern` matches `key`, by dynamic programming over (pattern
/// word, key word): polynomial, and plainly the definition.
fn reference(pattern: &str, key: &str) -> bool {
    let (p, k) = (words(pattern), words(key));
    // matches[i][j]: p[i..] matches k[j..].
    let mut matches = vec![vec![false; k.len() + 1]; p.len() + 1];
    matches[p.len()][k.len()] = true;
    for i in (0..p.len()).rev() {
        for j in (0..=k.len()).rev() {
            matches[i][j] = match p[i] {
                "#" => matches[i + 1][j] || (j < k.len() && matches[i][j + 1]),
                "*" => j < k.len() && matches[i + 1][j + 1],
                word => j < k.len() && k[j] == word && matches[i + 1][j + 1],
            };
        }
    }
    matches[0][0]
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0xFF);
    let key = text(parts.next().unwrap_or_default());
    let patterns: Vec<String> = parts.take(16).map(text).collect();
    let exchange = Exchange::new(
        "t".into(),
        ExchangeKind::Topic,
        false,
        false,
        false,
        FieldTable::default(),
    );
    let queues: Vec<Arc<Queue>> = (0..patterns.len())
        .map(|i| Arc::new(Queue::new(format!("q{i}"), "/".into(), QueueOptions::default())))
        .collect();
    for (pattern, queue) in patterns.iter().zip(&queues) {
        exchange.bind(Binding {
            routing_key: pattern.clone(),
            arguments: FieldTable::default(),
            destination: Destination::Queue(queue.clone()),
        });
    }
    let mut out = Routed::default();
    exchange.route(&key, None, &mut out);
    for (pattern, queue) in patterns.iter().zip(&queues) {
        let routed = out.queues.iter().any(|q| Arc::ptr_eq(q, queue));
        assert_eq!(
            routed,
            reference(pattern, &key),
            "pattern {pattern:?}, key {key:?}"
        );
    }
    // Each queue at most once.
    assert!(out.queues.len() <= queues.len());
});
