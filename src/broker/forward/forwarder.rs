//! One sender per destination node: messages go out in batches, one batch
//! in flight at a time, so a queue receives them in the order they were
//! published; each message's receipt gets the node's answer.

use super::{decode, encode, Answer, Call, Forwarded, Receipt};
use crate::cluster::Cluster;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages waiting to go to one node before publishers are refused
/// (nacked): bounds the memory a slow or unreachable node can hold.
const QUEUE_LIMIT: usize = 16 * 1024;
/// At most this many messages, or about this many bytes, per call.
const BATCH_MESSAGES: usize = 512;
const BATCH_BYTES: usize = 4 << 20;
/// A node that does not answer a batch in this time has not taken it
/// (its publishers get nacks).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

struct Pending {
    message: Forwarded,
    receipt: Arc<Receipt>,
}

pub struct Forwarders {
    cluster: Cluster,
    links: Mutex<HashMap<String, mpsc::Sender<Pending>>>,
}

impl Forwarders {
    pub fn new(cluster: Cluster) -> Forwarders {
        Forwarders {
            cluster,
            links: Mutex::new(HashMap::new()),
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Sends `message` to `node`; `receipt` gets its answer.
    pub fn forward(&self, node: &str, message: Forwarded, receipt: &Arc<Receipt>) {
        receipt.expect_one();
        let pending = Pending {
            message,
            receipt: receipt.clone(),
        };
        let sender = {
            let mut links = self.links.lock();
            match links.get(node).filter(|s| !s.is_closed()) {
                Some(sender) => sender.clone(),
                None => {
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                        drop(links);
                        pending.receipt.answered(true);
                        return;
                    };
                    let (sender, receiver) = mpsc::channel(QUEUE_LIMIT);
                    runtime.spawn(send_loop(self.cluster.clone(), node.to_string(), receiver));
                    links.insert(node.to_string(), sender.clone());
                    sender
                }
            }
        };
        if let Err(e) = sender.try_send(pending) {
            let pending = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            tracing::warn!(
                node,
                "forwarding queue to the node is full; message refused"
            );
            pending.receipt.answered(true);
        }
    }
}

async fn send_loop(cluster: Cluster, node: String, mut receiver: mpsc::Receiver<Pending>) {
    while let Some(first) = receiver.recv().await {
        let mut bytes = first.message.body.len();
        let mut batch = vec![first];
        while batch.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
            match receiver.try_recv() {
                Ok(next) => {
                    bytes += next.message.body.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (messages, receipts): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.message, p.receipt)).unzip();
        let call = encode(&Call::Publish(messages));
        let refused = match cluster.call(&node, call, CALL_TIMEOUT).await {
            Ok(answer) => match decode::<Answer>(&answer) {
                Some(Answer::Published(refused)) if refused.len() == receipts.len() => refused,
                other => {
                    tracing::warn!(%node, "unexpected answer to forwarded messages: {other:?}");
                    vec![true; receipts.len()]
                }
            },
            Err(e) => {
                tracing::warn!(%node, "cannot forward {} messages: {e}", receipts.len());
                vec![true; receipts.len()]
            }
        };
        for (receipt, refused) in receipts.iter().zip(refused) {
            receipt.answered(refused);
        }
    }
}
