//! Cluster formation and membership changes.
//!
//! Formation is deterministic: a node with no Raft state probes its seeds.
//! If any of them is already in a cluster, it joins that cluster (through its
//! leader). Otherwise, the node whose name sorts lowest among those that
//! answer (itself included) initializes a one-node cluster, once it has seen
//! the same set of nodes on two probes in a row; the others then find it and
//! join. Joining is: the leader adds the node as a learner, then promotes it
//! to voter. A node that has Raft state never initializes again: its peers'
//! leader reaches it as soon as it listens.
//!
//! Caveat: nodes started while unable to reach each other at all form
//! separate clusters (as with RabbitMQ's peer discovery without a lock).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;

use super::log_store::LogStore;
use super::rpc::{Discovery, RemoteError, Request, Response};
use super::transport::CallError;
use super::types::{node_id, NodeInfo};
use super::{members_of, new_raft, state_machine, ClusterError, ClusterOptions, Inner};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The seeds that are not obviously this node (its advertised or listen
/// address); others turn out to be us at handshake.
pub(crate) fn other_seeds(opts: &ClusterOptions) -> Vec<String> {
    let own = [opts.advertise.clone(), opts.listen.to_string()];
    let mut seeds: Vec<String> = opts
        .seed_nodes
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !own.contains(s))
        .collect();
    seeds.sort();
    seeds.dedup();
    seeds
}

pub(crate) async fn initialize_alone(inner: &Inner) -> anyhow::Result<()> {
    let members = BTreeMap::from([(inner.id, inner.me.clone())]);
    match inner.raft().initialize(members).await {
        Ok(()) => {
            tracing::info!(node = %inner.me, "cluster: formed a new cluster '{}' with this node as its first member", inner.opts.cluster_name);
            Ok(())
        }
        // Someone added us meanwhile, or we were initialized before.
        Err(RaftError::APIError(e)) => {
            tracing::debug!("cluster: not initializing: {e}");
            Ok(())
        }
        Err(RaftError::Fatal(e)) => Err(anyhow::anyhow!("cluster: Raft stopped: {e}")),
    }
}

/// Formation of a node without Raft state that has seeds; ends once the
/// node is in a cluster.
pub(crate) async fn bootstrap(inner: Arc<Inner>, seeds: Vec<String>) {
    let mut previous: Option<BTreeSet<String>> = None;
    let mut pause = Duration::from_millis(200);
    loop {
        if inner.stopped.load(Ordering::SeqCst) || inner.left.load(Ordering::SeqCst) {
            return;
        }
        let raft = inner.raft();
        if raft.is_initialized().await.unwrap_or(false) {
            tracing::debug!("cluster: formation done");
            return;
        }
        let found = probe(&inner, &seeds).await;
        if let Some(d) = found.iter().find(|d| d.initialized) {
            let target = d
                .leader
                .as_ref()
                .map_or(d.node.addr.clone(), |l| l.addr.clone());
            tracing::info!(node = %inner.me, "cluster: found cluster member {}; joining", d.node);
            match send_join(&inner, &target).await {
                Ok(()) => return,
                Err(e) => tracing::warn!("cluster: joining through {target} failed: {e}; retrying"),
            }
        } else {
            let names: BTreeSet<String> = found
                .iter()
                .map(|d| d.node.name.clone())
                .chain([inner.opts.node_name.clone()])
                .collect();
            let lowest = names.first().is_some_and(|n| *n == inner.opts.node_name);
            if lowest && previous.as_ref() == Some(&names) {
                if let Err(e) = initialize_alone(&inner).await {
                    tracing::warn!("{e}");
                }
                // The others find us initialized on their next probe.
                continue;
            }
            tracing::debug!(?names, lowest, "cluster: no cluster among the seeds yet");
            previous = Some(names);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Asks every seed who it is; seeds that are this node are skipped.
async fn probe(inner: &Arc<Inner>, seeds: &[String]) -> Vec<Discovery> {
    let calls = seeds.iter().map(|seed| {
        let inner = inner.clone();
        let seed = seed.clone();
        tokio::spawn(async move {
            (
                inner
                    .transport
                    .call(&seed, None, Request::Discover, PROBE_TIMEOUT)
                    .await,
                seed,
            )
        })
    });
    let mut found = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        match call.await {
            Ok((Ok(Response::Discovered(d)), _)) if d.node.name != inner.opts.node_name => {
                found.push(d)
            }
            Ok((Ok(_), _)) | Ok((Err(CallError::SelfConnect), _)) => {}
            Ok((Err(e), seed)) => tracing::debug!("cluster: seed {seed} not reachable: {e}"),
            Err(_) => {}
        }
    }
    found
}

/// Sends Join to `addr`, following "not the leader" redirects.
async fn send_join(inner: &Inner, addr: &str) -> Result<(), ClusterError> {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut addr = addr.to_string();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClusterError::NoQuorum);
        }
        match inner
            .transport
            .call(&addr, None, Request::Join(inner.me.clone()), left)
            .await?
        {
            Response::Joined(Ok(())) => {
                tracing::info!(node = %inner.me, "cluster: joined the cluster through {addr}");
                return Ok(());
            }
            Response::Joined(Err(RemoteError::NotLeader(Some(leader)))) if leader.addr != addr => {
                tracing::debug!("cluster: {addr} is not the leader; trying {leader}");
                addr = leader.addr;
            }
            Response::Joined(Err(RemoteError::NotLeader(_))) | Response::Unavailable(_) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Response::Joined(Err(RemoteError::Timeout)) => return Err(ClusterError::Timeout),
            Response::Joined(Err(RemoteError::Rejected(why))) => {
                return Err(ClusterError::Rejected(why))
            }
            other => {
                return Err(ClusterError::Internal(format!(
                    "unexpected response {other:?}"
                )))
            }
        }
    }
}

/// `Cluster::join`: joins the cluster of the node at `seed_addr`.
pub(crate) async fn join(inner: &Arc<Inner>, seed_addr: &str) -> Result<(), ClusterError> {
    let raft = inner.raft();
    // Initialized even if the metrics do not show the membership yet.
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|_| ClusterError::Shutdown)?;
    let members = members_of(&raft);
    if members.keys().any(|id| *id != inner.id) {
        return Err(ClusterError::Rejected(
            "this node is already in a cluster with other nodes; leave it first".into(),
        ));
    }
    // Check the seed before discarding anything.
    match inner
        .transport
        .call(seed_addr, None, Request::Discover, PROBE_TIMEOUT)
        .await?
    {
        Response::Discovered(_) => {}
        other => {
            return Err(ClusterError::Internal(format!(
                "unexpected response {other:?}"
            )))
        }
    }
    if initialized {
        // A cluster of its own, alone: its log would conflict with the one
        // it joins, so start over with empty Raft state.
        tracing::info!(node = %inner.me, "cluster: discarding this node's own one-node cluster to join {seed_addr}");
        reset_raft(inner).await?;
    }
    send_join(inner, seed_addr).await
}

/// Replaces this node's Raft with a fresh one, without state.
async fn reset_raft(inner: &Arc<Inner>) -> Result<(), ClusterError> {
    let old = inner.raft();
    let _ = old.shutdown().await;
    wipe(inner).await;
    let raft = new_raft(
        &inner.opts,
        inner.id,
        &inner.db,
        &inner.transport,
        inner.applier.clone(),
    )
    .await
    .map_err(|e| ClusterError::Internal(e.to_string()))?;
    *inner.raft.write() = raft;
    Ok(())
}

/// Deletes this node's Raft state (log, vote, state-machine bookkeeping).
pub(crate) async fn wipe(inner: &Inner) {
    let result = async {
        LogStore::open(&inner.db)?.wipe().await?;
        state_machine::wipe(&inner.db).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!("cluster: could not delete the Raft state: {e}");
    }
}

fn not_leader(inner: &Inner) -> RemoteError {
    RemoteError::NotLeader(inner.leader().map(|(_, n)| n))
}

fn is_leader(inner: &Inner) -> bool {
    inner.leader().is_some_and(|(id, _)| id == inner.id)
}

/// Runs a membership change on the leader, retrying while another one is
/// in progress, within `JOIN_TIMEOUT`.
async fn change(
    inner: &Inner,
    changes: ChangeMembers<u64, NodeInfo>,
    retain: bool,
) -> Result<(), RemoteError> {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let raft = inner.raft();
        let fut = raft.change_membership(changes.clone(), retain);
        match tokio::time::timeout(left, fut).await {
            Err(_) => return Err(RemoteError::Timeout),
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                return Err(RemoteError::NotLeader(f.leader_node))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            )))) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(RemoteError::Rejected(e.to_string())),
        }
    }
}

/// Leader side of Join: learner first, then voter.
pub(crate) async fn handle_join(inner: &Inner, node: NodeInfo) -> Result<(), RemoteError> {
    let _guard = inner.membership_lock.lock().await;
    if !is_leader(inner) {
        return Err(not_leader(inner));
    }
    let id = node_id(&node.name);
    let raft = inner.raft();
    let (known, voter) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let known = membership.get_node(&id).cloned();
        let voter = membership.voter_ids().any(|v| v == id);
        (known, voter)
    };
    match known {
        Some(old) if old == node && voter => return Ok(()), // a restarted member, already in
        Some(old) if old != node => {
            tracing::info!("cluster: node {} now at {}", node.name, node.addr);
            change(
                inner,
                ChangeMembers::SetNodes(BTreeMap::from([(id, node.clone())])),
                true,
            )
            .await?;
        }
        Some(_) => {}
        None => {
            tracing::info!("cluster: adding {node} as a learner");
            let add = raft.add_learner(id, node.clone(), false);
            match tokio::time::timeout(JOIN_TIMEOUT, add).await {
                Err(_) => return Err(RemoteError::Timeout),
                Ok(Ok(_)) => {}
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    return Err(RemoteError::NotLeader(f.leader_node))
                }
                Ok(Err(e)) => return Err(RemoteError::Rejected(e.to_string())),
            }
        }
    }
    if !voter {
        tracing::info!("cluster: promoting {node} to voter");
        change(
            inner,
            ChangeMembers::AddVoterIds(BTreeSet::from([id])),
            false,
        )
        .await?;
    }
    tracing::info!("cluster: {node} joined");
    Ok(())
}

/// Leader side of leave/forget: removes `name` from the membership.
pub(crate) async fn handle_remove(inner: &Inner, name: &str) -> Result<(), RemoteError> {
    let _guard = inner.membership_lock.lock().await;
    if !is_leader(inner) {
        return Err(not_leader(inner));
    }
    let id = node_id(name);
    let (known, voters) = {
        let raft = inner.raft();
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        (membership.get_node(&id).is_some(), voters)
    };
    if !known {
        return Err(RemoteError::Rejected(format!(
            "no node named {name} in the cluster"
        )));
    }
    if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(RemoteError::Rejected(format!(
                "{name} is the last voter of the cluster"
            )));
        }
        tracing::info!("cluster: removing voter {name}");
        // retain = false: not even kept as a learner.
        change(
            inner,
            ChangeMembers::RemoveVoters(BTreeSet::from([id])),
            false,
        )
        .await?;
    } else {
        tracing::info!("cluster: removing learner {name}");
        change(
            inner,
            ChangeMembers::RemoveNodes(BTreeSet::from([id])),
            false,
        )
        .await?;
    }
    tracing::info!("cluster: {name} removed from the cluster");
    Ok(())
}

/// Logs leader and membership changes as this node sees them.
pub(crate) async fn watch_metrics(inner: Arc<Inner>) {
    let mut last_leader = None;
    let mut last_members: Option<(BTreeSet<String>, BTreeSet<String>)> = None;
    loop {
        let raft = inner.raft();
        let mut rx = raft.metrics();
        loop {
            let (leader, members, term) = {
                let m = rx.borrow_and_update();
                let membership = m.membership_config.membership();
                let voters: BTreeSet<u64> = membership.voter_ids().collect();
                let (v, l): (Vec<_>, Vec<_>) =
                    membership.nodes().partition(|(id, _)| voters.contains(id));
                let names = |x: Vec<(&u64, &NodeInfo)>| {
                    x.into_iter().map(|(_, n)| n.name.clone()).collect()
                };
                let leader = m
                    .current_leader
                    .and_then(|l| membership.get_node(&l))
                    .map(|n| n.name.clone());
                (leader, (names(v), names(l)), m.current_term)
            };
            if leader != last_leader {
                match &leader {
                    Some(l) => tracing::info!(node = %inner.me, term, "cluster: leader is {l}"),
                    None => tracing::info!(node = %inner.me, term, "cluster: no leader"),
                }
                last_leader = leader;
            }
            if last_members.as_ref() != Some(&members)
                && !(members.0.is_empty() && members.1.is_empty())
            {
                tracing::info!(node = %inner.me, voters = ?members.0, learners = ?members.1, "cluster: membership");
                last_members = Some(members);
            }
            if rx.changed().await.is_err() {
                break; // this Raft stopped; a new one may replace it (join)
            }
        }
        if inner.stopped.load(Ordering::SeqCst) || inner.left.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pings every other member each second, for `status().members[].reachable`
/// (and to keep connections warm between followers).
pub(crate) async fn ping_members(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let members = members_of(&inner.raft());
        for (id, node) in members {
            if id == inner.id {
                continue;
            }
            let inner = inner.clone();
            tokio::spawn(async move {
                let ok = matches!(
                    inner
                        .transport
                        .call(
                            &node.addr,
                            Some(&node.name),
                            Request::Ping,
                            Duration::from_secs(1)
                        )
                        .await,
                    Ok(Response::Pong)
                );
                if ok {
                    inner
                        .last_seen
                        .lock()
                        .insert(node.name.clone(), Instant::now());
                }
            });
        }
    }
}
