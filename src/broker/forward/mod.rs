//! Broker calls between cluster nodes. A message routed on one node to a
//! queue that lives on another is forwarded there ([`Forwarders`]), and the
//! publisher's confirm waits for that node's answer ([`Receipt`]); the
//! operations on a queue's contents that only its node can answer (delete,
//! purge, counts) are asked of it ([`Call`]). The node that receives a
//! call serves it in `broker::node_calls`.
//!
//! Nothing here knows vhosts or queues beyond their names, so that the
//! vhost (which forwards) and the serving side (which delivers) can both
//! use it.

mod forwarder;
mod receipt;

pub use forwarder::Forwarders;
pub use receipt::Receipt;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The largest call or answer read (a cluster frame's limit).
const MAX_CALL: u64 = 64 << 20;

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_CALL)
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec().serialize(value).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    codec().deserialize(bytes).ok()
}

/// What one node asks of another's broker.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    /// Messages routed on the calling node to queues that live here, in
    /// the order they were published.
    Publish(Vec<Forwarded>),
    DeleteQueue {
        vhost: String,
        name: String,
        if_unused: bool,
        if_empty: bool,
    },
    PurgeQueue {
        vhost: String,
        name: String,
    },
    /// (ready messages, consumers) of a queue, for a declare-ok.
    QueueCounts {
        vhost: String,
        name: String,
    },
    /// A client of the calling node consumes from a queue of this node:
    /// its deliveries are relayed to the caller as `relay`.
    Consume {
        vhost: String,
        queue: String,
        request: ConsumeRequest,
    },
    /// A client of the calling node joins consumer group `group` of super
    /// stream `super_stream`, whose partitions live here: the member's
    /// deliveries are relayed as `request.relay`.
    ConsumeGroup {
        vhost: String,
        super_stream: String,
        group: String,
        request: ConsumeRequest,
    },
    /// The relayed consumer (or group member) is cancelled.
    Cancel {
        relay: u64,
    },
    /// Deliveries (by their relay ids) the caller's clients settled.
    Settle {
        ids: Vec<u64>,
        how: SettleHow,
    },
    /// basic.get for a client of the calling node.
    Get {
        vhost: String,
        queue: String,
        no_ack: bool,
        boot: u64,
    },
    /// Deliveries to relayed consumers of the called node's clients.
    Deliver(Vec<Relayed>),
    /// A relayed consumer was cancelled by the queue (it was deleted).
    Cancelled {
        relay: u64,
    },
    /// Which broker process answers (its boot id).
    Alive,
    /// Counts of queues of the called node, for the management API.
    QueueStats {
        queues: Vec<(String, String)>,
    },
    /// The called node's `/api/nodes` entry.
    NodeReport,
}

/// A queue's counts as its node knows them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueueStats {
    pub ready: u64,
    pub ready_bytes: u64,
    pub unacked: u64,
    pub consumers: u64,
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
}

/// A consumer of another node's client, relayed as `relay`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConsumeRequest {
    pub relay: u64,
    /// The caller's boot id (a restarted caller has another).
    pub boot: u64,
    pub tag: String,
    pub no_ack: bool,
    pub exclusive: bool,
    pub priority: i32,
    pub prefetch: u32,
    pub arguments: crate::protocol::FieldTable,
}

/// What a client did with relayed deliveries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum SettleHow {
    Ack,
    Requeue,
    Reject,
}

/// A message delivered from a queue of one node to a consumer (or a
/// basic.get) of another.
#[derive(Debug, Serialize, Deserialize)]
pub struct Relayed {
    pub relay: u64,
    /// Names the delivery in `Call::Settle`.
    pub id: u64,
    pub exchange: String,
    pub routing_key: String,
    pub properties: Vec<u8>,
    pub body: Vec<u8>,
    pub redelivered: bool,
    pub delivery_count: u32,
}

impl Call {
    /// `queue 'q' in vhost 'v'`, for errors about the call's queue.
    pub fn resource(&self) -> String {
        let vhost = match self {
            Call::DeleteQueue { vhost, .. }
            | Call::PurgeQueue { vhost, .. }
            | Call::QueueCounts { vhost, .. }
            | Call::Consume { vhost, .. }
            | Call::Get { vhost, .. }
            | Call::ConsumeGroup { vhost, .. } => vhost.as_str(),
            _ => "",
        };
        format!("queue '{}' in vhost '{vhost}'", self.queue())
    }

    /// The queue a call is about (empty for a publish).
    pub fn queue(&self) -> &str {
        match self {
            Call::Consume { queue, .. } | Call::Get { queue, .. } => queue,
            Call::ConsumeGroup { super_stream, .. } => super_stream,
            Call::Publish(_)
            | Call::Cancel { .. }
            | Call::Settle { .. }
            | Call::Deliver(_)
            | Call::Cancelled { .. }
            | Call::Alive
            | Call::QueueStats { .. }
            | Call::NodeReport => "",
            Call::DeleteQueue { name, .. }
            | Call::PurgeQueue { name, .. }
            | Call::QueueCounts { name, .. } => name,
        }
    }
}

/// A message routed elsewhere to queues of this node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forwarded {
    pub vhost: String,
    pub queues: Vec<String>,
    pub exchange: String,
    pub routing_key: String,
    pub properties: Vec<u8>,
    pub body: Vec<u8>,
}

/// An answer that does not fit the call (a node of another version).
pub fn unexpected(node: &str, answer: &Answer) -> crate::protocol::AmqpError {
    crate::protocol::AmqpError::internal(format!("unexpected answer from node {node}: {answer:?}"))
}

impl Answer {
    /// The answer, or the error the called node gave as its answer.
    pub fn into_result(self) -> Result<Answer, crate::protocol::AmqpError> {
        match self {
            Answer::Refused {
                connection,
                code,
                text,
            } => Err(crate::protocol::AmqpError::from_node(
                connection, code, text,
            )),
            answer => Ok(answer),
        }
    }
}

/// The answer to a [`Call`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    /// Per forwarded message, in order: whether a queue refused it
    /// (overflow `reject-publish`) or it could not be stored. Sent once
    /// the persistent ones are on disk.
    Published(Vec<bool>),
    Count(u64),
    Counts {
        ready: u64,
        consumers: u64,
    },
    /// basic.get: the message and the ready count after it, or empty.
    Got(Option<(Relayed, u64)>),
    /// Relayed deliveries taken, except these ids (their consumer is gone
    /// on the caller: the sender puts them back).
    Delivered {
        refused: Vec<u64>,
    },
    /// The answering broker process (a consume is answered with it too).
    Boot(u64),
    /// Per queue asked for, in order; none for a queue it does not have.
    Stats(Vec<Option<QueueStats>>),
    /// JSON text; empty when the node runs no management API.
    Report(String),
    Done,
    /// The AMQP error the operation gave there.
    Refused {
        connection: bool,
        code: u16,
        text: String,
    },
}
