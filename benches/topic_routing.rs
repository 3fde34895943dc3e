//! Topic routing's worst cases: 255-byte routing keys of one-letter words
//! against bindings of 1 to 127 `#`s mixed with `*` and literals (issue:
//! the old matcher tried every split point per `#`; 8 `#`s and a 40-word
//! key took 1.4 s per publish, 12 `#`s ran for hours). Prints the time per
//! routed key for each binding and the slowest, then the time per route of
//! a usual set of bindings; run with `cargo bench --bench topic_routing`.

use broker::broker::exchange::{Binding, Destination, Exchange, ExchangeKind, Routed};
use broker::broker::queue::{Queue, QueueOptions};
use broker::protocol::FieldTable;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn topic_exchange(patterns: &[String]) -> Exchange {
    let exchange = Exchange::new(
        "t".into(),
        ExchangeKind::Topic,
        false,
        false,
        false,
        FieldTable::default(),
    );
    for (i, pattern) in patterns.iter().enumerate() {
        exchange.bind(Binding {
            routing_key: pattern.clone(),
            arguments: FieldTable::default(),
            destination: Destination::Queue(Arc::new(Queue::new(
                format!("q{i}"),
                "/".into(),
                QueueOptions::default(),
            ))),
        });
    }
    exchange
}

/// `hashes` `#`s, with `filler` after every second one.
fn pattern(hashes: usize, filler: &str) -> String {
    let mut words = Vec::new();
    for i in 0..hashes {
        words.push("#");
        if i % 2 == 1 && !filler.is_empty() {
            words.push(filler);
        }
    }
    words.join(".")
}

fn time_per_route(exchange: &Exchange, key: &str) -> (Duration, usize) {
    let rounds = 20;
    let mut routed = 0;
    let start = Instant::now();
    for _ in 0..rounds {
        let mut out = Routed::default();
        exchange.route(key, None, &mut out);
        routed = out.queues.len();
    }
    (start.elapsed() / rounds, routed)
}

fn main() {
    // `TOPIC_BENCH=usual` runs only the last row (a matcher that tries every
    // split point would not finish the worst cases).
    if std::env::var("TOPIC_BENCH").as_deref() != Ok("usual") {
        worst_cases();
    }
    usual_case();
}

fn worst_cases() {
    // 128 words, 255 bytes.
    let key = vec!["a"; 128].join(".");
    let missing = format!("{}.z", vec!["a"; 127].join("."));
    let mut slowest = Duration::ZERO;
    println!("{:<40} {:>12} {:>12}", "binding", "hit (us)", "miss (us)");
    for hashes in [1, 2, 8, 12, 32, 64, 127] {
        for filler in ["", "*", "a", "b"] {
            let p = pattern(hashes, filler);
            let exchange = topic_exchange(std::slice::from_ref(&p));
            let (hit, _) = time_per_route(&exchange, &key);
            let (miss, _) = time_per_route(&exchange, &missing);
            slowest = slowest.max(hit).max(miss);
            let label = format!("{hashes} x # with {filler:?}");
            println!(
                "{label:<40} {:>12.1} {:>12.1}",
                hit.as_secs_f64() * 1e6,
                miss.as_secs_f64() * 1e6
            );
        }
    }
    // All of them bound at once: one trie.
    let all: Vec<String> = [1, 2, 8, 12, 32, 64, 127]
        .iter()
        .flat_map(|h| ["", "*", "a", "b"].map(|f| pattern(*h, f)))
        .collect();
    let exchange = topic_exchange(&all);
    let (hit, routed) = time_per_route(&exchange, &key);
    slowest = slowest.max(hit);
    println!(
        "{:<40} {:>12.1}   ({routed} of {} bindings matched)",
        "all 28 bindings together",
        hit.as_secs_f64() * 1e6,
        all.len()
    );
    println!("slowest route: {:.1} us", slowest.as_secs_f64() * 1e6);
}

fn usual_case() {
    // The usual case, for before/after comparisons of the matcher: 300
    // bindings of three-word patterns, keys of three words.
    let mut usual = Vec::new();
    for i in 0..100 {
        usual.push(format!("stock.s{i}.*"));
        usual.push(format!("stock.*.x{i}"));
        usual.push(format!("news.s{i}.#"));
    }
    usual.push("#.nyse".into());
    let exchange = topic_exchange(&usual);
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("stock.s{}.x{}", i % 150, i % 120))
        .collect();
    let rounds = 200;
    let start = Instant::now();
    let mut routed = 0;
    for _ in 0..rounds {
        for key in &keys {
            let mut out = Routed::default();
            exchange.route(key, None, &mut out);
            routed += out.queues.len();
        }
    }
    let per_key = start.elapsed() / (rounds * keys.len() as u32);
    println!(
        "usual: 301 bindings, 3-word keys: {:.0} ns per route ({routed} routed)",
        per_key.as_secs_f64() * 1e9
    );
}
