//! Topic exchange: binding keys are patterns of dot-separated words, where a
//! whole word `*` matches exactly one word and `#` zero or more. Patterns are
//! kept in a trie, so routing cost follows the key's length, not the number
//! of bindings.

use super::{Binding, Destination, Routed};
use std::collections::HashMap;

#[derive(Default)]
struct Node {
    words: HashMap<String, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    /// Destinations of patterns ending here, with their binding counts.
    destinations: Vec<(Destination, usize)>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.destinations.is_empty()
    }
}

#[derive(Default)]
pub struct TopicRouter {
    root: Node,
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

impl TopicRouter {
    pub fn add(&mut self, binding: &Binding) {
        let mut node = &mut self.root;
        for word in words(&binding.routing_key) {
            node = match word {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                w => node.words.entry(w.to_string()).or_default(),
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
        fn remove_at(node: &mut Node, words: &[&str], dest: &Destination) {
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
                        remove_at(child, rest, dest);
                        if child.is_empty() {
                            *slot = None;
                        }
                    }
                }
                word => {
                    if let Some(child) = node.words.get_mut(word) {
                        remove_at(child, rest, dest);
                        if child.is_empty() {
                            node.words.remove(word);
                        }
                    }
                }
            }
        }
        remove_at(
            &mut self.root,
            &words(&binding.routing_key),
            &binding.destination,
        );
    }

    pub fn route(&self, routing_key: &str, out: &mut Routed) {
        let words = words(routing_key);
        let mut found: Vec<&Destination> = Vec::new();
        collect(&self.root, &words, &mut found);
        for dest in found {
            out.add(dest);
        }
    }
}

fn collect<'a>(node: &'a Node, words: &[&str], found: &mut Vec<&'a Destination>) {
    match words.split_first() {
        None => {
            for (dest, _) in &node.destinations {
                if !found.contains(&dest) {
                    found.push(dest);
                }
            }
        }
        Some((word, rest)) => {
            if let Some(child) = node.words.get(*word) {
                collect(child, rest, found);
            }
            if let Some(child) = &node.star {
                collect(child, rest, found);
            }
        }
    }
    if let Some(hash) = &node.hash {
        // `#` swallows zero or more words: try every split point. Adjacent
        // `#`s are collapsed by trying each point once per node.
        for skip in 0..=words.len() {
            collect(hash, &words[skip..], found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{names, queue};
    use super::*;
    use crate::protocol::FieldTable;

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

    #[test]
    fn unbinding_removes_only_that_pattern() {
        let q = queue("q");
        let mut r = TopicRouter::default();
        let bind = |key: &str| Binding {
            routing_key: key.into(),
            arguments: FieldTable::default(),
            destination: Destination::Queue(q.clone()),
        };
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
