//! Consumers on one node of a queue that lives on another: the queue's
//! node (the *queue side*) delivers to a consumer whose sink ships each
//! delivery to the consumer's node (the *consumer side*), which hands it
//! to the client's channel as if the queue were local. Acks, nacks and
//! rejects go back by id; prefetch is the consumer's own, counted on the
//! queue side; a cancel goes back too. basic.get works the same way.
//!
//! Either side watches the other (`liveness`): when the consumer's node
//! goes (or restarts), the queue side requeues what it had not got back;
//! when the queue's node goes, the consumer side cancels its consumers
//! (basic.cancel to clients that asked for it), as RabbitMQ does.

mod consumer_side;
mod liveness;
mod queue_side;
mod sink;

use crate::broker::forward::{self, Answer, Call, Relayed};
use crate::broker::message::Message;
use crate::broker::queue::{Consumer, Queue, QueuedMessage};
use crate::cluster::Cluster;
use crate::protocol::AmqpError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a call between nodes may take here.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Relays {
    cluster: Cluster,
    /// This broker process (a restarted node has another).
    boot: u64,
    me: Weak<Relays>,
    next_relay: AtomicU64,
    /// Queue side: ids of relayed deliveries.
    next_id: AtomicU64,
    /// Consumer side: this node's consumers of other nodes' queues.
    outbound: Mutex<HashMap<u64, Outbound>>,
    /// Queue side: per consumer's node, its consumers and what they have
    /// not settled.
    inbound: Mutex<HashMap<String, Inbound>>,
    /// Queue side: the delivery sender to each consumer's node.
    senders: Mutex<HashMap<String, Arc<sink::Sender>>>,
}

/// A consumer of this node relayed from `node`.
struct Outbound {
    node: String,
    /// The queue node's boot id when the consumer was made.
    boot: u64,
    consumer: Arc<Consumer>,
    queue: Arc<Queue>,
}

impl Relays {
    /// Keeps a delivery made to node `from` until it settles it.
    fn hold(&self, from: &str, id: u64, unsettled: Unsettled) {
        self.inbound
            .lock()
            .entry(from.to_string())
            .or_default()
            .unsettled
            .insert(id, unsettled);
    }
}

#[derive(Default)]
struct Inbound {
    boot: u64,
    /// By relay id: the queue, and the consumer made for the relay.
    consumers: HashMap<u64, (Arc<Queue>, Arc<Consumer>)>,
    /// By relay id: consumer group members joined for the node's clients.
    members: HashMap<u64, Arc<crate::broker::super_stream::group::Member>>,
    /// By delivery id: delivered and not settled yet.
    unsettled: HashMap<u64, Unsettled>,
}

struct Unsettled {
    queue: Arc<Queue>,
    /// None for a basic.get.
    consumer: Option<Arc<Consumer>>,
    message: QueuedMessage,
}

impl Relays {
    /// Relays over `cluster`; watches the other nodes from now on (a
    /// runtime must be current).
    pub fn new(cluster: Cluster) -> Arc<Relays> {
        let relays = Arc::new_cyclic(|me| Relays {
            cluster,
            boot: rand::random(),
            me: me.clone(),
            next_relay: AtomicU64::new(1),
            next_id: AtomicU64::new(1),
            outbound: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
            senders: Mutex::new(HashMap::new()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(liveness::watch(Arc::downgrade(&relays)));
        }
        relays
    }

    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Calls `node` and waits for the answer, from synchronous code.
    pub fn ask_blocking(&self, node: &str, call: &Call) -> Result<Answer, AmqpError> {
        let cluster = self.cluster.clone();
        let node_name = node.to_string();
        let body = forward::encode(call);
        let answer =
            crate::broker::block_on(
                async move { cluster.call(&node_name, body, CALL_TIMEOUT).await },
            );
        match answer {
            Some(Ok(bytes)) => answer_of(node, &bytes),
            Some(Err(e)) => Err(node_down(node, &call.resource(), &e)),
            None => Err(AmqpError::internal("no runtime to wait on")),
        }
    }

    /// Calls `node` without waiting for the answer (logged if it fails).
    fn tell(&self, node: &str, call: Call) {
        let cluster = self.cluster.clone();
        let node = node.to_string();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let body = forward::encode(&call);
            if let Err(e) = cluster.call(&node, body, CALL_TIMEOUT).await {
                tracing::warn!(%node, "cannot tell the node of a settled or cancelled delivery: {e}");
            }
        });
    }
}

/// A relayed message as a queued one of the consumer side's stub queue:
/// its `seq` is the delivery id the queue side settles it by.
fn queued(relayed: Relayed) -> Option<QueuedMessage> {
    let (_, properties) =
        amq_protocol::protocol::basic::parse_properties(&relayed.properties[..]).ok()?;
    let message = Message::new(
        relayed.exchange,
        relayed.routing_key,
        properties,
        relayed.properties.into(),
        relayed.body.into(),
    );
    Some(QueuedMessage {
        seq: relayed.id,
        message: Arc::new(message),
        redelivered: relayed.redelivered,
        expires_at: None,
        delivery_count: relayed.delivery_count,
    })
}

/// A queued message to relay as delivery `id`.
fn relayed(relay: u64, id: u64, message: &QueuedMessage) -> Relayed {
    Relayed {
        relay,
        id,
        exchange: message.message.exchange.clone(),
        routing_key: message.message.routing_key.clone(),
        properties: message.message.raw_properties.to_vec(),
        body: message.message.body.to_vec(),
        redelivered: message.redelivered,
        delivery_count: message.delivery_count,
    }
}

fn answer_of(node: &str, bytes: &[u8]) -> Result<Answer, AmqpError> {
    forward::decode::<Answer>(bytes)
        .ok_or_else(|| AmqpError::internal(format!("unreadable answer from node {node}")))?
        .into_result()
}

/// RabbitMQ's 404 for a durable queue whose node is down.
pub fn node_down(node: &str, resource: &str, why: &dyn std::fmt::Display) -> AmqpError {
    tracing::warn!(node, "cluster node unreachable: {why}");
    AmqpError::channel(
        crate::protocol::error::code::NOT_FOUND,
        format!("home node '{node}' of durable {resource} is down or inaccessible"),
    )
}
