//! openraft's network, over our [`Transport`], and the server side that
//! hands the peers' Raft RPCs to the local Raft.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::rpc::{Request, Response};
use super::transport::{CallError, Transport};
use super::types::{NodeId, NodeInfo, TypeConfig};

pub(crate) struct Network {
    pub transport: Arc<Transport>,
    pub id: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            id: self.id,
            target,
            node: node.clone(),
        }
    }
}

pub(crate) struct PeerClient {
    transport: Arc<Transport>,
    id: NodeId,
    target: NodeId,
    node: NodeInfo,
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        req: Request,
        action: RPCTypes,
        ttl: Duration,
        entries: u64,
    ) -> Result<Response, RPCError<NodeId, NodeInfo, E>> {
        let resp = self
            .transport
            .call(&self.node.addr, Some(&self.node.name), req, ttl)
            .await
            .map_err(|e| match e {
                CallError::Timeout => RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout: ttl,
                }),
                // Retry at once: a connection was up a moment ago.
                CallError::Lost(_) => RPCError::Network(NetworkError::new(&e)),
                // Too big for one frame: openraft resends fewer entries.
                CallError::TooLarge if entries > 1 => {
                    RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2))
                }
                // Not worth retrying before openraft's backoff.
                _ => RPCError::Unreachable(Unreachable::new(&e)),
            })?;
        match resp {
            Response::Unavailable(why) => Err(RPCError::Unreachable(Unreachable::new(
                &CallError::Unreachable(why),
            ))),
            other => Ok(other),
        }
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, NodeInfo, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }
}

fn unexpected<E: std::error::Error>(resp: &Response) -> RPCError<NodeId, NodeInfo, E> {
    let e = CallError::Lost(format!("unexpected response {resp:?}"));
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let n = rpc.entries.len() as u64;
        let resp = self
            .call(
                Request::AppendEntries(rpc),
                RPCTypes::AppendEntries,
                option.hard_ttl(),
                n,
            )
            .await?;
        match resp {
            Response::AppendEntries(r) => r.map_err(|e| self.remote(e)),
            other => Err(unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let resp = self
            .call(
                Request::InstallSnapshot(rpc),
                RPCTypes::InstallSnapshot,
                option.hard_ttl(),
                0,
            )
            .await?;
        match resp {
            Response::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let resp = self
            .call(Request::Vote(rpc), RPCTypes::Vote, option.hard_ttl(), 0)
            .await?;
        match resp {
            Response::Vote(r) => r.map_err(|e| self.remote(e)),
            other => Err(unexpected(&other)),
        }
    }

    fn backoff(&self) -> Backoff {
        // A down peer is retried every 250 ms (the transport's own dial
        // backoff keeps this cheap): a restarted node is caught up quickly.
        Backoff::new(std::iter::repeat(Duration::from_millis(250)))
    }
}
