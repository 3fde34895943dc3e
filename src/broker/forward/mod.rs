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
}

impl Call {
    /// The queue a call is about (empty for a publish).
    pub fn queue(&self) -> &str {
        match self {
            Call::Publish(_) => "",
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
    /// The AMQP error the operation gave there.
    Refused {
        connection: bool,
        code: u16,
        text: String,
    },
}
