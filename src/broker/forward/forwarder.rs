//! One sender per destination node: messages go out in batches, one batch
//! in flight at a time, so a queue receives them in the order they were
//! published; each message's receipt gets the node's answer.
//!
//! Flow control: past a high-water mark of messages waiting to be sent
//! (all nodes together) the forwarders are *saturated*, and connections
//! that forward stop reading their sockets until the backlog is back under
//! the low-water mark, as they do for a client that does not read. So a
//! publisher without confirms is slowed down, not dropped.

use super::{decode, encode, Answer, Call, Forwarded, Receipt};
use crate::cluster::Cluster;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Saturated above this many waiting messages or bytes, clear again
/// below half of both.
const HIGH_MESSAGES: usize = 8 * 1024;
const HIGH_BYTES: usize = 64 << 20;
/// Messages waiting for one node before more are refused (nacked): only
/// reached if publishers outrun the flow control (one read batch each).
const QUEUE_LIMIT: usize = 64 * 1024;
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
    backlog: Arc<Backlog>,
}

/// What waits to be sent, over all nodes.
struct Backlog {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    saturated: watch::Sender<bool>,
    /// A refusal was logged in this saturation episode.
    refusal_logged: AtomicBool,
}

impl Backlog {
    fn add(&self, bytes: usize) {
        let messages = self.messages.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if (messages >= HIGH_MESSAGES || bytes >= HIGH_BYTES) && !*self.saturated.borrow() {
            self.saturated.send_replace(true);
        }
    }

    fn remove(&self, messages: usize, bytes: usize) {
        let messages = self.messages.fetch_sub(messages, Ordering::Relaxed) - messages;
        let bytes = self.bytes.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        if messages < HIGH_MESSAGES / 2 && bytes < HIGH_BYTES / 2 && *self.saturated.borrow() {
            self.refusal_logged.store(false, Ordering::Relaxed);
            self.saturated.send_replace(false);
        }
    }
}

impl Forwarders {
    pub fn new(cluster: Cluster) -> Forwarders {
        Forwarders {
            cluster,
            links: Mutex::new(HashMap::new()),
            backlog: Arc::new(Backlog {
                messages: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                saturated: watch::channel(false).0,
                refusal_logged: AtomicBool::new(false),
            }),
        }
    }

    /// True while too much waits to be sent: connections that forward
    /// stop reading until it turns false.
    pub fn saturated(&self) -> watch::Receiver<bool> {
        self.backlog.saturated.subscribe()
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
                    runtime.spawn(send_loop(
                        self.cluster.clone(),
                        node.to_string(),
                        receiver,
                        self.backlog.clone(),
                    ));
                    links.insert(node.to_string(), sender.clone());
                    sender
                }
            }
        };
        // Counted before it can be sent (and so taken off again).
        let bytes = pending.message.body.len();
        self.backlog.add(bytes);
        if let Err(e) = sender.try_send(pending) {
            let pending = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            self.backlog.remove(1, bytes);
            if !self.backlog.refusal_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    node,
                    "forwarding queue to the node is full; messages refused (nacked) until it drains"
                );
            }
            pending.receipt.answered(true);
        }
    }
}

async fn send_loop(
    cluster: Cluster,
    node: String,
    mut receiver: mpsc::Receiver<Pending>,
    backlog: Arc<Backlog>,
) {
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
        backlog.remove(receipts.len(), bytes);
    }
}
