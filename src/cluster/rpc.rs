//! Node-to-node messages and their encoding.
//!
//! Everything on the wire is bincode 1.x (compact, and commands/snapshots are
//! byte strings that JSON would turn into arrays of numbers), always decoded
//! with a size limit so that a length field from a bad peer cannot make us
//! allocate more than one frame's worth.

use bincode::Options;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::types::{NodeId, NodeInfo, TypeConfig};

/// The largest frame we send or accept (a bad peer gets disconnected).
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// Bumped when the messages below change incompatibly; checked at handshake.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_FRAME as u64)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    codec().serialize(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    codec().deserialize(bytes)
}

/// The handshake, before any [`Frame`]: the dialer says who it is, the
/// acceptor challenges it, the dialer proves it knows the secret, then the
/// acceptor proves it too. The secret itself never crosses the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Handshake {
    Hello {
        version: u32,
        cluster: String,
        name: String,
        addr: String,
        incarnation: u64,
        nonce: [u8; 32],
    },
    Challenge {
        nonce: [u8; 32],
    },
    Proof {
        mac: Vec<u8>,
    },
    Welcome {
        name: String,
        addr: String,
        incarnation: u64,
        mac: Vec<u8>,
    },
    Refuse {
        reason: String,
        /// The dialer reached itself (its own address is among the seeds).
        is_self: bool,
    },
}

/// After the handshake, both ends send requests and responses on the same
/// connection; the id pairs a response with its request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Frame {
    Request { id: u64, body: Request },
    Response { id: u64, body: Response },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower forwards a broker command to the leader, to be dropped
    /// unproposed once `expires_at_ms` (wall clock, ms since the epoch) has
    /// passed: the proposer has answered its caller with a timeout by
    /// then, and a request held up in a partition (TCP delivers it when the
    /// link comes back) must not take effect long after.
    Propose {
        command: Vec<u8>,
        expires_at_ms: u64,
    },
    /// A node asks the leader to make it a voter.
    Join(NodeInfo),
    /// Remove a node (by name) from the membership: `leave` and `forget`.
    Remove(String),
    /// Formation: who are you, are you in a cluster already, who leads it.
    Discover,
    /// Liveness, for `status().members[].reachable`.
    Ping,
    /// A broker-level message (publishes forwarded to a queue's node,
    /// deliveries relayed to a consumer's node), opaque here; `from` is the
    /// sending node's name.
    Broker {
        from: String,
        body: Vec<u8>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Proposed(Result<Proposed, RemoteError>),
    Joined(Result<(), RemoteError>),
    Removed(Result<(), RemoteError>),
    Discovered(Discovery),
    Pong,
    Broker(Vec<u8>),
    /// This node cannot serve requests (starting, shutting down, or left).
    Unavailable(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Proposed {
    pub reply: Vec<u8>,
    /// Log index of the committed command: the proposer waits until it has
    /// applied it itself before answering its caller.
    pub index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Discovery {
    pub node: NodeInfo,
    /// Has Raft state (a log or a vote): part of a cluster, or was.
    pub initialized: bool,
    pub leader: Option<NodeInfo>,
}

/// Why a leader-side operation (propose, join, remove) failed, as sent back
/// to the node that forwarded it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum RemoteError {
    /// Not the leader; the leader if known.
    NotLeader(Option<NodeInfo>),
    /// The leader could not get the operation committed in time.
    Timeout,
    /// A request the leader will not carry out (e.g. forget an unknown node).
    Rejected(String),
}
