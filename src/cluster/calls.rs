//! Broker-level calls between nodes: opaque request bytes sent to a named
//! member and answered by that node's broker (publishes forwarded to the
//! node of their queue, deliveries relayed to a consumer's node). They ride
//! the same authenticated connections as Raft's traffic; this layer neither
//! reads nor orders them beyond "one call, one answer".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::rpc::{Request, Response};
use super::transport::CallError;
use super::{members_of, Cluster, ClusterError, Inner};

/// What the broker gives to serve calls from peers: (sending node, body)
/// to the answer's body.
pub type BrokerHandler =
    Arc<dyn Fn(String, Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> + Send + Sync>;

impl Cluster {
    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.opts.node_name
    }

    /// The names of the members, this node included.
    pub fn member_names(&self) -> Vec<String> {
        members_of(&self.inner.raft())
            .into_values()
            .map(|n| n.name)
            .collect()
    }

    /// Whether `node` answered a ping lately (this node always has).
    pub fn is_reachable(&self, node: &str) -> bool {
        self.status()
            .members
            .iter()
            .any(|m| m.name == node && m.reachable)
    }

    /// Serves broker calls from now on; calls that arrive before get an
    /// "unavailable" error.
    pub fn set_broker_handler(&self, handler: BrokerHandler) {
        let _ = self.inner.broker_handler.set(handler);
    }

    /// Sends `body` to the broker of member `node` and waits at most
    /// `timeout` for its answer. A call to this node itself is served here.
    pub async fn call(
        &self,
        node: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClusterError> {
        let inner = &self.inner;
        inner.check_running()?;
        let from = inner.opts.node_name.clone();
        if node == from {
            return match inner.broker_handler.get() {
                Some(handler) => Ok(handler(from, body).await),
                None => Err(ClusterError::Unreachable("broker not ready".into())),
            };
        }
        let Some(member) = members_of(&inner.raft())
            .into_values()
            .find(|n| n.name == node)
        else {
            return Err(ClusterError::Unreachable(format!(
                "{node} is not a member of the cluster"
            )));
        };
        let request = Request::Broker { from, body };
        match inner
            .transport
            .call(&member.addr, Some(&member.name), request, timeout)
            .await
        {
            Ok(Response::Broker(answer)) => Ok(answer),
            Ok(Response::Unavailable(why)) => Err(ClusterError::Unreachable(why)),
            Ok(other) => Err(ClusterError::Internal(format!(
                "unexpected response {other:?}"
            ))),
            Err(CallError::Timeout) => Err(ClusterError::Timeout),
            Err(CallError::Lost(why)) => Err(ClusterError::Unreachable(why)),
            Err(e) => Err(e.into()),
        }
    }
}

pub(super) async fn serve_broker(inner: &Inner, from: String, body: Vec<u8>) -> Response {
    match inner.broker_handler.get() {
        Some(handler) => Response::Broker(handler(from, body).await),
        None => Response::Unavailable("the broker is not ready".into()),
    }
}
