//! The changes the metadata group carries, and what applying one gave.

use crate::broker::policy::PolicyRecord;
use crate::broker::users::{Permission, User};
use crate::protocol::error::ErrorScope;
use crate::protocol::{AmqpError, FieldTable};
use crate::store::catalog::{BindingRecord, QueueRecord, VhostRecord};
use serde::{Deserialize, Serialize};

/// One change of shared definitions. Applied on every node in log order;
/// applying one twice (after a crash) leaves the same state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Change {
    PutVhost(VhostRecord),
    DeleteVhost {
        name: String,
    },
    PutUser(User),
    DeleteUser {
        name: String,
    },
    SetPermission {
        user: String,
        vhost: String,
        permission: Permission,
    },
    ClearPermission {
        user: String,
        vhost: String,
    },
    DeclareExchange {
        vhost: String,
        name: String,
        kind: String,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
        /// The proposing node: a super stream's partitions live there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        home: Option<String>,
    },
    DeleteExchange {
        vhost: String,
        name: String,
        if_unused: bool,
    },
    /// A queue that lives on `record.node` (the other nodes hold its
    /// definition and forward to it); `owner` is the declaring connection
    /// of an exclusive queue, on that node.
    DeclareQueue {
        record: QueueRecord,
        owner: Option<u64>,
    },
    DeleteQueue {
        vhost: String,
        name: String,
    },
    /// A binding to a replicated queue, or between two exchanges.
    Bind(BindingRecord),
    Unbind(BindingRecord),
    PutPolicy(PolicyRecord),
    DeletePolicy {
        vhost: String,
        name: String,
    },
}

/// What applying a change gave: whether it made something new, or the
/// AMQP error it was refused with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Outcome {
    Done {
        created: bool,
        /// What the change counted (the messages a queue deletion
        /// dropped).
        #[serde(default)]
        count: u64,
    },
    Refused {
        connection: bool,
        code: u16,
        text: String,
    },
}

impl Outcome {
    /// What a local apply gave.
    pub fn of(result: Result<bool, AmqpError>) -> Outcome {
        match result {
            Ok(created) => Outcome::Done { created, count: 0 },
            Err(e) => Outcome::Refused {
                connection: e.scope == ErrorScope::Connection,
                code: e.code,
                text: e.text,
            },
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// An outcome sent back by the node that applied it.
    pub fn decode(bytes: &[u8]) -> Outcome {
        serde_json::from_slice::<Outcome>(bytes).unwrap_or_else(|e| {
            Outcome::of(Err(AmqpError::internal(format!(
                "unreadable cluster reply: {e}"
            ))))
        })
    }

    /// What a local apply that counted something gave.
    pub fn counted(result: Result<usize, AmqpError>) -> Outcome {
        match result {
            Ok(count) => Outcome::Done {
                created: false,
                count: count as u64,
            },
            Err(e) => Outcome::of(Err(e)),
        }
    }

    /// As the caller's result: what was counted, or the error.
    pub fn into_count(self) -> Result<usize, AmqpError> {
        let count = match &self {
            Outcome::Done { count, .. } => *count as usize,
            Outcome::Refused { .. } => 0,
        };
        self.into_result().map(|_| count)
    }

    /// As the caller's result: whether something new was made, or the
    /// error.
    pub fn into_result(self) -> Result<bool, AmqpError> {
        match self {
            Outcome::Done { created, .. } => Ok(created),
            Outcome::Refused {
                connection,
                code,
                text,
            } => Err(AmqpError::from_node(connection, code, text)),
        }
    }
}
