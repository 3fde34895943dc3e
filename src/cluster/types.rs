//! The openraft type configuration of the metadata group, and the few types
//! shared by every file here. Nothing in this file leaks to the broker.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// openraft's node id. Derived from the node name (see [`node_id`]) so that
/// it is stable across restarts without being stored or assigned.
pub(crate) type NodeId = u64;

/// A command as the broker proposed it: opaque bytes.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Command(pub Vec<u8>);

/// What the broker's `Applier::apply` returned for a command.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reply(pub Vec<u8>);

// Debug prints sizes only: openraft logs entries at debug level, and a
// command can be large or hold user data.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} bytes)", self.0.len())
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reply({} bytes)", self.0.len())
    }
}

/// What the membership records about a node: its name and the address the
/// other nodes dial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
    pub name: String,
    pub addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    pub(crate) TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type Raft = openraft::Raft<TypeConfig>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub(crate) type StorageError = openraft::StorageError<NodeId>;

/// The Raft node id of a node name: the first 8 bytes of its SHA-256. Two
/// names colliding is as likely as a SHA-256 collision on 64 bits (never, for
/// clusters of seven nodes), and every node computes the same id for a name
/// without any coordination.
pub(crate) fn node_id(name: &str) -> NodeId {
    let digest = Sha256::digest(name.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}
