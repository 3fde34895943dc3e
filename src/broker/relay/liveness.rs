//! Each side watches the other: every two seconds, each node this one
//! relays to or from is asked which broker process it is. One that does
//! not answer twice in a row, or answers as another process (it
//! restarted), is gone: see the module comment.

use super::Relays;
use crate::broker::forward::{self, Answer, Call};
use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(2);
const MISSES: u32 = 2;

pub(super) async fn watch(relays: Weak<Relays>) {
    let mut misses: HashMap<String, u32> = HashMap::new();
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(relays) = relays.upgrade() else {
            return;
        };
        let consumer_nodes = relays.consumer_nodes();
        let queue_nodes = relays.queue_nodes();
        let mut nodes: Vec<&String> = consumer_nodes
            .iter()
            .chain(queue_nodes.iter())
            .map(|(n, _)| n)
            .collect();
        nodes.sort();
        nodes.dedup();
        let mut boots = HashMap::new();
        for node in nodes {
            let answer = relays
                .cluster
                .call(node, forward::encode(&Call::Alive), EVERY)
                .await;
            match answer.ok().and_then(|b| forward::decode::<Answer>(&b)) {
                Some(Answer::Boot(boot)) => {
                    misses.remove(node);
                    boots.insert(node.clone(), boot);
                }
                _ => *misses.entry(node.clone()).or_default() += 1,
            }
        }
        let gone = |node: &String, boot: u64| {
            misses.get(node).is_some_and(|m| *m >= MISSES)
                || boots.get(node).is_some_and(|b| *b != boot)
        };
        for (node, boot) in &consumer_nodes {
            if gone(node, *boot) {
                relays.drop_node(node);
            }
        }
        for (node, boot) in &queue_nodes {
            if gone(node, *boot) {
                relays.node_gone(node);
            }
        }
        misses.retain(|_, m| *m < MISSES);
    }
}
