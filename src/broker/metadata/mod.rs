//! Definitions that a cluster shares: vhosts, users, permissions and
//! exchanges are changed through the cluster's metadata group (Raft, in
//! `crate::cluster`), so every node applies the same changes in the same
//! order; RabbitMQ's Khepri. On a single node nothing changes: a change is
//! applied directly, as before.
//!
//! The path of a change on a cluster node: the broker method that a
//! channel or the HTTP API calls (`VHost::declare_exchange`,
//! `Broker::put_user`, ...) makes a [`Change`], [`Replication::replicate`]
//! commits it on a majority, and every node's [`applier::BrokerApplier`]
//! applies it with the same method's local half (`apply_*`). The result of
//! the proposer's own apply (a 406 for an inequivalent redeclare, say) is
//! the caller's result.

pub mod applier;
mod change;

pub use change::{Change, Outcome};

use crate::cluster::{Cluster, ClusterError};
use crate::protocol::error::code;
use crate::protocol::AmqpError;
use std::sync::{Arc, OnceLock};

/// Whether definitions go through a cluster (set once, at start).
#[derive(Default)]
pub struct Replication {
    cluster: OnceLock<Cluster>,
    /// This node's name, when it is configured to be a cluster node (set
    /// before anything is restored, so that restored queues know whether
    /// they live here).
    node: OnceLock<String>,
    /// Messages routed here to queues of other nodes go through these.
    forwarders: OnceLock<crate::broker::forward::Forwarders>,
    /// Consumers of queues on other nodes, and other nodes' consumers of
    /// queues here.
    relays: OnceLock<Arc<crate::broker::relay::Relays>>,
    /// This node's report for other nodes' `/api/nodes` (the management
    /// layer sets it: the broker does not build API JSON).
    node_report: OnceLock<NodeReport>,
}

/// Makes this node's `/api/nodes` entry, as JSON text.
pub type NodeReport = Arc<dyn Fn() -> String + Send + Sync>;

impl Replication {
    /// From now on, changes are committed through `cluster`.
    pub fn attach(&self, cluster: Cluster) {
        let _ = self
            .forwarders
            .set(crate::broker::forward::Forwarders::new(cluster.clone()));
        let _ = self
            .relays
            .set(crate::broker::relay::Relays::new(cluster.clone()));
        let _ = self.cluster.set(cluster);
    }

    pub fn set_node_report(&self, report: NodeReport) {
        let _ = self.node_report.set(report);
    }

    /// This node's `/api/nodes` entry, when the management API runs.
    pub fn node_report(&self) -> Option<String> {
        self.node_report.get().map(|report| report())
    }

    pub fn relays(&self) -> Option<&Arc<crate::broker::relay::Relays>> {
        self.relays.get()
    }

    pub fn forwarders(&self) -> Option<&crate::broker::forward::Forwarders> {
        self.forwarders.get()
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// Makes this a cluster node named `name` (at start, before restore).
    pub fn set_node(&self, name: String) {
        let _ = self.node.set(name);
    }

    /// This node's name on a cluster; `None` on a single node.
    pub fn node(&self) -> Option<&str> {
        self.node.get().map(String::as_str)
    }

    /// Commits `change` through the cluster and returns the outcome of
    /// applying it on this node; `None` on a single node (the caller
    /// applies it itself). `what` names the operation for the timeout
    /// error, e.g. `declare exchange 'x' in vhost '/'`.
    ///
    /// Blocks the calling thread until the change is committed (a few
    /// milliseconds on a LAN, the propose timeout without a majority): on
    /// tokio's multi-thread runtime the worker's other tasks move to
    /// another thread meanwhile. No broker lock may be held across it.
    pub fn replicate(&self, change: &Change, what: &str) -> Option<Result<Outcome, AmqpError>> {
        let cluster = self.cluster.get()?.clone();
        let command = match serde_json::to_vec(change) {
            Ok(bytes) => bytes,
            Err(e) => return Some(Err(AmqpError::internal(format!("{what}: {e}")))),
        };
        let result = crate::broker::block_on(async move { cluster.propose(command).await })
            .unwrap_or_else(|| Err(ClusterError::Internal("no runtime to wait on".into())));
        Some(match result {
            Ok(bytes) => Ok(Outcome::decode(&bytes)),
            Err(error) => Err(unavailable(what, &error)),
        })
    }
}

impl Replication {
    /// Proposes `change` without waiting for it (a queue this node removed
    /// by itself: auto-delete, expiry, its exclusive owner gone), so that
    /// the other nodes drop it too; a failure is logged.
    pub fn propose_in_background(&self, change: Change, what: String) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(command) = serde_json::to_vec(&change) else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = cluster.propose(command).await {
                tracing::warn!("cannot {what} on the other nodes: {e}");
            }
        });
    }

    /// Commits `change` through the cluster, or on a single node makes it
    /// with `here` (the local half of the same method); true if it made
    /// something new.
    pub fn commit(
        &self,
        change: &Change,
        what: &str,
        here: impl FnOnce() -> Result<bool, AmqpError>,
    ) -> Result<bool, AmqpError> {
        match self.replicate(change, what) {
            Some(outcome) => outcome?.into_result(),
            None => here(),
        }
    }
}

/// RabbitMQ's (Khepri's) error when the metadata store cannot commit: a
/// connection error, 541.
fn unavailable(what: &str, error: &ClusterError) -> AmqpError {
    tracing::warn!("cannot {what}: {error}");
    AmqpError::connection(
        code::INTERNAL_ERROR,
        format!("failed to {what} because the operation timed out"),
    )
}
