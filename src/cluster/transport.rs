//! Node-to-node transport: one TCP connection per node pair, carrying
//! length-prefixed [`Frame`]s both ways, with request ids so that many RPCs
//! are in flight at once.
//!
//! A connection starts with a handshake ([`Handshake`]) in which each side
//! proves it knows the shared secret (HMAC-SHA256 over both sides' nonces)
//! and the cluster names are compared. Either node may dial; when both dial
//! each other at once, the connection dialed by the node whose name sorts
//! lower is kept on both sides and the other one is retired (closed once it
//! has nothing in flight). Failed dials back off (100 ms doubling to 2 s) so
//! that callers fail fast while a peer is down.
//!
//! With `cluster.tls` ([`NodeTls`]) both sides run a TLS handshake first
//! (each presenting its certificate, each checking the other's against the
//! CA) and the handshake above then runs inside TLS, unchanged. A node
//! without TLS that meets one with it (either way round) is refused with a
//! warning saying so.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::rpc::{self, Frame, Handshake, Request, Response, MAX_FRAME, PROTOCOL_VERSION};
use super::tls::{self, NodeTls};
use super::types::NodeInfo;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Largest handshake message accepted.
const HANDSHAKE_MAX: usize = 64 * 1024;
/// Frames queued for one connection's writer before senders wait.
const WRITE_QUEUE: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

/// A connection's two directions, over plain TCP or TLS.
type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Serves requests that peers send us (set once Raft exists).
pub(crate) type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Who we are on the wire.
pub(crate) struct Local {
    pub cluster: String,
    pub name: String,
    pub addr: String,
    pub secret: String,
    /// Random per process start: tells a restarted peer from a stale
    /// connection to its previous life.
    pub incarnation: u64,
}

#[derive(Debug, Clone)]
pub(crate) enum CallError {
    /// Could not connect (or still backing off after failing to).
    Unreachable(String),
    /// The peer refused the handshake (wrong secret, other cluster...).
    Refused(String),
    /// The address is our own listener.
    SelfConnect,
    /// No response within the deadline.
    Timeout,
    /// The connection was lost while the request was in flight.
    Lost(String),
    /// The request does not fit in a frame.
    TooLarge,
    /// This transport is shut down.
    Shutdown,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "unreachable: {e}"),
            CallError::Refused(e) => write!(f, "refused: {e}"),
            CallError::SelfConnect => write!(f, "address is this node's own"),
            CallError::Timeout => write!(f, "timed out"),
            CallError::Lost(e) => write!(f, "connection lost: {e}"),
            CallError::TooLarge => write!(f, "message larger than {MAX_FRAME} bytes"),
            CallError::Shutdown => write!(f, "node is shutting down"),
        }
    }
}

impl std::error::Error for CallError {}

/// Dial state of one address: serializes dials and remembers failures.
#[derive(Default)]
struct DialState {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<CallError>,
}

pub(crate) struct Transport {
    local: Local,
    /// Node traffic over TLS (`cluster.tls`), dialing and accepting.
    tls: Option<NodeTls>,
    /// Live connections by peer node name.
    peers: Mutex<HashMap<String, Arc<Conn>>>,
    /// Peer addresses (as dialed or advertised) to node names, learned at handshake.
    names: Mutex<HashMap<String, String>>,
    dials: Mutex<HashMap<String, Arc<tokio::sync::Mutex<DialState>>>>,
    handler: OnceLock<Handler>,
    closed: AtomicBool,
    listener: Mutex<Option<JoinHandle<()>>>,
    me: Weak<Transport>,
}

impl Transport {
    /// Binds the node-to-node listener and starts accepting. Requests that
    /// arrive before [`Transport::set_handler`] get `Unavailable`.
    pub(crate) async fn bind(
        local: Local,
        listen: SocketAddr,
        tls: Option<NodeTls>,
    ) -> std::io::Result<Arc<Transport>> {
        let listener = TcpListener::bind(listen).await?;
        let transport = Arc::new_cyclic(|me| Transport {
            local,
            tls,
            peers: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            dials: Mutex::new(HashMap::new()),
            handler: OnceLock::new(),
            closed: AtomicBool::new(false),
            listener: Mutex::new(None),
            me: me.clone(),
        });
        let weak = Arc::downgrade(&transport);
        let task = tokio::spawn(accept_loop(weak, listener));
        *transport.listener.lock() = Some(task);
        Ok(transport)
    }

    pub(crate) fn set_handler(&self, handler: Handler) {
        let _ = self.handler.set(handler);
    }

    /// Sends `req` to the node at `addr` (named `name` if known) and waits for
    /// its response at most `timeout` (connecting included).
    pub(crate) async fn call(
        &self,
        addr: &str,
        name: Option<&str>,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let deadline = Instant::now() + timeout;
        let conn = match tokio::time::timeout(timeout, self.connection(addr, name)).await {
            Ok(conn) => conn?,
            Err(_) => return Err(CallError::Timeout),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        conn.request(req, left).await
    }

    /// Closes the listener and every connection; later calls fail.
    pub(crate) fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(task) = self.listener.lock().take() {
            task.abort();
        }
        let conns: Vec<_> = self.peers.lock().drain().map(|(_, c)| c).collect();
        for conn in conns {
            conn.close("shutdown");
        }
    }

    fn lookup(&self, addr: &str, name: Option<&str>) -> Option<Arc<Conn>> {
        let name = match name {
            Some(n) => n.to_string(),
            None => self.names.lock().get(addr)?.clone(),
        };
        let peers = self.peers.lock();
        peers.get(&name).filter(|c| !c.is_closed()).cloned()
    }

    async fn connection(&self, addr: &str, name: Option<&str>) -> Result<Arc<Conn>, CallError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(CallError::Shutdown);
        }
        if let Some(conn) = self.lookup(addr, name) {
            return Ok(conn);
        }
        let slot = self
            .dials
            .lock()
            .entry(addr.to_string())
            .or_default()
            .clone();
        let mut state = slot.lock().await;
        // Someone else may have connected (either way) while we waited.
        if let Some(conn) = self.lookup(addr, name) {
            return Ok(conn);
        }
        if let (Some(at), Some(err)) = (state.retry_at, &state.last_error) {
            if Instant::now() < at {
                return Err(err.clone());
            }
        }
        match self.dial(addr).await {
            Ok(conn) => {
                *state = DialState::default();
                Ok(conn)
            }
            Err(err) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = BACKOFF_MIN
                    .saturating_mul(1 << state.failures.min(5))
                    .min(BACKOFF_MAX);
                state.retry_at = Some(Instant::now() + backoff);
                state.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    async fn dial(&self, addr: &str) -> Result<Arc<Conn>, CallError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(CallError::Unreachable(format!("{addr}: {e}"))),
            Err(_) => return Err(CallError::Unreachable(format!("{addr}: connect timed out"))),
        };
        let _ = stream.set_nodelay(true);
        let handshake = async {
            let (mut rd, mut wr) = self.open_dialed(addr, stream).await?;
            let peer = match self.handshake_dialer(addr, &mut rd, &mut wr).await {
                Err(CallError::Unreachable(e)) if self.tls.is_some() => {
                    return Err(refusal_behind(addr, &mut rd, e).await)
                }
                peer => peer?,
            };
            Ok::<_, CallError>((peer, rd, wr))
        };
        let (peer, rd, wr) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(CallError::Unreachable(format!(
                    "{addr}: handshake timed out"
                )))
            }
        };
        self.names
            .lock()
            .insert(addr.to_string(), peer.info.name.clone());
        let conn = Conn::start(self.me.clone(), peer, self.local.name.clone(), rd, wr);
        Ok(self.register(conn))
    }

    /// The dialed stream, after the TLS handshake when `cluster.tls` is on.
    async fn open_dialed(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> Result<(Reader, Writer), CallError> {
        let Some(node_tls) = &self.tls else {
            return Ok(plain(stream));
        };
        match node_tls
            .connector
            .connect(tls::server_name(addr), stream)
            .await
        {
            Ok(stream) => {
                let (rd, wr) = tokio::io::split(stream);
                Ok((Box::new(rd), Box::new(wr)))
            }
            Err(e) => {
                tracing::warn!(
                    peer = %addr,
                    "TLS handshake with cluster peer failed: {e} (cluster.tls must be on on \
                     every node, each with a certificate signed by the same tls.ca_file)"
                );
                Err(CallError::Refused(format!(
                    "{addr}: TLS handshake failed: {e}"
                )))
            }
        }
    }

    async fn handshake_dialer(
        &self,
        addr: &str,
        rd: &mut Reader,
        wr: &mut Writer,
    ) -> Result<PeerIdentity, CallError> {
        let lost = |e: std::io::Error| {
            if is_tls_mismatch(&e) {
                tracing::warn!(
                    peer = %addr,
                    "cluster peer answered with TLS: cluster.tls is on there but off on this node"
                );
                CallError::Refused(format!(
                    "{addr}: the peer speaks TLS (cluster.tls is off on this node)"
                ))
            } else if let Some(alert) = tls_alert(&e) {
                // TLS 1.3: the server checks our certificate after our side
                // of the TLS handshake is done; its refusal arrives here.
                tracing::warn!(
                    peer = %addr,
                    "cluster peer refused our TLS connection: {alert} (is this node's \
                     certificate signed by the tls.ca_file the peer uses?)"
                );
                CallError::Refused(format!("{addr}: TLS: {alert}"))
            } else {
                CallError::Unreachable(format!("{addr}: {e}"))
            }
        };
        let nonce_d: [u8; 32] = rand::random();
        send_handshake(
            wr,
            &Handshake::Hello {
                version: PROTOCOL_VERSION,
                cluster: self.local.cluster.clone(),
                name: self.local.name.clone(),
                addr: self.local.addr.clone(),
                incarnation: self.local.incarnation,
                nonce: nonce_d,
            },
        )
        .await
        .map_err(lost)?;
        let nonce_a = match recv_handshake(rd).await.map_err(lost)? {
            Handshake::Challenge { nonce } => nonce,
            Handshake::Refuse { is_self: true, .. } => return Err(CallError::SelfConnect),
            Handshake::Refuse { reason, .. } => {
                tracing::warn!(peer = %addr, "cluster peer refused our connection: {reason}");
                return Err(CallError::Refused(format!("{addr}: {reason}")));
            }
            other => return Err(protocol_error(addr, &other)),
        };
        let proof = self.mac(b"dialer", &nonce_d, &nonce_a).map_err(lost)?;
        send_handshake(wr, &Handshake::Proof { mac: proof })
            .await
            .map_err(lost)?;
        match recv_handshake(rd).await.map_err(lost)? {
            Handshake::Welcome {
                name,
                addr: advertised,
                incarnation,
                mac,
            } => {
                if !self.verify(b"acceptor", &nonce_d, &nonce_a, &mac) {
                    tracing::warn!(
                        peer = %addr,
                        "cluster peer {name} failed to prove the shared secret; disconnecting"
                    );
                    return Err(CallError::Refused(format!(
                        "{addr}: peer does not know the shared secret"
                    )));
                }
                Ok(PeerIdentity {
                    info: NodeInfo {
                        name,
                        addr: advertised,
                    },
                    incarnation,
                })
            }
            Handshake::Refuse { reason, .. } => {
                tracing::warn!(peer = %addr, "cluster peer refused our connection: {reason}");
                Err(CallError::Refused(format!("{addr}: {reason}")))
            }
            other => Err(protocol_error(addr, &other)),
        }
    }

    async fn accept(&self, stream: TcpStream, from: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let handshake = async {
            let (mut rd, mut wr) = self.open_accepted(from, stream).await?;
            let peer = self.handshake_acceptor(from, &mut rd, &mut wr).await?;
            Some((peer, rd, wr))
        };
        let (peer, rd, wr) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Some(accepted)) => accepted,
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(peer = %from, "cluster handshake timed out; disconnecting");
                return;
            }
        };
        self.names
            .lock()
            .insert(peer.info.addr.clone(), peer.info.name.clone());
        let dialed_by = peer.info.name.clone();
        let conn = Conn::start(self.me.clone(), peer, dialed_by, rd, wr);
        self.register(conn);
    }

    /// The accepted stream, after the TLS handshake when `cluster.tls` is
    /// on; `None` (logged) when that fails.
    async fn open_accepted(&self, from: SocketAddr, stream: TcpStream) -> Option<(Reader, Writer)> {
        let Some(node_tls) = &self.tls else {
            return Some(plain(stream));
        };
        match node_tls.acceptor.accept(stream).await {
            Ok(stream) => {
                let (rd, wr) = tokio::io::split(stream);
                Some((Box::new(rd), Box::new(wr)))
            }
            // Connected and closed without a word (a port check): as a
            // plain connection that says nothing, not worth a warning.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(peer = %from, "cluster TLS handshake failed: {e}");
                None
            }
            Err(e) => {
                tracing::warn!(
                    peer = %from,
                    "refused cluster peer: TLS handshake failed: {e} (cluster.tls must be on on \
                     every node, each with a certificate signed by the same tls.ca_file)"
                );
                None
            }
        }
    }

    /// The acceptor side of the handshake; `None` when the peer was refused
    /// (already logged and told).
    async fn handshake_acceptor(
        &self,
        from: SocketAddr,
        rd: &mut Reader,
        wr: &mut Writer,
    ) -> Option<PeerIdentity> {
        let hello = match recv_handshake(rd).await {
            Ok(h) => h,
            Err(e) if is_tls_mismatch(&e) => {
                tracing::warn!(
                    peer = %from,
                    "refused cluster peer: it speaks TLS, but cluster.tls is off on this node"
                );
                return None;
            }
            Err(e) => {
                tracing::debug!(peer = %from, "cluster handshake failed: {e}");
                return None;
            }
        };
        let Handshake::Hello {
            version,
            cluster,
            name,
            addr,
            incarnation,
            nonce: nonce_d,
        } = hello
        else {
            tracing::warn!(peer = %from, "refused cluster peer: did not start with a handshake");
            return None;
        };
        let refuse = |reason: String, is_self: bool| Handshake::Refuse { reason, is_self };
        let refusal = if version != PROTOCOL_VERSION {
            Some(refuse(
                format!("protocol version {version}, this node speaks {PROTOCOL_VERSION}"),
                false,
            ))
        } else if cluster != self.local.cluster {
            Some(refuse(
                format!(
                    "node {name} is in cluster '{cluster}', this node is in '{}'",
                    self.local.cluster
                ),
                false,
            ))
        } else if name == self.local.name && incarnation == self.local.incarnation {
            Some(refuse("this is the node itself".into(), true))
        } else if name == self.local.name {
            Some(refuse(
                format!("node name {name} is already in use by this node"),
                false,
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if let Handshake::Refuse {
                reason,
                is_self: false,
            } = &refusal
            {
                tracing::warn!(peer = %from, "refused cluster peer: {reason}");
            }
            let _ = send_handshake(wr, &refusal).await;
            return None;
        }
        let nonce_a: [u8; 32] = rand::random();
        send_handshake(wr, &Handshake::Challenge { nonce: nonce_a })
            .await
            .ok()?;
        let proof = match recv_handshake(rd).await {
            Ok(Handshake::Proof { mac }) => mac,
            Ok(_) | Err(_) => {
                tracing::warn!(peer = %from, "refused cluster peer {name}: handshake broken off");
                return None;
            }
        };
        if !self.verify(b"dialer", &nonce_d, &nonce_a, &proof) {
            tracing::warn!(
                peer = %from,
                "refused cluster peer {name} from {from}: wrong shared secret (cookie)"
            );
            let _ = send_handshake(wr, &refuse("wrong shared secret".into(), false)).await;
            return None;
        }
        let mac = self.mac(b"acceptor", &nonce_d, &nonce_a).ok()?;
        let welcome = Handshake::Welcome {
            name: self.local.name.clone(),
            addr: self.local.addr.clone(),
            incarnation: self.local.incarnation,
            mac,
        };
        send_handshake(wr, &welcome).await.ok()?;
        Some(PeerIdentity {
            info: NodeInfo { name, addr },
            incarnation,
        })
    }

    /// HMAC over who speaks (so a proof cannot be reflected back), the
    /// cluster name and both nonces.
    fn mac(&self, role: &[u8], nonce_d: &[u8; 32], nonce_a: &[u8; 32]) -> std::io::Result<Vec<u8>> {
        Ok(self
            .hmac(role, nonce_d, nonce_a)?
            .finalize()
            .into_bytes()
            .to_vec())
    }

    fn verify(&self, role: &[u8], nonce_d: &[u8; 32], nonce_a: &[u8; 32], mac: &[u8]) -> bool {
        match self.hmac(role, nonce_d, nonce_a) {
            Ok(h) => h.verify_slice(mac).is_ok(), // constant-time comparison
            Err(_) => false,
        }
    }

    fn hmac(
        &self,
        role: &[u8],
        nonce_d: &[u8; 32],
        nonce_a: &[u8; 32],
    ) -> std::io::Result<HmacSha256> {
        let mut h = HmacSha256::new_from_slice(self.local.secret.as_bytes())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        h.update(role);
        h.update(&(self.local.cluster.len() as u64).to_be_bytes());
        h.update(self.local.cluster.as_bytes());
        h.update(nonce_d);
        h.update(nonce_a);
        Ok(h)
    }

    /// Makes `conn` the connection to its peer, unless a better one is
    /// already there; returns the one to use.
    fn register(&self, conn: Arc<Conn>) -> Arc<Conn> {
        let name = conn.peer.info.name.clone();
        let (winner, loser) = {
            let mut peers = self.peers.lock();
            if self.closed.load(Ordering::SeqCst) {
                drop(peers);
                conn.close("shutdown");
                return conn;
            }
            match peers.get(&name).cloned() {
                Some(old) if !old.is_closed() && old.peer.incarnation == conn.peer.incarnation => {
                    // Two live connections to the same peer process: keep the
                    // one dialed by the lower-named node, as the peer does.
                    if conn.dialed_by < old.dialed_by {
                        peers.insert(name.clone(), conn.clone());
                        (conn, Some(old))
                    } else {
                        (old, Some(conn))
                    }
                }
                Some(old) => {
                    // Closed, or to a previous life of the peer.
                    peers.insert(name.clone(), conn.clone());
                    old.close("peer restarted");
                    (conn, None)
                }
                None => {
                    peers.insert(name.clone(), conn.clone());
                    (conn, None)
                }
            }
        };
        if let Some(loser) = loser {
            loser.retire();
        }
        tracing::debug!(peer = %winner.peer.info, "cluster connection up");
        winner
    }

    fn forget_conn(&self, conn: &Arc<Conn>) {
        let mut peers = self.peers.lock();
        if peers
            .get(&conn.peer.info.name)
            .is_some_and(|c| Arc::ptr_eq(c, conn))
        {
            peers.remove(&conn.peer.info.name);
        }
    }

    async fn serve(&self, req: Request) -> Response {
        match self.handler.get() {
            Some(handler) if !self.closed.load(Ordering::SeqCst) => handler(req).await,
            _ => Response::Unavailable("node is not ready".into()),
        }
    }
}

async fn accept_loop(transport: Weak<Transport>, listener: TcpListener) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // e.g. out of file descriptors: wait rather than spin.
                tracing::warn!("cluster listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(t) = transport.upgrade() else { return };
        tokio::spawn(async move { t.accept(stream, from).await });
    }
}

struct PeerIdentity {
    info: NodeInfo,
    incarnation: u64,
}

/// One handshaken connection: a reader task, a writer task and the requests
/// we are waiting answers for.
struct Conn {
    transport: Weak<Transport>,
    peer: PeerIdentity,
    /// Name of the node that dialed: decides which connection survives a
    /// simultaneous dial.
    dialed_by: String,
    out: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    /// Requests from the peer being served.
    serving: AtomicUsize,
    closed: AtomicBool,
    retired: AtomicBool,
    stop: watch::Sender<bool>,
}

impl Conn {
    fn start(
        transport: Weak<Transport>,
        peer: PeerIdentity,
        dialed_by: String,
        rd: Reader,
        wr: Writer,
    ) -> Arc<Conn> {
        let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
        let (stop, _) = watch::channel(false);
        let conn = Arc::new(Conn {
            transport,
            peer,
            dialed_by,
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            serving: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            stop,
        });
        tokio::spawn(write_loop(conn.clone(), wr, out_rx));
        tokio::spawn(read_loop(conn.clone(), rd));
        conn
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    async fn request(&self, req: Request, timeout: Duration) -> Result<Response, CallError> {
        if self.is_closed() {
            return Err(CallError::Lost("connection closed".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes =
            rpc::encode(&Frame::Request { id, body: req }).map_err(|_| CallError::TooLarge)?;
        if bytes.len() > MAX_FRAME {
            return Err(CallError::TooLarge);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let sent = tokio::time::timeout(timeout, self.out.send(bytes)).await;
        let result = match sent {
            Ok(Ok(())) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(_)) => Err(CallError::Lost(format!("to {}", self.peer.info.name))),
                Err(_) => Err(CallError::Timeout),
            },
            Ok(Err(_)) => Err(CallError::Lost(format!("to {}", self.peer.info.name))),
            Err(_) => Err(CallError::Timeout),
        };
        self.pending.lock().remove(&id);
        self.close_if_idle();
        result
    }

    /// Stops using this connection for new requests; it closes once nothing
    /// is in flight either way.
    fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.close_if_idle();
    }

    fn close_if_idle(&self) {
        if self.retired.load(Ordering::SeqCst)
            && self.pending.lock().is_empty()
            && self.serving.load(Ordering::SeqCst) == 0
        {
            self.close("duplicate connection");
        }
    }

    fn close(&self, why: &str) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::debug!(peer = %self.peer.info, "cluster connection closed: {why}");
        let _ = self.stop.send(true);
        // Dropping the senders wakes the waiters with an error.
        self.pending.lock().clear();
    }
}

async fn write_loop(conn: Arc<Conn>, wr: Writer, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut stop = conn.stop.subscribe();
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let result: std::io::Result<()> = async {
        loop {
            let frame = tokio::select! {
                f = rx.recv() => f,
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(frame) = frame else { return Ok(()) };
            write_frame(&mut wr, &frame).await?;
            // Batch whatever else is queued into the same flush.
            while let Ok(frame) = rx.try_recv() {
                write_frame(&mut wr, &frame).await?;
            }
            wr.flush().await?;
        }
    }
    .await;
    if let Err(e) = result {
        conn.close(&format!("write failed: {e}"));
    }
    let _ = wr.shutdown().await;
    if let Some(t) = conn.transport.upgrade() {
        t.forget_conn(&conn);
    }
}

async fn read_loop(conn: Arc<Conn>, mut rd: Reader) {
    let mut stop = conn.stop.subscribe();
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut rd) => f,
            _ = stop.wait_for(|s| *s) => break,
        };
        let frame = match frame.and_then(|b| {
            rpc::decode::<Frame>(&b).map_err(|e| std::io::Error::other(e.to_string()))
        }) {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::warn!(peer = %conn.peer.info, "bad frame from cluster peer, disconnecting: {e}");
                }
                break;
            }
        };
        match frame {
            Frame::Response { id, body } => {
                if let Some(tx) = conn.pending.lock().remove(&id) {
                    let _ = tx.send(body);
                }
            }
            Frame::Request { id, body } => {
                let Some(transport) = conn.transport.upgrade() else {
                    break;
                };
                conn.serving.fetch_add(1, Ordering::SeqCst);
                let conn = conn.clone();
                tokio::spawn(async move {
                    let resp = transport.serve(body).await;
                    match rpc::encode(&Frame::Response { id, body: resp }) {
                        Ok(bytes) if bytes.len() <= MAX_FRAME => {
                            let _ = conn.out.send(bytes).await;
                        }
                        _ => tracing::warn!(peer = %conn.peer.info, "response too large to send"),
                    }
                    conn.serving.fetch_sub(1, Ordering::SeqCst);
                    conn.close_if_idle();
                });
            }
        }
    }
    conn.close("peer closed or sent garbage");
    if let Some(t) = conn.transport.upgrade() {
        t.forget_conn(&conn);
    }
}

async fn write_frame<W: AsyncWriteExt + Unpin>(wr: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    wr.write_all(&len.to_be_bytes()).await?;
    wr.write_all(frame).await
}

async fn read_frame<R: AsyncReadExt + Unpin>(rd: &mut R) -> std::io::Result<Vec<u8>> {
    read_frame_max(rd, MAX_FRAME).await
}

async fn read_frame_max<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let len = rd.read_u32().await? as usize;
    if len > max {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes exceeds the {max} byte limit"
        )));
    }
    let mut buf = vec![0u8; len];
    rd.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn send_handshake(wr: &mut Writer, msg: &Handshake) -> std::io::Result<()> {
    let bytes = rpc::encode(msg).map_err(|e| std::io::Error::other(e.to_string()))?;
    write_frame(wr, &bytes).await?;
    wr.flush().await
}

async fn recv_handshake(rd: &mut Reader) -> std::io::Result<Handshake> {
    let mut header = [0u8; 4];
    rd.read_exact(&mut header).await?;
    // A TLS record (handshake 0x16 or alert 0x15, version 3.x) where a
    // length is expected: the peer has cluster.tls on and we have it off.
    // A real handshake frame is far below 2^24 bytes, so its first byte is 0.
    if matches!(header, [0x15 | 0x16, 0x03, ..]) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsMismatch,
        ));
    }
    let len = u32::from_be_bytes(header) as usize;
    // Small: the peer is not authenticated yet.
    if len > HANDSHAKE_MAX {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes exceeds the {HANDSHAKE_MAX} byte limit"
        )));
    }
    let mut bytes = vec![0u8; len];
    rd.read_exact(&mut bytes).await?;
    rpc::decode(&bytes).map_err(|e| std::io::Error::other(e.to_string()))
}

/// The peer sent TLS to our plain handshake.
#[derive(Debug)]
struct TlsMismatch;

impl std::fmt::Display for TlsMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the peer speaks TLS (cluster.tls is off on this node)")
    }
}

impl std::error::Error for TlsMismatch {}

fn is_tls_mismatch(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<TlsMismatch>())
}

/// With TLS 1.3 the acceptor checks our certificate after our side of the
/// TLS handshake has finished, so its refusal (an alert, then the socket
/// closed) shows as a failed write or read of our handshake. Looks for the
/// alert behind `error`; without one, the peer is just unreachable.
async fn refusal_behind(addr: &str, rd: &mut Reader, error: String) -> CallError {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(200), rd.read(&mut byte)).await;
    if let Ok(Err(e)) = &read {
        if let Some(alert) = tls_alert(e) {
            tracing::warn!(
                peer = %addr,
                "cluster peer refused our TLS connection: {alert} (is this node's \
                 certificate signed by the tls.ca_file the peer uses?)"
            );
            return CallError::Refused(format!("{addr}: TLS: {alert}"));
        }
    }
    CallError::Unreachable(error)
}

/// A TLS alert the peer sent (e.g. it refused our certificate).
fn tls_alert(e: &std::io::Error) -> Option<&tokio_rustls::rustls::Error> {
    let inner = e.get_ref()?.downcast_ref::<tokio_rustls::rustls::Error>()?;
    matches!(inner, tokio_rustls::rustls::Error::AlertReceived(_)).then_some(inner)
}

fn plain(stream: TcpStream) -> (Reader, Writer) {
    let (rd, wr) = stream.into_split();
    (Box::new(rd), Box::new(wr))
}

fn protocol_error(addr: &str, got: &Handshake) -> CallError {
    tracing::warn!(peer = %addr, "cluster peer broke the handshake (sent {got:?})");
    CallError::Refused(format!("{addr}: unexpected handshake message"))
}
