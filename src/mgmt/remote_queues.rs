//! Counts of queues that live on other cluster nodes, asked of their nodes
//! (one call per node), so that any node's API answers for the whole
//! cluster.

use super::Ctx;
use crate::broker::forward::{self, Answer, Call, QueueStats};
use crate::broker::queue::Queue;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// By (vhost, name): what the queue's node said; `None` when it did not
/// answer (its node is down or unreachable).
pub(crate) type RemoteStats = HashMap<(String, String), Option<QueueStats>>;

/// A node that does not answer within this is shown as down.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The counts of the queues in `queues` that live on other nodes.
pub(crate) async fn remote_stats(ctx: &Ctx, queues: &[Arc<Queue>]) -> RemoteStats {
    let mut by_node: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for q in queues {
        if let Some(node) = q.remote_node() {
            by_node
                .entry(node)
                .or_default()
                .push((q.vhost.clone(), q.name.clone()));
        }
    }
    let mut stats = RemoteStats::new();
    let Some(cluster) = ctx.broker.replication.cluster() else {
        return stats;
    };
    for (node, asked) in by_node {
        let call = forward::encode(&Call::QueueStats {
            queues: asked.clone(),
        });
        let answer = cluster.call(node, call, ASK_TIMEOUT).await;
        let answered = match answer.ok().and_then(|b| forward::decode::<Answer>(&b)) {
            Some(Answer::Stats(list)) if list.len() == asked.len() => list,
            _ => vec![None; asked.len()],
        };
        stats.extend(asked.into_iter().zip(answered));
    }
    stats
}

/// A queue of this node, counted as its node counts it for the others.
pub(crate) fn local_stats(q: &Queue) -> QueueStats {
    crate::broker::node_calls::queue_stats(q)
}
