//! In-process clusters on 127.0.0.1, each node with its own tempdir and a
//! key/value Applier.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tempfile::TempDir;

use super::*;

/// "key=value" sets a key and returns its previous value.
#[derive(Default)]
struct KvApplier {
    map: Mutex<BTreeMap<String, String>>,
    installs: AtomicUsize,
}

impl Applier for KvApplier {
    fn apply(&self, command: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(command);
        let (k, v) = text.split_once('=').unwrap_or((&text, ""));
        let old = self.map.lock().insert(k.to_string(), v.to_string());
        old.unwrap_or_default().into_bytes()
    }
    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.map.lock()).unwrap_or_default()
    }
    fn install(&self, snapshot: &[u8]) {
        self.installs.fetch_add(1, Ordering::SeqCst);
        *self.map.lock() = serde_json::from_slice(snapshot).unwrap_or_default();
    }
}

impl KvApplier {
    fn get(&self, k: &str) -> Option<String> {
        self.map.lock().get(k).cloned()
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Node {
    name: String,
    port: u16,
    dir: TempDir,
    applier: Arc<KvApplier>,
    seeds: Vec<String>,
    secret: String,
    tuning: Tuning,
    tls: Option<tls::NodeTls>,
    cluster: Option<Cluster>,
}

fn test_tuning() -> Tuning {
    Tuning {
        heartbeat: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(500),
        election_timeout_max: Duration::from_millis(1000),
        propose_timeout: Duration::from_secs(3),
        ..Tuning::default()
    }
}

impl Node {
    fn new(name: &str, port: u16, seeds: Vec<String>) -> Node {
        Node {
            name: name.into(),
            port,
            dir: TempDir::new().expect("tempdir"),
            applier: Arc::new(KvApplier::default()),
            seeds,
            secret: "cookie".into(),
            tuning: test_tuning(),
            tls: None,
            cluster: None,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn options(&self) -> ClusterOptions {
        ClusterOptions {
            cluster_name: "test".into(),
            node_name: self.name.clone(),
            listen: ([127, 0, 0, 1], self.port).into(),
            advertise: self.addr(),
            seed_nodes: self.seeds.clone(),
            secret: self.secret.clone(),
            data_dir: self.dir.path().join("cluster"),
            tuning: self.tuning.clone(),
            tls: self.tls.clone(),
        }
    }

    /// Starts (or restarts) the node; the applier is kept, like a broker's
    /// persistent store.
    async fn start(&mut self) {
        let cluster = Cluster::start(self.options(), self.applier.clone())
            .await
            .expect("start");
        self.cluster = Some(cluster);
    }

    async fn stop(&mut self) {
        if let Some(c) = self.cluster.take() {
            c.shutdown().await;
        }
    }

    fn c(&self) -> &Cluster {
        self.cluster.as_ref().expect("node running")
    }

    fn voters(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .c()
            .status()
            .members
            .into_iter()
            .filter(|m| m.voter)
            .map(|m| m.name)
            .collect();
        v.sort();
        v
    }
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Proposes until it works (e.g. while an election is under way).
async fn propose_eventually(c: &Cluster, cmd: &str, timeout: Duration) -> Vec<u8> {
    let start = Instant::now();
    loop {
        match c.propose(cmd.as_bytes().to_vec()).await {
            Ok(r) => return r,
            Err(e) => assert!(start.elapsed() < timeout, "propose {cmd} kept failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three nodes started at once with every node's address as seeds.
async fn three_nodes(tuning: Tuning) -> Vec<Node> {
    three_nodes_with(tuning, |_| None).await
}

/// Three nodes as [`three_nodes`], node `i` with TLS `tls(i)`.
async fn three_nodes_with(
    tuning: Tuning,
    tls: impl Fn(usize) -> Option<tls::NodeTls>,
) -> Vec<Node> {
    init_tracing();
    let ports = [free_port(), free_port(), free_port()];
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .zip(ports)
        .enumerate()
        .map(|(i, (name, port))| {
            let mut n = Node::new(name, port, seeds.clone());
            n.tuning = tuning.clone();
            n.tls = tls(i);
            n
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start().await;
    }
    let all = vec!["n1".to_string(), "n2".into(), "n3".into()];
    wait_until("three voters", Duration::from_secs(30), || {
        nodes
            .iter()
            .all(|n| n.voters() == all && n.c().status().leader.is_some())
    })
    .await;
    nodes
}

fn leader_index(nodes: &[Node]) -> usize {
    let leader = nodes
        .iter()
        .find_map(|n| n.cluster.as_ref().and_then(|c| c.status().leader))
        .expect("a leader");
    nodes
        .iter()
        .position(|n| n.name == leader)
        .expect("leader is a node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_nodes_form_and_follower_propose_applies_everywhere() {
    let mut nodes = three_nodes(test_tuning()).await;
    let leader = leader_index(&nodes);
    let follower = (leader + 1) % 3;
    let reply = nodes[follower]
        .c()
        .propose(b"k1=v1".to_vec())
        .await
        .expect("propose");
    assert!(reply.is_empty());
    // Applied on the proposer before propose returned.
    assert_eq!(nodes[follower].applier.get("k1").as_deref(), Some("v1"));
    wait_until("k1 everywhere", Duration::from_secs(5), || {
        nodes
            .iter()
            .all(|n| n.applier.get("k1").as_deref() == Some("v1"))
    })
    .await;
    // The reply is the leader's apply result: the previous value.
    let reply = nodes[leader]
        .c()
        .propose(b"k1=v2".to_vec())
        .await
        .expect("propose");
    assert_eq!(reply, b"v1");
    let status = nodes[0].c().status();
    assert_eq!(status.cluster_name, "test");
    assert_eq!(status.members.len(), 3);
    wait_until("all reachable", Duration::from_secs(5), || {
        nodes[0].c().status().members.iter().all(|m| m.reachable)
    })
    .await;
    assert!(serde_json::to_string(&status).is_ok());
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_majority_needed_and_recovery() {
    let mut nodes = three_nodes(test_tuning()).await;
    // Take the leader down: the two others elect a new one.
    let leader = leader_index(&nodes);
    nodes[leader].stop().await;
    let alive: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    propose_eventually(nodes[alive[0]].c(), "a=1", Duration::from_secs(15)).await;
    // Two of three down: fails, in bounded time.
    nodes[alive[1]].stop().await;
    let start = Instant::now();
    let err = nodes[alive[0]]
        .c()
        .propose(b"b=2".to_vec())
        .await
        .expect_err("no quorum");
    let took = start.elapsed();
    assert!(
        matches!(err, ClusterError::NoQuorum | ClusterError::Timeout),
        "unexpected error {err}"
    );
    assert!(took < Duration::from_secs(8), "propose took {took:?}");
    // One comes back: proposes work again.
    nodes[alive[1]].start().await;
    propose_eventually(nodes[alive[0]].c(), "c=3", Duration::from_secs(20)).await;
    wait_until("c on the restarted node", Duration::from_secs(10), || {
        nodes[alive[1]].applier.get("c").as_deref() == Some("3")
    })
    .await;
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_restarted_node_catches_up_from_log_then_snapshot() {
    let tuning = Tuning {
        snapshot_every: 10,
        keep_after_snapshot: 0,
        ..test_tuning()
    };
    let mut nodes = three_nodes(tuning).await;
    let leader = leader_index(&nodes);
    let down = (leader + 2) % 3;
    let up = (leader + 1) % 3;

    // From the log: a few entries, fewer than a snapshot's worth.
    nodes[down].stop().await;
    for i in 0..3 {
        propose_eventually(nodes[up].c(), &format!("log{i}=x"), Duration::from_secs(10)).await;
    }
    nodes[down].start().await;
    wait_until("log entries caught up", Duration::from_secs(15), || {
        (0..3).all(|i| nodes[down].applier.get(&format!("log{i}")).is_some())
    })
    .await;

    // Down across a snapshot and a purge: caught up by installing a snapshot.
    nodes[down].stop().await;
    for i in 0..40 {
        propose_eventually(
            nodes[up].c(),
            &format!("snap{i}={i}"),
            Duration::from_secs(10),
        )
        .await;
    }
    let leader_raft = nodes[leader].c().inner.raft();
    let down_applied = {
        let probe = &nodes[up].c().inner.raft();
        let m = probe.metrics();
        let v = m.borrow().last_applied.map(|l| l.index);
        v
    };
    wait_until("leader purged its log", Duration::from_secs(10), || {
        let m = leader_raft.metrics();
        let purged = m.borrow().purged.map(|l| l.index);
        purged.is_some() && purged >= down_applied.map(|i| i.saturating_sub(20))
    })
    .await;
    let installs_before = nodes[down].applier.installs.load(Ordering::SeqCst);
    nodes[down].start().await;
    wait_until("snapshot caught up", Duration::from_secs(20), || {
        (0..40).all(|i| {
            nodes[down].applier.get(&format!("snap{i}")).as_deref() == Some(i.to_string().as_str())
        })
    })
    .await;
    assert!(
        nodes[down].applier.installs.load(Ordering::SeqCst) > installs_before,
        "expected a snapshot install"
    );
    // Earlier keys survive the snapshot install.
    assert_eq!(nodes[down].applier.get("log0").as_deref(), Some("x"));
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_wrong_secret_cannot_join() {
    init_tracing();
    let mut n1 = Node::new("n1", free_port(), vec![]);
    n1.start().await;
    propose_eventually(n1.c(), "x=1", Duration::from_secs(10)).await;
    let mut bad = Node::new("n2", free_port(), vec![]);
    bad.secret = "not-the-cookie".into();
    bad.start().await;
    let err = bad.c().join(&n1.addr()).await.expect_err("must be refused");
    assert!(
        matches!(err, ClusterError::Refused(_)),
        "unexpected error {err}"
    );
    assert!(
        err.to_string().contains("secret"),
        "error should say why: {err}"
    );
    // Also with seeds: it never gets in.
    let mut bad2 = Node::new("n0", free_port(), vec![n1.addr()]);
    bad2.secret = "wrong".into();
    bad2.start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(n1.voters(), vec!["n1".to_string()]);
    assert_eq!(n1.c().status().members.len(), 1);
    n1.stop().await;
    bad.stop().await;
    bad2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_leave_and_forget() {
    let mut nodes = three_nodes(test_tuning()).await;
    // n3 is down for good: forget it from n1.
    nodes[2].stop().await;
    let start = Instant::now();
    loop {
        match nodes[0].c().forget("n3").await {
            Ok(()) => break,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(20),
                "forget failed: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let two = vec!["n1".to_string(), "n2".into()];
    wait_until("n3 forgotten", Duration::from_secs(10), || {
        nodes[0].voters() == two && nodes[1].voters() == two
    })
    .await;
    assert_eq!(nodes[0].c().status().members.len(), 2);
    assert!(nodes[0].c().forget("nope").await.is_err());
    assert!(nodes[0].c().forget("n1").await.is_err());
    // n2 leaves.
    nodes[1].c().leave().await.expect("leave");
    assert_eq!(nodes[1].c().status().state, "left");
    assert_eq!(
        nodes[1].c().propose(b"q=1".to_vec()).await,
        Err(ClusterError::NotMember)
    );
    wait_until("n2 gone", Duration::from_secs(10), || {
        nodes[0].voters() == vec!["n1".to_string()]
    })
    .await;
    propose_eventually(nodes[0].c(), "alone=1", Duration::from_secs(10)).await;
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_single_node_without_seeds() {
    init_tracing();
    let mut n = Node::new("solo", free_port(), vec![]);
    n.start().await;
    let reply = n
        .c()
        .propose(b"k=v".to_vec())
        .await
        .expect("propose right after start");
    assert!(reply.is_empty());
    assert_eq!(n.applier.get("k").as_deref(), Some("v"));
    let status = n.c().status();
    assert_eq!(status.leader.as_deref(), Some("solo"));
    assert_eq!(status.state, "leader");
    // Restart: no re-initialization, the state is there.
    n.stop().await;
    n.start().await;
    let reply = n
        .c()
        .propose(b"k=w".to_vec())
        .await
        .expect("propose after restart");
    assert_eq!(reply, b"v");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_standalone_node_joins_with_join_call() {
    init_tracing();
    let mut n1 = Node::new("n1", free_port(), vec![]);
    n1.start().await;
    propose_eventually(n1.c(), "a=1", Duration::from_secs(10)).await;
    let mut n2 = Node::new("n2", free_port(), vec![]);
    n2.start().await;
    n2.c().join(&n1.addr()).await.expect("join");
    let two = vec!["n1".to_string(), "n2".into()];
    wait_until("two voters", Duration::from_secs(10), || n1.voters() == two).await;
    n2.c()
        .propose(b"b=2".to_vec())
        .await
        .expect("propose on joined node");
    wait_until("a on n2", Duration::from_secs(10), || {
        n2.applier.get("a").is_some()
    })
    .await;
    n1.stop().await;
    n2.stop().await;
}

/// A peer that sends garbage or a huge length gets disconnected; the node
/// keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_garbage_peer_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let mut n = Node::new("solo", free_port(), vec![]);
    n.start().await;
    for payload in [
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        vec![0, 0, 0, 3, 9, 9, 9],
    ] {
        let mut s = tokio::net::TcpStream::connect(n.addr())
            .await
            .expect("connect");
        s.write_all(&payload).await.expect("write");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "expected a disconnect, got {read:?}"
        );
    }
    n.c().propose(b"still=ok".to_vec()).await.expect("propose");
    n.stop().await;
}

/// A test CA (in its own tempdir) signing node certificates.
struct TestCa {
    dir: TempDir,
    ca_file: std::path::PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = TempDir::new().expect("tempdir");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA cert");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).expect("write CA");
        TestCa {
            dir,
            ca_file,
            issuer: Issuer::new(params, key),
        }
    }

    /// A node's TLS: a certificate for `name` (a DNS name that is not the
    /// address the node is dialed at: names are not checked), signed by
    /// this CA, checked against `ca_file`.
    fn node_tls(&self, name: &str, ca_file: &std::path::Path) -> tls::NodeTls {
        let key = rcgen::KeyPair::generate().expect("node key");
        let mut params =
            rcgen::CertificateParams::new(vec![format!("{name}.cluster.test")]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("node cert");
        let cert_file = self.dir.path().join(format!("{name}.pem"));
        let key_file = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        tls::NodeTls::load(&cert_file, &key_file, ca_file).expect("node TLS")
    }

    fn tls(&self, name: &str) -> tls::NodeTls {
        self.node_tls(name, &self.ca_file)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i_three_nodes_form_over_tls() {
    let ca = TestCa::new("cluster CA");
    let mut nodes = three_nodes_with(test_tuning(), |i| Some(ca.tls(&format!("n{}", i + 1)))).await;
    let leader = leader_index(&nodes);
    let follower = (leader + 1) % 3;
    propose_eventually(nodes[follower].c(), "tls=yes", Duration::from_secs(10)).await;
    wait_until("replicated over TLS", Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| n.applier.get("tls").as_deref() == Some("yes"))
    })
    .await;
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

/// TLS on one side only, either way round, or a certificate from another
/// CA: refused (with a warning) rather than hanging, and the node stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j_plain_or_foreign_node_cannot_join_tls_cluster() {
    init_tracing();
    let ca = TestCa::new("cluster CA");
    let mut n1 = Node::new("n1", free_port(), vec![]);
    n1.tls = Some(ca.tls("n1"));
    n1.start().await;
    propose_eventually(n1.c(), "x=1", Duration::from_secs(10)).await;

    // A plain node dialing the TLS node.
    let mut plain = Node::new("n2", free_port(), vec![]);
    plain.start().await;
    let started = Instant::now();
    let err = plain
        .c()
        .join(&n1.addr())
        .await
        .expect_err("plain node must be refused");
    assert!(started.elapsed() < Duration::from_secs(10), "took too long");
    assert!(
        matches!(err, ClusterError::Refused(_)),
        "unexpected error {err}"
    );
    assert!(
        err.to_string().contains("TLS"),
        "error should say why: {err}"
    );

    // The TLS node dialing a plain node.
    let started = Instant::now();
    let err = n1
        .c()
        .join(&plain.addr())
        .await
        .expect_err("TLS node must not get into a plain node");
    assert!(started.elapsed() < Duration::from_secs(10), "took too long");
    assert!(
        matches!(err, ClusterError::Refused(_)),
        "unexpected error {err}"
    );
    assert!(
        err.to_string().contains("TLS"),
        "error should say why: {err}"
    );

    // A TLS node whose certificate another CA signed (it trusts ours, so
    // it is the cluster node that refuses it).
    let other = TestCa::new("other CA");
    let mut foreign = Node::new("n3", free_port(), vec![]);
    foreign.tls = Some(other.node_tls("n3", &ca.ca_file));
    foreign.start().await;
    let err = foreign
        .c()
        .join(&n1.addr())
        .await
        .expect_err("foreign certificate must be refused");
    assert!(
        matches!(err, ClusterError::Refused(_)),
        "unexpected error {err}"
    );

    // And with seeds: neither ever gets in.
    let mut plain2 = Node::new("n0", free_port(), vec![n1.addr()]);
    plain2.start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(n1.voters(), vec!["n1".to_string()]);
    assert_eq!(n1.c().status().members.len(), 1);
    n1.c().propose(b"still=ok".to_vec()).await.expect("propose");
    for n in [&mut n1, &mut plain, &mut foreign, &mut plain2] {
        n.stop().await;
    }
}

#[test]
fn k_cluster_tls_needs_the_tls_files() {
    let mut config = crate::config::Config::default();
    assert!(config
        .cluster
        .tls_files(&config.tls)
        .expect("off")
        .is_none());
    config.cluster.tls = true;
    config.tls.cert_file = "node.pem".into();
    config.tls.key_file = "node.key".into();
    let err = config
        .cluster
        .tls_files(&config.tls)
        .expect_err("no CA")
        .to_string();
    assert!(err.contains("tls.ca_file"), "{err}");
    config.tls.ca_file = Some("ca.pem".into());
    let files = config.cluster.tls_files(&config.tls).expect("complete");
    assert!(files.is_some());
    let err = tls::NodeTls::load(
        std::path::Path::new("/nonexistent/node.pem"),
        std::path::Path::new("/nonexistent/node.key"),
        std::path::Path::new("/nonexistent/ca.pem"),
    )
    .expect_err("no files")
    .to_string();
    assert!(err.contains("tls.cert_file"), "{err}");
}
