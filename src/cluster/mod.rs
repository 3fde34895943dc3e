//! Clustering, below the broker: one Raft group (the metadata group) across
//! the nodes, its node-to-node transport and its log storage.
//!
//! Consensus is openraft's (0.9). What is ours: the storage (`log_store`,
//! `state_machine`, both in sled under `data_dir`), the network
//! (`transport`, `network`, `rpc`) and cluster formation (`membership`). The
//! broker sees opaque command bytes and an [`Applier`] it implements; no
//! openraft type crosses this module's public API.
//!
//! See DESIGN.md, "The cluster".

mod calls;
mod log_store;
mod membership;
mod network;
mod rpc;
mod state_machine;
pub mod tls;
mod transport;
mod types;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, ServerState, SnapshotPolicy};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::task::JoinHandle;

pub use self::calls::BrokerHandler;
use self::log_store::LogStore;
use self::rpc::{Proposed, RemoteError, Request, Response};
use self::state_machine::StateMachine;
use self::transport::{CallError, Local, Transport};
use self::types::{node_id, Command, NodeId, NodeInfo, Raft};

/// How a node finds and joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Nodes of different clusters refuse each other.
    pub cluster_name: String,
    /// E.g. "broker@node1": unique in the cluster, stable across restarts
    /// (the Raft node id is derived from it).
    pub node_name: String,
    /// Node-to-node listener (default port 25672).
    pub listen: SocketAddr,
    /// "host:port" the other nodes use to reach this node.
    pub advertise: String,
    /// "host:port" of other nodes; may include this node's own address.
    pub seed_nodes: Vec<String>,
    /// Shared secret (RabbitMQ's Erlang cookie); never sent, only proven.
    pub secret: String,
    /// Raft log, vote and state-machine bookkeeping (e.g. `<data>/cluster`).
    pub data_dir: PathBuf,
    pub tuning: Tuning,
    /// Node traffic over TLS (`cluster.tls`, with the `[tls]` files);
    /// `None`: plain TCP. Every node of a cluster must agree.
    pub tls: Option<tls::NodeTls>,
}

/// Timings and log-compaction knobs; the defaults suit a LAN.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long `propose` (and `leave`/`forget`) may take before failing
    /// with `NoQuorum` or `Timeout`.
    pub propose_timeout: Duration,
    /// Snapshot the state machine every this many log entries...
    pub snapshot_every: u64,
    /// ...and keep this many entries already in a snapshot (so that a
    /// briefly lagging node catches up from the log, not a snapshot).
    pub keep_after_snapshot: u64,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            heartbeat: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            propose_timeout: Duration::from_secs(5),
            snapshot_every: 5000,
            keep_after_snapshot: 1000,
        }
    }
}

/// The broker's state machine. Called on every node, in log order, for
/// every committed command.
///
/// - `apply` must be deterministic, and idempotent: after a crash a command
///   may be applied again, because the applier's own store and the
///   cluster's last-applied index are not written atomically together (the
///   index is written after `apply` returns, so `apply` should have made its
///   effect durable by then, or accept re-deriving it).
/// - The calls are made on the Raft state-machine task: keep them short.
pub trait Applier: Send + Sync + 'static {
    /// Applies one command; the result goes back to the proposer.
    fn apply(&self, command: &[u8]) -> Vec<u8>;
    /// The full state, for lagging or new nodes.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot's.
    fn install(&self, snapshot: &[u8]);
    /// Resolves once what `apply` and `install` changed so far is on disk:
    /// awaited before the last-applied index is written, so that a crash
    /// never leaves the index ahead of the applier's own store.
    fn persisted(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterError {
    /// No leader could be reached (this node is cut off from a majority, or
    /// an election is under way) within the deadline.
    NoQuorum,
    /// The request reached a leader but was not confirmed in time; it may
    /// still be committed.
    Timeout,
    /// This node is shutting down.
    Shutdown,
    /// This node is not (or no longer) a member of a cluster.
    NotMember,
    /// A peer refused our connection (wrong secret, other cluster).
    Refused(String),
    /// A peer could not be reached.
    Unreachable(String),
    /// The leader will not do this (e.g. forget an unknown node).
    Rejected(String),
    Internal(String),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::NoQuorum => write!(f, "no cluster leader reachable (no quorum)"),
            ClusterError::Timeout => write!(
                f,
                "the cluster did not confirm the change in time; it may still be applied"
            ),
            ClusterError::Shutdown => write!(f, "the cluster layer is shutting down"),
            ClusterError::NotMember => write!(f, "this node is not a member of a cluster"),
            ClusterError::Refused(e) => write!(f, "refused by peer: {e}"),
            ClusterError::Unreachable(e) => write!(f, "peer unreachable: {e}"),
            ClusterError::Rejected(e) => write!(f, "rejected: {e}"),
            ClusterError::Internal(e) => write!(f, "internal cluster error: {e}"),
        }
    }
}

impl std::error::Error for ClusterError {}

impl From<CallError> for ClusterError {
    fn from(e: CallError) -> ClusterError {
        match e {
            CallError::Unreachable(e) => ClusterError::Unreachable(e),
            CallError::Refused(e) => ClusterError::Refused(e),
            CallError::SelfConnect => {
                ClusterError::Rejected("that address is this node's own".into())
            }
            CallError::Timeout | CallError::Lost(_) => ClusterError::Timeout,
            CallError::TooLarge => ClusterError::Rejected(e.to_string()),
            CallError::Shutdown => ClusterError::Shutdown,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster_name: String,
    pub node: String,
    /// "leader", "follower", "candidate", "learner" (not a voter, or not
    /// joined yet), "left" or "shutdown".
    pub state: String,
    pub leader: Option<String>,
    pub term: u64,
    pub members: Vec<MemberStatus>,
    pub last_applied: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub addr: String,
    pub voter: bool,
    pub reachable: bool,
}

/// A running node of the metadata group. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    opts: ClusterOptions,
    id: NodeId,
    me: NodeInfo,
    applier: Arc<dyn Applier>,
    db: sled::Db,
    transport: Arc<Transport>,
    /// Replaced (new, empty) when a standalone node joins another cluster.
    raft: RwLock<Raft>,
    /// Leader side: one membership change at a time.
    membership_lock: tokio::sync::Mutex<()>,
    /// Last successful ping per peer name.
    last_seen: Mutex<HashMap<String, Instant>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
    left: AtomicBool,
    /// Serves `Request::Broker` (see `calls`); set once by the broker.
    broker_handler: std::sync::OnceLock<calls::BrokerHandler>,
}

impl Inner {
    fn raft(&self) -> Raft {
        self.raft.read().clone()
    }

    fn check_running(&self) -> Result<(), ClusterError> {
        if self.stopped.load(Ordering::SeqCst) {
            Err(ClusterError::Shutdown)
        } else if self.left.load(Ordering::SeqCst) {
            Err(ClusterError::NotMember)
        } else {
            Ok(())
        }
    }

    /// The leader's node info, per this node's view.
    fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let raft = self.raft();
        let m = raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        let info = m.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, info))
    }

    fn spawn(&self, task: JoinHandle<()>) {
        self.tasks.lock().push(task);
    }
}

fn raft_config(opts: &ClusterOptions) -> anyhow::Result<Arc<Config>> {
    let t = &opts.tuning;
    let ms = |d: Duration| d.as_millis() as u64;
    let config = Config {
        cluster_name: opts.cluster_name.clone(),
        heartbeat_interval: ms(t.heartbeat),
        election_timeout_min: ms(t.election_timeout_min),
        election_timeout_max: ms(t.election_timeout_max),
        // Snapshot chunks are up to 3 MiB: give them time on a slow link.
        install_snapshot_timeout: 10_000,
        // Keeps an AppendEntries frame well under the 64 MiB limit for
        // ordinary metadata commands; a too-large one is split anyway.
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: t.keep_after_snapshot,
        replication_lag_threshold: t.snapshot_every.max(1000) * 2,
        purge_batch_size: 1,
        ..Default::default()
    };
    Ok(Arc::new(
        config
            .validate()
            .context("cluster: invalid Raft configuration")?,
    ))
}

/// Opens the sled database, waiting a little if a previous incarnation of
/// this node in the same process still holds its lock.
async fn open_db(dir: &std::path::Path) -> anyhow::Result<sled::Db> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cluster: cannot create {}", dir.display()))?;
    let path = dir.join("raft");
    let mut tries = 0;
    loop {
        match sled::open(&path) {
            Ok(db) => return Ok(db),
            Err(e) if tries < 100 => {
                tries += 1;
                tracing::debug!("cluster: waiting for {}: {e}", path.display());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cluster: cannot open {}", path.display()))
            }
        }
    }
}

async fn new_raft(
    opts: &ClusterOptions,
    id: NodeId,
    db: &sled::Db,
    transport: &Arc<Transport>,
    applier: Arc<dyn Applier>,
) -> anyhow::Result<Raft> {
    let log_store = LogStore::open(db).context("cluster: cannot open the Raft log")?;
    let sm = StateMachine::open(db, applier)
        .map_err(|e| anyhow::anyhow!("cluster: state machine: {e}"))?;
    let network = network::Network {
        transport: transport.clone(),
        id,
    };
    Raft::new(id, raft_config(opts)?, network, log_store, sm)
        .await
        .map_err(|e| anyhow::anyhow!("cluster: cannot start Raft: {e}"))
}

impl Cluster {
    /// Starts this node: opens its Raft state, listens for peers, and forms
    /// or rejoins the cluster (in the background; `propose` waits for a
    /// leader up to its deadline).
    pub async fn start(opts: ClusterOptions, applier: Arc<dyn Applier>) -> anyhow::Result<Cluster> {
        let id = node_id(&opts.node_name);
        let me = NodeInfo {
            name: opts.node_name.clone(),
            addr: opts.advertise.clone(),
        };
        let db = open_db(&opts.data_dir).await?;
        let had_state = LogStore::open(&db)
            .context("cluster: cannot open the Raft log")?
            .has_state();
        let local = Local {
            cluster: opts.cluster_name.clone(),
            name: opts.node_name.clone(),
            addr: opts.advertise.clone(),
            secret: opts.secret.clone(),
            incarnation: rand::random(),
        };
        let transport = Transport::bind(local, opts.listen, opts.tls.clone())
            .await
            .with_context(|| format!("cluster: cannot listen on {}", opts.listen))?;
        let raft = match new_raft(&opts, id, &db, &transport, applier.clone()).await {
            Ok(r) => r,
            Err(e) => {
                transport.shutdown();
                return Err(e);
            }
        };
        let inner = Arc::new(Inner {
            opts,
            id,
            me,
            applier,
            db,
            transport: transport.clone(),
            raft: RwLock::new(raft),
            membership_lock: tokio::sync::Mutex::new(()),
            last_seen: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            left: AtomicBool::new(false),
            broker_handler: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&inner);
        transport.set_handler(Arc::new(move |req| {
            let inner = weak.upgrade();
            Box::pin(async move {
                match inner {
                    Some(inner) => serve(inner, req).await,
                    None => Response::Unavailable("shutting down".into()),
                }
            })
        }));
        tracing::info!(
            node = %inner.me,
            cluster = %inner.opts.cluster_name,
            listen = %inner.opts.listen,
            "cluster: node starting{}",
            if had_state { " with existing Raft state (rejoining)" } else { "" }
        );
        let seeds = membership::other_seeds(&inner.opts);
        if !had_state && seeds.is_empty() {
            membership::initialize_alone(&inner).await?;
        } else if !had_state {
            let task = tokio::spawn(membership::bootstrap(inner.clone(), seeds));
            inner.spawn(task);
        }
        inner.spawn(tokio::spawn(membership::watch_metrics(inner.clone())));
        inner.spawn(tokio::spawn(membership::ping_members(inner.clone())));
        Ok(Cluster { inner })
    }

    /// Commits `command` on a majority (through the leader) and returns once
    /// this node has applied it too, with the leader's `Applier::apply`
    /// result. Fails within `tuning.propose_timeout`.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ClusterError> {
        let timeout = self.inner.opts.tuning.propose_timeout;
        let deadline = Instant::now() + timeout;
        let expires_at_ms = wall_clock_ms() + timeout.as_millis() as u64;
        let resp = self
            .to_leader(deadline, || Request::Propose {
                command: command.clone(),
                expires_at_ms,
            })
            .await?;
        let proposed = match resp {
            Response::Proposed(Ok(p)) => p,
            Response::Proposed(Err(e)) => return Err(remote_error(e)),
            other => {
                return Err(ClusterError::Internal(format!(
                    "unexpected response {other:?}"
                )))
            }
        };
        // Committed; wait until it is applied here too, so that whatever the
        // caller does next on this node sees it.
        let left = deadline.saturating_duration_since(Instant::now());
        self.inner
            .raft()
            .wait(Some(left.max(Duration::from_millis(1))))
            .applied_index_at_least(Some(proposed.index), "propose applied locally")
            .await
            .map_err(|_| ClusterError::Timeout)?;
        Ok(proposed.reply)
    }

    /// Sends `req` to the leader (handling it here if this node leads),
    /// retrying while there is no leader or it changes, until `deadline`.
    async fn to_leader(
        &self,
        deadline: Instant,
        req: impl Fn() -> Request,
    ) -> Result<Response, ClusterError> {
        let inner = &self.inner;
        loop {
            inner.check_running()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClusterError::NoQuorum);
            }
            let retry = match inner.leader() {
                Some((id, _)) if id == inner.id => {
                    let resp = serve(inner.clone(), req()).await;
                    match resp {
                        Response::Proposed(Err(RemoteError::NotLeader(_)))
                        | Response::Joined(Err(RemoteError::NotLeader(_)))
                        | Response::Removed(Err(RemoteError::NotLeader(_))) => true,
                        other => return Ok(other),
                    }
                }
                Some((_, node)) => match inner
                    .transport
                    .call(&node.addr, Some(&node.name), req(), left)
                    .await
                {
                    Ok(Response::Proposed(Err(RemoteError::NotLeader(_))))
                    | Ok(Response::Joined(Err(RemoteError::NotLeader(_))))
                    | Ok(Response::Removed(Err(RemoteError::NotLeader(_))))
                    | Ok(Response::Unavailable(_)) => true,
                    Ok(other) => return Ok(other),
                    // Sent, but no answer: the outcome is unknown.
                    Err(CallError::Timeout) | Err(CallError::Lost(_)) => {
                        return Err(ClusterError::Timeout)
                    }
                    Err(CallError::Shutdown) => return Err(ClusterError::Shutdown),
                    Err(CallError::TooLarge) => {
                        return Err(ClusterError::Rejected("command too large".into()))
                    }
                    Err(_) => true, // not connected: a new leader may come
                },
                None => true,
            };
            if retry {
                let pause = Duration::from_millis(50)
                    .min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
            }
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let inner = &self.inner;
        let raft = inner.raft();
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let last_seen = inner.last_seen.lock();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                name: node.name.clone(),
                addr: node.addr.clone(),
                voter: voters.contains(id),
                reachable: *id == inner.id
                    || last_seen
                        .get(&node.name)
                        .is_some_and(|t| t.elapsed() < Duration::from_secs(3)),
            })
            .collect();
        let state = if inner.stopped.load(Ordering::SeqCst) {
            "shutdown"
        } else if inner.left.load(Ordering::SeqCst) {
            "left"
        } else {
            match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
        };
        ClusterStatus {
            cluster_name: inner.opts.cluster_name.clone(),
            node: inner.opts.node_name.clone(),
            state: state.into(),
            leader: m
                .current_leader
                .and_then(|l| membership.get_node(&l))
                .map(|n| n.name.clone()),
            term: m.current_term,
            members,
            last_applied: m.last_applied.map(|l| l.index),
        }
    }

    /// Joins the cluster that the node at `seed_addr` belongs to (following
    /// it to the leader). A node that formed a cluster of its own, alone,
    /// discards that state first (like RabbitMQ's reset; the broker must
    /// clear its own metadata too). A node already in a cluster with other
    /// members must `leave` first.
    pub async fn join(&self, seed_addr: &str) -> Result<(), ClusterError> {
        self.inner.check_running()?;
        membership::join(&self.inner, seed_addr).await
    }

    /// Removes this node from the cluster, then stops its Raft and deletes
    /// its Raft state. Afterwards this `Cluster` only reports `NotMember`.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let inner = &self.inner;
        inner.check_running()?;
        let deadline = Instant::now() + inner.opts.tuning.propose_timeout * 2;
        let name = inner.opts.node_name.clone();
        match self
            .to_leader(deadline, || Request::Remove(name.clone()))
            .await?
        {
            Response::Removed(Ok(())) => {}
            Response::Removed(Err(e)) => return Err(remote_error(e)),
            other => {
                return Err(ClusterError::Internal(format!(
                    "unexpected response {other:?}"
                )))
            }
        }
        tracing::info!(node = %inner.me, "cluster: this node left the cluster");
        inner.left.store(true, Ordering::SeqCst);
        let raft = inner.raft();
        let _ = raft.shutdown().await;
        membership::wipe(inner).await;
        Ok(())
    }

    /// Removes another node (down for good) from the membership.
    pub async fn forget(&self, node_name: &str) -> Result<(), ClusterError> {
        let inner = &self.inner;
        inner.check_running()?;
        if node_name == inner.opts.node_name {
            return Err(ClusterError::Rejected(
                "a node cannot forget itself; use leave".into(),
            ));
        }
        let deadline = Instant::now() + inner.opts.tuning.propose_timeout * 2;
        match self
            .to_leader(deadline, || Request::Remove(node_name.to_string()))
            .await?
        {
            Response::Removed(Ok(())) => Ok(()),
            Response::Removed(Err(e)) => Err(remote_error(e)),
            other => Err(ClusterError::Internal(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    /// Waits until this node knows a leader (e.g. after `start`).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(), ClusterError> {
        self.inner
            .raft()
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map(|_| ())
            .map_err(|_| ClusterError::NoQuorum)
    }

    /// Stops Raft, the background tasks and the transport. Idempotent.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        for task in inner.tasks.lock().drain(..) {
            task.abort();
        }
        let raft = inner.raft();
        let _ = raft.shutdown().await;
        inner.transport.shutdown();
        let _ = inner.db.flush_async().await;
        tracing::info!(node = %inner.me, "cluster: node stopped");
    }
}

fn remote_error(e: RemoteError) -> ClusterError {
    match e {
        RemoteError::NotLeader(_) => ClusterError::NoQuorum,
        RemoteError::Timeout => ClusterError::Timeout,
        RemoteError::Rejected(why) => ClusterError::Rejected(why),
    }
}

/// Serves a request from a peer (or from this node, when it leads).
async fn serve(inner: Arc<Inner>, req: Request) -> Response {
    if inner.stopped.load(Ordering::SeqCst) {
        return Response::Unavailable("node is shutting down".into());
    }
    if inner.left.load(Ordering::SeqCst) {
        return Response::Unavailable("node has left the cluster".into());
    }
    let raft = inner.raft();
    match req {
        Request::AppendEntries(r) => Response::AppendEntries(raft.append_entries(r).await),
        Request::Vote(r) => Response::Vote(raft.vote(r).await),
        Request::InstallSnapshot(r) => Response::InstallSnapshot(raft.install_snapshot(r).await),
        Request::Propose {
            command,
            expires_at_ms,
        } => Response::Proposed(if wall_clock_ms() > expires_at_ms {
            tracing::info!("cluster: dropped a forwarded change that arrived after its deadline");
            Err(RemoteError::Timeout)
        } else {
            leader_propose(&inner, &raft, command).await
        }),
        Request::Join(node) => Response::Joined(membership::handle_join(&inner, node).await),
        Request::Remove(name) => Response::Removed(membership::handle_remove(&inner, &name).await),
        Request::Discover => Response::Discovered(rpc::Discovery {
            node: inner.me.clone(),
            initialized: raft.is_initialized().await.unwrap_or(false),
            leader: inner.leader().map(|(_, n)| n),
        }),
        Request::Ping => Response::Pong,
        Request::Broker { from, body } => calls::serve_broker(&inner, from, body).await,
    }
}

async fn leader_propose(inner: &Inner, raft: &Raft, cmd: Vec<u8>) -> Result<Proposed, RemoteError> {
    let write = raft.client_write(Command(cmd));
    match tokio::time::timeout(inner.opts.tuning.propose_timeout, write).await {
        Err(_) => Err(RemoteError::Timeout),
        Ok(Ok(resp)) => Ok(Proposed {
            reply: resp.data.0,
            index: resp.log_id.index,
        }),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(RemoteError::NotLeader(f.leader_node))
        }
        Ok(Err(RaftError::APIError(e))) => Err(RemoteError::Rejected(e.to_string())),
        Ok(Err(RaftError::Fatal(e))) => Err(RemoteError::Rejected(format!("Raft stopped: {e}"))),
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Used by `membership` to list members for pings and logs.
fn members_of(raft: &Raft) -> BTreeMap<NodeId, NodeInfo> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    m.membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.clone()))
        .collect()
}
