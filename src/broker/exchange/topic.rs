//! Topic exchange: binding keys are patterns of dot-separated words, where a
//! whole word `*` matches exactly one word and `#` zero or more. Patterns are
//! kept in a trie, so routing cost follows the key's length, not the number
//! of bindings.
//!
//! Matching runs the trie as an automaton: the set of nodes the words so far
//! lead to, advanced one word at a time, each node at most once per word.
//! A publish costs at most O(words x trie nodes) however the `#`s are
//! arranged (trying every split point for every `#` grows combinatorially:
//! `#.#.#.#.#.#.#.#` against a 40-word key took seconds). Adjacent `#`s
//! are one `#` (`#.#` matches what `#` does) and are collapsed when bound.

use super::{Binding, Destination, Routed};
use rustc_hash::FxHashMap;

struct Node {
    /// Numbers the node for the per-publish visited marks.
    id: usize,
    /// Reached through a `#`: it may take any number of further words and
    /// stay where it is.
    after_hash: bool,
    words: FxHashMap<String, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    /// Destinations of patterns ending here, with their binding counts.
    destinations: Vec<(Destination, usize)>,
}

impl Node {
    fn new(id: usize, after_hash: bool) -> Self {
        Node {
            id,
            after_hash,
            words: FxHashMap::default(),
            star: None,
            hash: None,
            destinations: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.destinations.is_empty()
    }
}

/// Node numbers in use, reused after unbinds so that they stay below the
/// number of nodes there have been at once.
#[derive(Default)]
struct NodeIds {
    next: usize,
    free: Vec<usize>,
    /// How many nodes follow a `#`: without any, no two paths reach one
    /// node, and matching needs no visited marks.
    after_hash: usize,
}

impl NodeIds {
    fn take(&mut self, after_hash: bool) -> Node {
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        });
        self.after_hash += after_hash as usize;
        Node::new(id, after_hash)
    }

    /// Gives back the numbers of a removed node and everything below it.
    fn release(&mut self, node: &Node) {
        self.free.push(node.id);
        self.after_hash -= node.after_hash as usize;
        for child in node
            .words
            .values()
            .chain(node.star.as_deref())
            .chain(node.hash.as_deref())
        {
            self.release(child);
        }
    }
}

/// The nodes the words so far lead to: a few, kept inline.
type NodeSet<'a> = smallvec::SmallVec<[&'a Node; 8]>;

pub struct TopicRouter {
    root: Node,
    ids: NodeIds,
}

impl Default for TopicRouter {
    fn default() -> Self {
        TopicRouter {
            root: Node::new(0, false),
            ids: NodeIds::default(),
        }
    }
}

/// An empty key has no words; otherwise every `.` separates two words,
/// which may be empty.
fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// A binding key's words, with runs of `#` collapsed to one.
fn pattern_words(pattern: &str) -> Vec<&str> {
    let mut out = words(pattern);
    out.dedup_by(|a, b| *a == "#" && *b == "#");
    out
}

impl TopicRouter {
    pub fn add(&mut self, binding: &Binding) {
        let ids = &mut self.ids;
        let mut node = &mut self.root;
        for word in pattern_words(&binding.routing_key) {
            node = match word {
                "*" => node.star.get_or_insert_with(|| Box::new(ids.take(false))),
                "#" => node.hash.get_or_insert_with(|| Box::new(ids.take(true))),
                w => node
                    .words
                    .entry(w.to_string())
                    .or_insert_with(|| ids.take(false)),
            };
        }
        match node
            .destinations
            .iter_mut()
            .find(|(d, _)| d == &binding.destination)
        {
            Some((_, count)) => *count += 1,
            None => node.destinations.push((binding.destination.clone(), 1)),
        }
    }

    pub fn remove(&mut self, binding: &Binding) {
        fn remove_at(node: &mut Node, words: &[&str], dest: &Destination, ids: &mut NodeIds) {
            let Some((first, rest)) = words.split_first() else {
                if let Some(pos) = node.destinations.iter().position(|(d, _)| d == dest) {
                    node.destinations[pos].1 -= 1;
                    if node.destinations[pos].1 == 0 {
                        node.destinations.remove(pos);
                    }
                }
                return;
            };
            match *first {
                "*" | "#" => {
                    let slot = if *first == "*" {
                        &mut node.star
                    } else {
                        &mut node.hash
                    };
                    if let Some(child) = slot {
                        remove_at(child, rest, dest, ids);
                        if child.is_empty() {
                            ids.release(child);
                            *slot = None;
                        }
                    }
                }
                word => {
                    if let Some(child) = node.words.get_mut(word) {
                        remove_at(child, rest, dest, ids);
                        if child.is_empty() {
                            ids.release(child);
                            node.words.remove(word);
                        }
                    }
                }
            }
        }
        remove_at(
            &mut self.root,
            &pattern_words(&binding.routing_key),
            &binding.destination,
            &mut self.ids,
        );
    }

    pub fn route(&self, routing_key: &str, out: &mut Routed) {
        // Marks of the nodes already in the current set, by node number:
        // the word position (plus one) they were last added at. Only a `#`
        // lets two paths reach one node.
        let mut marks: Vec<u32> = if self.ids.after_hash > 0 {
            vec![0; self.ids.next + 1]
        } else {
            Vec::new()
        };
        let mut current: NodeSet = NodeSet::new();
        let mut next: NodeSet = NodeSet::new();
        enter(&self.root, 1, &mut marks, &mut current);
        for (pos, word) in words(routing_key).into_iter().enumerate() {
            let stamp = pos as u32 + 2;
            for node in current.drain(..) {
                if let Some(child) = node.words.get(word) {
                    enter(child, stamp, &mut marks, &mut next);
                }
                if let Some(child) = &node.star {
                    enter(child, stamp, &mut marks, &mut next);
                }
                if node.after_hash {
                    // The `#` that led here takes this word too.
                    enter(node, stamp, &mut marks, &mut next);
                }
            }
            std::mem::swap(&mut current, &mut next);
            if current.is_empty() {
                return;
            }
        }
        let mut found: Vec<&Destination> = Vec::new();
        for node in current {
            for (dest, _) in &node.destinations {
                if !found.contains(&dest) {
                    found.push(dest);
                }
            }
        }
        for dest in found {
            out.add(dest);
        }
    }
}

/// Adds `node` to the set for this word position (unless it is there
/// already), and the node after its `#`, which may take no words at all.
fn enter<'a>(node: &'a Node, stamp: u32, marks: &mut [u32], set: &mut NodeSet<'a>) {
    if let Some(mark) = marks.get_mut(node.id) {
        if *mark == stamp {
            return;
        }
        *mark = stamp;
    }
    set.push(node);
    if let Some(hash) = &node.hash {
        enter(hash, stamp, marks, set);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{names, queue};
    use super::*;
    use crate::broker::queue::Queue;
    use crate::protocol::FieldTable;
    use std::sync::Arc;

    fn router(patterns: &[&str]) -> TopicRouter {
        let mut r = TopicRouter::default();
        for p in patterns {
            r.add(&Binding {
                routing_key: p.to_string(),
                arguments: FieldTable::default(),
                destination: Destination::Queue(queue(&format!("q:{p}"))),
            });
        }
        r
    }

    /// Which of RabbitMQ's probe keys a single pattern matches.
    fn matched(pattern: &str) -> Vec<&'static str> {
        let keys = [
            "", "a", "a.b", "a.x.b", "a.x.y.b", "a..b", "b", ".", "a.", "..", "a.b.c", "x.a.y",
            "a.b#", "a#",
        ];
        let r = router(&[pattern]);
        keys.into_iter()
            .filter(|k| {
                let mut out = Routed::default();
                r.route(k, &mut out);
                !names(&out).is_empty()
            })
            .collect()
    }

    #[test]
    fn patterns_match_as_rabbitmq() {
        assert_eq!(matched("#").len(), 14);
        assert_eq!(matched("#.#").len(), 14);
        assert_eq!(matched("*"), vec!["a", "b", "a#"]);
        assert_eq!(matched("*.#").len(), 13);
        assert!(!matched("#.*").contains(&""));
        assert_eq!(matched("a.*"), vec!["a.b", "a.", "a.b#"]);
        assert_eq!(
            matched("a.#"),
            vec!["a", "a.b", "a.x.b", "a.x.y.b", "a..b", "a.", "a.b.c", "a.b#"]
        );
        assert_eq!(matched("a.#.b"), vec!["a.b", "a.x.b", "a.x.y.b", "a..b"]);
        assert_eq!(matched("#.b"), vec!["a.b", "a.x.b", "a.x.y.b", "a..b", "b"]);
        assert_eq!(matched("*.*"), vec!["a.b", ".", "a.", "a.b#"]);
        assert_eq!(matched("a.*.b"), vec!["a.x.b", "a..b"]);
        assert_eq!(
            matched("#.a.#"),
            vec!["a", "a.b", "a.x.b", "a.x.y.b", "a..b", "a.", "a.b.c", "x.a.y", "a.b#"]
        );
        assert_eq!(matched(""), vec![""]);
        assert_eq!(matched("*."), vec![".", "a."]);
        assert_eq!(matched("a#"), vec!["a#"]);
        assert_eq!(matched("a.b#"), vec!["a.b#"]);
        assert!(matched("a.*#").is_empty());
    }

    /// RabbitMQ's semantics, slowly: `#` matches zero or more words, `*`
    /// exactly one, anything else itself.
    fn reference(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| reference(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && reference(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && reference(rest, &key[1..]),
        }
    }

    #[test]
    fn random_patterns_and_keys_match_as_the_reference() {
        // xorshift: repeatable without a dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n) as usize
        };
        let pattern_words = ["a", "b", "*", "#", ""];
        let key_words = ["a", "b", "c", "", "#", "*"];
        for _ in 0..3000 {
            let pattern: Vec<&str> = (0..next(7)).map(|_| pattern_words[next(5)]).collect();
            let pattern_key = pattern.join(".");
            let r = router(&[&pattern_key]);
            for _ in 0..20 {
                let key: Vec<&str> = (0..next(8)).map(|_| key_words[next(6)]).collect();
                let key_text = key.join(".");
                let mut out = Routed::default();
                r.route(&key_text, &mut out);
                assert_eq!(
                    !names(&out).is_empty(),
                    reference(&words(&pattern_key), &words(&key_text)),
                    "pattern {pattern_key:?}, key {key_text:?}"
                );
            }
        }
    }

    #[test]
    fn hashes_cost_no_more_than_words_times_nodes() {
        // 128 one-letter words (a 255-byte key) against bindings of 1 to
        // 127 `#`s mixed with `*` and literals: each finishes (the old
        // matcher ran for hours on 12 `#`s) with the reference's answer.
        let key: Vec<&str> = std::iter::repeat_n("a", 128).collect();
        let key_text = key.join(".");
        for hashes in [1usize, 2, 8, 12, 40, 127] {
            for filler in ["#", "*", "a", "b"] {
                let mut pattern = Vec::new();
                for i in 0..hashes {
                    pattern.push("#");
                    if i % 2 == 1 {
                        pattern.push(filler);
                    }
                }
                let pattern_key = pattern.join(".");
                let r = router(&[&pattern_key]);
                let mut out = Routed::default();
                r.route(&key_text, &mut out);
                // `#`s take any number of `a`s; at most 64 `*` or `a`
                // words need one each, and the key has no `b`.
                let expected = !pattern.contains(&"b");
                assert_eq!(!names(&out).is_empty(), expected, "{pattern_key}");
            }
        }
    }

    fn binding_to(q: &Arc<Queue>, key: &str) -> Binding {
        Binding {
            routing_key: key.into(),
            arguments: FieldTable::default(),
            destination: Destination::Queue(q.clone()),
        }
    }

    #[test]
    fn adjacent_hashes_share_one_node_and_unbind_separately() {
        let q = queue("q");
        let mut r = TopicRouter::default();
        let bind = |key: &str| binding_to(&q, key);
        r.add(&bind("a.#"));
        r.add(&bind("a.#.#.#"));
        r.remove(&bind("a.#"));
        let mut out = Routed::default();
        r.route("a.b.c", &mut out);
        assert_eq!(out.queues.len(), 1, "a.#.#.# is still bound");
        r.remove(&bind("a.#.#.#"));
        assert!(r.root.is_empty());
    }

    #[test]
    fn unbinding_removes_only_that_pattern() {
        let q = queue("q");
        let mut r = TopicRouter::default();
        let bind = |key: &str| binding_to(&q, key);
        r.add(&bind("a.*"));
        r.add(&bind("a.#"));
        r.remove(&bind("a.*"));
        let mut out = Routed::default();
        r.route("a.b", &mut out);
        assert_eq!(out.queues.len(), 1);
        r.remove(&bind("a.#"));
        let mut out = Routed::default();
        r.route("a.b", &mut out);
        assert!(out.queues.is_empty());
        assert!(r.root.is_empty());
    }
}
