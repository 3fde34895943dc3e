//! A real three-node cluster: each broker process in its own network
//! namespace (`crate::netns`), faults injected from outside (SIGKILL, a
//! cluster link taken down). What is checked is what clients see over AMQP
//! and the management API of each node.
//!
//! Needs root and iproute2, as CI has; elsewhere each test says so and
//! returns.

use crate::netns::{self, Net, AMQP_PORT, CLUSTER_PORT, MGMT_PORT};
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use std::time::Duration;
use tempfile::TempDir;

const SECRET: &str = "cluster-test-secret";

/// Brokers in namespaces, with their data dirs.
struct Nodes {
    net: Net,
    dirs: Vec<TempDir>,
    http: reqwest::Client,
    /// Per node: extra settings (e.g. a wrong secret).
    extra: Vec<Vec<(String, String)>>,
}

fn skip() -> bool {
    if netns::available() {
        return false;
    }
    // CI has both (.ci/run installs iproute2 and runs as root): there a
    // missing prerequisite is a failure, not a skip.
    assert!(
        std::env::var_os("CI").is_none(),
        "the cluster tests need root and iproute2 (ip, tc) under CI"
    );
    eprintln!("skipped: needs root and iproute2 (network namespaces)");
    true
}

impl Nodes {
    /// `count` namespaces; nothing started yet.
    fn new(count: usize) -> Nodes {
        Nodes {
            net: Net::new(count),
            dirs: (0..count)
                .map(|_| tempfile::tempdir().expect("tempdir"))
                .collect(),
            http: reqwest::Client::new(),
            extra: vec![Vec::new(); count],
        }
    }

    fn seeds(&self) -> String {
        self.net
            .nodes
            .iter()
            .map(|n| format!("{}:{CLUSTER_PORT}", n.cluster_addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `i` with every node as a seed (`seeds: false`: alone).
    async fn start(&mut self, i: usize, seeds: bool) {
        let addr = self.net.nodes[i].cluster_addr;
        let mut env: Vec<(String, String)> = [
            ("BROKER__AMQP__BIND", "0.0.0.0".to_string()),
            ("BROKER__AMQP__PORT", AMQP_PORT.to_string()),
            ("BROKER__MANAGEMENT__BIND", "0.0.0.0".to_string()),
            ("BROKER__MANAGEMENT__PORT", MGMT_PORT.to_string()),
            ("BROKER__PROMETHEUS__PORT", "0".to_string()),
            // guest may log in from the test's address.
            ("BROKER__AUTH__LOOPBACK_USERS", "nobody".to_string()),
            (
                "BROKER__STORAGE__DATA_DIR",
                self.dirs[i].path().display().to_string(),
            ),
            ("BROKER__CLUSTER__ENABLED", "true".to_string()),
            ("BROKER__CLUSTER__NODE_NAME", format!("broker@n{i}")),
            ("BROKER__CLUSTER__LISTEN", format!("{addr}:{CLUSTER_PORT}")),
            (
                "BROKER__CLUSTER__ADVERTISE",
                format!("{addr}:{CLUSTER_PORT}"),
            ),
            ("BROKER__CLUSTER__SECRET", SECRET.to_string()),
            ("RUST_LOG", "warn,broker::cluster=info".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if seeds {
            env.push(("BROKER__CLUSTER__SEED_NODES".into(), self.seeds()));
        }
        env.extend(self.extra[i].iter().cloned());
        self.net.spawn(i, env!("CARGO_BIN_EXE_broker"), &[], &env);
        assert!(
            self.net
                .wait_listening(i, MGMT_PORT, Duration::from_secs(20))
                .await,
            "node {i} did not start"
        );
    }

    fn api(&self, i: usize, path: &str) -> String {
        format!(
            "http://{}:{MGMT_PORT}/api{path}",
            self.net.nodes[i].client_addr
        )
    }

    fn amqp_url(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@{}:{AMQP_PORT}/%2f",
            self.net.nodes[i].client_addr
        )
    }

    async fn get(&self, i: usize, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.api(i, path))
            .basic_auth("guest", Some("guest"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn put(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .put(self.api(i, path))
            .basic_auth("guest", Some("guest"))
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("PUT");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.api(i, path))
            .basic_auth("guest", Some("guest"))
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Node `i`'s view: (leader, names of voting members).
    async fn view(&self, i: usize) -> (Option<String>, Vec<String>) {
        let (_, status) = self.get(i, "/cluster").await;
        let leader = status["leader"].as_str().map(String::from);
        let mut voters: Vec<String> = status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["voter"] == true)
            .filter_map(|m| m["name"].as_str().map(String::from))
            .collect();
        voters.sort();
        (leader, voters)
    }

    /// Waits until every node in `nodes` reports the same leader and
    /// exactly `members` as voters.
    async fn formed(&self, nodes: &[usize], members: &[&str]) {
        let want: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        let mut last = Vec::new();
        for _ in 0..200 {
            let mut views = Vec::new();
            for &i in nodes {
                views.push(self.view(i).await);
            }
            let leader = &views[0].0;
            if leader.is_some() && views.iter().all(|(l, v)| l == leader && *v == want) {
                return;
            }
            last = views;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cluster did not form as {want:?}; views: {last:?}");
    }

    /// Names of the exchanges declared on node `i` (not the predeclared).
    async fn exchanges(&self, i: usize) -> Vec<String> {
        let (status, list) = self.get(i, "/exchanges/%2F").await;
        assert_eq!(status, 200, "{list}");
        let mut names: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["name"].as_str().map(String::from))
            .filter(|n| !n.is_empty() && !n.starts_with("amq."))
            .collect();
        names.sort();
        names
    }

    /// Waits until node `i` has exactly `want` declared exchanges.
    async fn exchanges_become(&self, i: usize, want: &[&str]) {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        let mut seen = Vec::new();
        for _ in 0..150 {
            seen = self.exchanges(i).await;
            if seen == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {i} has exchanges {seen:?}, expected {want:?}");
    }

    async fn connect(&self, i: usize) -> Connection {
        Connection::connect(&self.amqp_url(i), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to node {i}: {e}"))
    }
}

async fn declare(conn: &Connection, name: &str, kind: ExchangeKind) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

const ALL: [&str; 3] = ["broker@n0", "broker@n1", "broker@n2"];

async fn three_nodes() -> Nodes {
    let mut nodes = Nodes::new(3);
    for i in 0..3 {
        nodes.start(i, true).await;
    }
    nodes.formed(&[0, 1, 2], &ALL).await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_from_config_and_share_definitions() {
    if skip() {
        return;
    }
    let nodes = three_nodes().await;
    // An exchange declared over AMQP on one node is on every node.
    let conn = nodes.connect(0).await;
    declare(&conn, "orders", ExchangeKind::Topic)
        .await
        .expect("declare on node 0");
    for i in 0..3 {
        nodes.exchanges_become(i, &["orders"]).await;
    }
    // Its definition is the same everywhere: an inequivalent redeclare on
    // another node is refused with RabbitMQ's 406 and text.
    let other = nodes.connect(2).await;
    let err = declare(&other, "orders", ExchangeKind::Direct)
        .await
        .expect_err("inequivalent redeclare on node 2");
    let text = err.to_string();
    assert!(
        text.contains("PRECONDITION_FAILED")
            && text.contains(
                "inequivalent arg 'type' for exchange 'orders' in vhost '/': received 'direct' but current is 'topic'"
            ),
        "{text}"
    );
    // A user made through one node's API logs in on another node.
    let (status, body) = nodes
        .put(
            1,
            "/users/carol",
            serde_json::json!({"password": "pw", "tags": ""}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = nodes
        .put(
            1,
            "/permissions/%2F/carol",
            serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let url = format!(
        "amqp://carol:pw@{}:{AMQP_PORT}/%2f",
        nodes.net.nodes[2].client_addr
    );
    let mut login = None;
    for _ in 0..50 {
        login = Some(Connection::connect(&url, ConnectionProperties::default()).await);
        if login.as_ref().is_some_and(|l| l.is_ok()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        login.is_some_and(|l| l.is_ok()),
        "carol cannot log in on node 2"
    );
    // So does a policy.
    let (status, body) = nodes
        .put(
            0,
            "/policies/%2F/short-lived",
            serde_json::json!({"pattern": "^tmp", "definition": {"message-ttl": 1000}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut seen = 0;
    for _ in 0..50 {
        seen = nodes.get(2, "/policies/%2F/short-lived").await.0;
        if seen == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 200, "the policy did not reach node 2");
    // /api/nodes lists all three, running (once each has answered a ping).
    let mut running = Vec::new();
    for _ in 0..50 {
        let (_, list) = nodes.get(1, "/nodes").await;
        running = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["running"] == true)
            .filter_map(|n| n["name"].as_str().map(String::from))
            .collect();
        running.sort();
        if running == ALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(running, ALL);
    // Each node reports itself: node 1's list has node 2's own figures.
    let (_, list) = nodes.get(1, "/nodes").await;
    let n2 = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == "broker@n2")
        .cloned()
        .unwrap_or_default();
    assert!(
        n2["mem_used"].as_u64().is_some_and(|m| m > 0)
            && n2["uptime"].as_u64().is_some()
            && n2["fd_used"].as_u64().is_some_and(|f| f > 0)
            && n2["disk_free"].as_u64().is_some_and(|d| d > 0)
            && n2["mem_alarm"] == false,
        "{n2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_refuses_changes_and_catches_up_after_the_heal() {
    if skip() {
        return;
    }
    let nodes = three_nodes().await;
    let cut_off = nodes.connect(2).await;
    nodes.net.partition(2);
    // The majority side goes on: a declare on node 0 commits.
    let majority = nodes.connect(0).await;
    declare(&majority, "while-cut", ExchangeKind::Fanout)
        .await
        .expect("declare on the majority side");
    nodes.exchanges_become(1, &["while-cut"]).await;
    // The cut-off node refuses: RabbitMQ's (Khepri's) connection error.
    let err = declare(&cut_off, "lost", ExchangeKind::Fanout)
        .await
        .expect_err("a declare on the cut-off node must fail");
    let text = err.to_string();
    assert!(
        text.contains("INTERNAL_ERROR")
            && text.contains(
                "failed to declare exchange 'lost' in vhost '/' because the operation timed out"
            ),
        "{text}"
    );
    // It still answers what it can: its management API, with what it had.
    assert_eq!(nodes.exchanges(2).await, Vec::<String>::new());
    // And it reports the partition: the others in its own node entry.
    let (_, list) = nodes.get(2, "/nodes/broker@n2").await;
    let mut partitions: Vec<&str> = list["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    partitions.sort();
    assert_eq!(partitions, ["broker@n0", "broker@n1"], "{list}");
    // Past the refused change's deadline: held up in the partition, it
    // must not take effect when the link comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes.net.heal(2);
    // After the heal: no divergence, every node has exactly the committed
    // change, and the cluster is whole again.
    for i in 0..3 {
        nodes.exchanges_become(i, &["while-cut"]).await;
    }
    nodes.formed(&[0, 1, 2], &ALL).await;
    let conn = nodes.connect(2).await;
    declare(&conn, "after-heal", ExchangeKind::Direct)
        .await
        .expect("declare on the healed node");
    for i in 0..3 {
        nodes
            .exchanges_become(i, &["after-heal", "while-cut"])
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_restarts_and_catches_up_while_the_others_go_on() {
    if skip() {
        return;
    }
    let mut nodes = Nodes::new(3);
    // Small snapshots: the restarted node must also catch up from one.
    for extra in &mut nodes.extra {
        extra.push(("BROKER__CLUSTER__SNAPSHOT_EVERY".into(), "10".into()));
    }
    for i in 0..3 {
        nodes.start(i, true).await;
    }
    nodes.formed(&[0, 1, 2], &ALL).await;
    nodes.net.kill(1);
    // One node of three down: declares still commit.
    let conn = nodes.connect(0).await;
    let mut names = Vec::new();
    for n in 0..30 {
        let name = format!("x{n:02}");
        declare(&conn, &name, ExchangeKind::Direct)
            .await
            .unwrap_or_else(|e| panic!("declare {name} with a node down: {e}"));
        names.push(name);
    }
    let want: Vec<&str> = names.iter().map(String::as_str).collect();
    nodes.exchanges_become(2, &want).await;
    nodes.start(1, true).await;
    nodes.exchanges_become(1, &want).await;
    nodes.formed(&[0, 1, 2], &ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_cannot_join() {
    if skip() {
        return;
    }
    let mut nodes = Nodes::new(3);
    nodes.extra[2].push(("BROKER__CLUSTER__SECRET".into(), "not-the-secret".into()));
    for i in 0..3 {
        nodes.start(i, true).await;
    }
    nodes.formed(&[0, 1], &["broker@n0", "broker@n1"]).await;
    // The good nodes work together; the impostor never becomes a member.
    let conn = nodes.connect(0).await;
    declare(&conn, "private", ExchangeKind::Direct)
        .await
        .expect("declare");
    nodes.exchanges_become(1, &["private"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..2 {
        let (_, members) = nodes.view(i).await;
        assert_eq!(members, ["broker@n0", "broker@n1"]);
    }
    assert_eq!(nodes.exchanges(2).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_the_cli_and_gets_what_was_declared_before() {
    if skip() {
        return;
    }
    let mut nodes = Nodes::new(2);
    nodes.start(0, false).await;
    nodes.start(1, false).await;
    nodes.formed(&[0], &["broker@n0"]).await;
    let conn = nodes.connect(0).await;
    declare(&conn, "before-join", ExchangeKind::Topic)
        .await
        .expect("declare on node 0 alone");
    // `broker cluster join` on node 1 (inside its namespace, against its
    // own management API).
    let seed = format!("{}:{CLUSTER_PORT}", nodes.net.nodes[0].cluster_addr);
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &nodes.net.nodes[1].ns])
        .arg(env!("CARGO_BIN_EXE_broker"))
        .args([
            "cluster",
            "join",
            &seed,
            "--api-port",
            &MGMT_PORT.to_string(),
        ])
        .env("BROKER__STORAGE__DATA_DIR", nodes.dirs[1].path())
        .output()
        .expect("run broker cluster join");
    assert!(
        output.status.success(),
        "join failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    nodes.formed(&[0, 1], &["broker@n0", "broker@n1"]).await;
    nodes.exchanges_become(1, &["before-join"]).await;
    // `broker cluster status` prints both members.
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &nodes.net.nodes[1].ns])
        .arg(env!("CARGO_BIN_EXE_broker"))
        .args(["cluster", "status", "--api-port", &MGMT_PORT.to_string()])
        .env("BROKER__STORAGE__DATA_DIR", nodes.dirs[1].path())
        .output()
        .expect("run broker cluster status");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("broker@n0") && stdout.contains("broker@n1"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_rejoins_as_a_follower() {
    if skip() {
        return;
    }
    let nodes = three_nodes().await;
    let (leader, _) = nodes.view(0).await;
    let leader = leader.expect("a leader");
    let index = ALL
        .iter()
        .position(|n| *n == leader)
        .expect("leader is a member");
    let others: Vec<usize> = (0..3).filter(|i| *i != index).collect();
    // SIGSTOP for longer than the election timeout (1-2 s).
    nodes.net.pause(index);
    let mut new_leader = None;
    for _ in 0..100 {
        let (l, _) = nodes.view(others[0]).await;
        if l.as_ref().is_some_and(|l| *l != leader) {
            new_leader = l;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        new_leader.is_some(),
        "no new leader while {leader} is paused"
    );
    let conn = nodes.connect(others[1]).await;
    declare(&conn, "during-pause", ExchangeKind::Headers)
        .await
        .expect("declare while the old leader is paused");
    nodes.net.resume(index);
    // It comes back as a follower of the new leader and has the change.
    nodes.exchanges_become(index, &["during-pause"]).await;
    nodes.formed(&[0, 1, 2], &ALL).await;
    assert_ne!(nodes.view(index).await.0, Some(leader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_commit_over_a_slow_lossy_link_and_a_node_stops_cleanly() {
    if skip() {
        return;
    }
    let mut nodes = three_nodes().await;
    // 30 ms each way with jitter and 5 % loss on node 2's cluster link,
    // where the kernel has netem (it is a module some kernels leave out).
    let netem = nodes.net.netem_available();
    if netem {
        nodes.net.netem(2, Some("delay 30ms 10ms loss 5%"));
    } else {
        eprintln!("this kernel has no sch_netem: declares go over a plain link");
    }
    let conn = nodes.connect(2).await;
    let mut names = Vec::new();
    for n in 0..10 {
        let name = format!("slow{n}");
        declare(&conn, &name, ExchangeKind::Fanout)
            .await
            .unwrap_or_else(|e| panic!("declare {name} over the lossy link: {e}"));
        names.push(name);
    }
    let want: Vec<&str> = names.iter().map(String::as_str).collect();
    for i in 0..3 {
        nodes.exchanges_become(i, &want).await;
    }
    if netem {
        nodes.net.netem(2, None);
    }
    // SIGTERM: the node leaves its Raft group's work cleanly and exits 0.
    drop(conn);
    let status = nodes.net.stop(2).expect("node 2 was running");
    assert!(status.success(), "node 2 exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_forgotten_with_the_cli_and_the_rest_go_on() {
    if skip() {
        return;
    }
    let mut nodes = three_nodes().await;
    nodes.net.kill(2);
    // `broker cluster forget` on node 0, against its management API.
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &nodes.net.nodes[0].ns])
        .arg(env!("CARGO_BIN_EXE_broker"))
        .args([
            "cluster",
            "forget",
            "broker@n2",
            "--api-port",
            &MGMT_PORT.to_string(),
        ])
        .env("BROKER__STORAGE__DATA_DIR", nodes.dirs[0].path())
        .output()
        .expect("run broker cluster forget");
    assert!(
        output.status.success(),
        "forget failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    nodes.formed(&[0, 1], &["broker@n0", "broker@n1"]).await;
    // Two members now: both are needed, and both are there.
    let conn = nodes.connect(1).await;
    declare(&conn, "after-forget", ExchangeKind::Direct)
        .await
        .expect("declare with two members");
    nodes.exchanges_become(0, &["after-forget"]).await;
    // Forgetting a node that is not a member is refused, with a reason.
    let response = nodes
        .http
        .delete(nodes.api(0, "/cluster/nodes/broker@nowhere"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    // `broker cluster leave` on node 1: node 0 goes on alone.
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &nodes.net.nodes[1].ns])
        .arg(env!("CARGO_BIN_EXE_broker"))
        .args(["cluster", "leave", "--api-port", &MGMT_PORT.to_string()])
        .env("BROKER__STORAGE__DATA_DIR", nodes.dirs[1].path())
        .output()
        .expect("run broker cluster leave");
    assert!(
        output.status.success(),
        "leave failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    nodes.formed(&[0], &["broker@n0"]).await;
    let conn = nodes.connect(0).await;
    declare(&conn, "alone-now", ExchangeKind::Direct)
        .await
        .expect("declare on the last member");
    nodes
        .exchanges_become(0, &["after-forget", "alone-now"])
        .await;
}

/// Node `i`'s answer to a passive declare of `queue`: its ready count, or
/// the error text (each try on a channel of its own: an error closes it).
async fn passive(nodes: &Nodes, i: usize, queue: &str) -> Result<u32, String> {
    let conn = nodes.connect(i).await;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let result = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .map_err(|e| e.to_string());
    let _ = conn.close(200, "bye".into()).await;
    result
}

/// Node `i`'s answer to a passive declare of `queue`, asked every 100 ms
/// until `done` holds of it, at most `tries` times: the last answer.
async fn passive_until(
    nodes: &Nodes,
    i: usize,
    queue: &str,
    tries: usize,
    done: impl Fn(&Result<u32, String>) -> bool,
) -> Result<u32, String> {
    let mut answer = passive(nodes, i, queue).await;
    for _ in 1..tries {
        if done(&answer) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = passive(nodes, i, queue).await;
    }
    answer
}

/// Publishes `count` persistent messages on `ch` (confirm mode) and
/// returns how many were acked and how many nacked.
async fn publish_confirmed(
    ch: &lapin::Channel,
    exchange: &str,
    key: &str,
    prefix: &str,
    count: usize,
) -> (usize, usize) {
    let mut pending = Vec::new();
    for n in 0..count {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                key.into(),
                lapin::options::BasicPublishOptions::default(),
                format!("{prefix}{n}").as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        pending.push(confirm);
    }
    let (mut acked, mut nacked) = (0, 0);
    for confirm in pending {
        match confirm.await.expect("confirm") {
            lapin::Confirmation::Ack(_) => acked += 1,
            lapin::Confirmation::Nack(_) => nacked += 1,
            other => panic!("unexpected confirm {other:?}"),
        }
    }
    (acked, nacked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_lives_on_its_node_and_takes_what_any_node_routes_to_it() {
    use futures_lite::StreamExt;
    use lapin::options::{
        BasicConsumeOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions, QueuePurgeOptions,
    };
    if skip() {
        return;
    }
    let mut nodes = three_nodes().await;
    // Declared on node 0: it lives there, and every node has it.
    let conn0 = nodes.connect(0).await;
    let ch0 = conn0.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch0.queue_declare("jobs".into(), durable, FieldTable::default())
        .await
        .expect("declare jobs on node 0");
    declare(&conn0, "work", ExchangeKind::Topic)
        .await
        .expect("declare work");
    ch0.queue_bind(
        "jobs".into(),
        "work".into(),
        "job.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    for i in 1..3 {
        let seen = passive_until(&nodes, i, "jobs", 50, |seen| seen.is_ok()).await;
        assert_eq!(seen, Ok(0), "node {i} does not have queue jobs");
        let (status, queue) = nodes.get(i, "/queues/%2F/jobs").await;
        assert_eq!(status, 200, "{queue}");
        assert_eq!(queue["node"], "broker@n0", "{queue}");
    }
    // Published on node 1, through the default exchange and through the
    // binding (made on node 0): every message confirmed once node 0 has it.
    let conn1 = nodes.connect(1).await;
    let ch1 = conn1.create_channel().await.expect("channel");
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    assert_eq!(publish_confirmed(&ch1, "", "jobs", "a", 50).await, (50, 0));
    assert_eq!(
        publish_confirmed(&ch1, "work", "job.x", "b", 50).await,
        (50, 0)
    );
    // Node 2 asks node 0 for the count, over AMQP and in its API.
    assert_eq!(passive(&nodes, 2, "jobs").await, Ok(100));
    let (status, queue) = nodes.get(2, "/queues/%2F/jobs").await;
    assert_eq!(status, 200, "{queue}");
    assert_eq!(
        (queue["messages_ready"].as_u64(), queue["state"].as_str()),
        (Some(100), Some("running")),
        "{queue}"
    );
    let (_, overview) = nodes.get(2, "/overview").await;
    assert_eq!(
        overview["queue_totals"]["messages_ready"].as_u64(),
        Some(100),
        "{overview}"
    );
    // The API's get through node 2, requeued: the first two, still there.
    let (status, got) = nodes
        .post(
            2,
            "/queues/%2F/jobs/get",
            serde_json::json!({"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    let payloads: Vec<&str> = got
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["payload"].as_str())
        .collect();
    assert_eq!(payloads, ["a0", "a1"], "{got}");
    let back = passive_until(&nodes, 0, "jobs", 50, |back| *back == Ok(100)).await;
    assert_eq!(back, Ok(100), "the API's get was not requeued");
    // Consumed on node 0, in publish order.
    let mut consumer = ch0
        .basic_consume(
            "jobs".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume on node 0");
    let mut bodies = Vec::new();
    while bodies.len() < 100 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery in time")
            .expect("consumer open")
            .expect("delivery");
        bodies.push(String::from_utf8_lossy(&delivery.data).to_string());
    }
    let want: Vec<String> = (0..50)
        .map(|n| format!("a{n}"))
        .chain((0..50).map(|n| format!("b{n}")))
        .collect();
    assert_eq!(bodies, want);
    ch0.basic_cancel("c".into(), Default::default())
        .await
        .expect("cancel");
    // Consumed through node 2 with manual acks and a prefetch of 5: the
    // deliveries are relayed from node 0, the acks go back there.
    assert_eq!(publish_confirmed(&ch1, "", "jobs", "r", 30).await, (30, 0));
    let conn2 = nodes.connect(2).await;
    let ch2 = conn2.create_channel().await.expect("channel");
    ch2.basic_qos(5, Default::default()).await.expect("qos");
    let mut relayed = ch2
        .basic_consume(
            "jobs".into(),
            "c2".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume through node 2");
    for n in 0..30 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), relayed.next())
            .await
            .expect("a relayed delivery in time")
            .expect("consumer open")
            .expect("delivery");
        assert_eq!(String::from_utf8_lossy(&delivery.data), format!("r{n}"));
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .expect("ack");
    }
    ch2.basic_cancel("c2".into(), Default::default())
        .await
        .expect("cancel through node 2");
    let left = passive_until(&nodes, 0, "jobs", 50, |left| *left == Ok(0)).await;
    assert_eq!(left, Ok(0), "the acks did not reach node 0");
    // basic.get through node 1, acked.
    assert_eq!(publish_confirmed(&ch1, "", "jobs", "g", 1).await, (1, 0));
    let got = ch1
        .basic_get("jobs".into(), Default::default())
        .await
        .expect("get through node 1")
        .expect("a message");
    assert_eq!(&got.delivery.data[..], b"g0");
    got.delivery
        .ack(lapin::options::BasicAckOptions::default())
        .await
        .expect("ack the get");
    // Unacked through node 2 when its channel closes: back in the queue
    // on node 0, redelivered.
    assert_eq!(publish_confirmed(&ch1, "", "jobs", "c", 3).await, (3, 0));
    let ch3 = conn2.create_channel().await.expect("channel");
    let mut unacked = ch3
        .basic_consume(
            "jobs".into(),
            "c3".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume through node 2");
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), unacked.next())
            .await
            .expect("a delivery in time")
            .expect("consumer open")
            .expect("delivery");
    }
    ch3.close(200, "bye".into()).await.expect("close");
    let back = passive_until(&nodes, 0, "jobs", 50, |back| *back == Ok(3)).await;
    assert_eq!(back, Ok(3), "the unacked messages did not come back");
    // Purged and deleted through other nodes, by node 0.
    let purged = ch2
        .queue_purge("jobs".into(), QueuePurgeOptions::default())
        .await
        .expect("purge through node 2");
    assert_eq!(purged, 3);
    // Unacked through node 2 when node 2 dies: node 0 puts them back.
    assert_eq!(publish_confirmed(&ch1, "", "jobs", "d", 2).await, (2, 0));
    let ch4 = conn2.create_channel().await.expect("channel");
    let mut doomed = ch4
        .basic_consume(
            "jobs".into(),
            "c4".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume through node 2");
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), doomed.next())
            .await
            .expect("a delivery in time")
            .expect("consumer open")
            .expect("delivery");
    }
    assert_eq!(passive(&nodes, 0, "jobs").await, Ok(0));
    nodes.net.kill(2);
    let back = passive_until(&nodes, 0, "jobs", 150, |back| *back == Ok(2)).await;
    assert_eq!(
        back,
        Ok(2),
        "node 0 did not take back what dead node 2 held"
    );
    nodes.start(2, true).await;
    ch1.queue_delete("jobs".into(), QueueDeleteOptions::default())
        .await
        .expect("delete through node 1");
    for i in 0..3 {
        let seen = passive_until(&nodes, i, "jobs", 50, |seen| seen.is_err()).await;
        assert!(
            seen.as_ref().is_err_and(|e| e.contains("NOT_FOUND")),
            "node {i} still has jobs: {seen:?}"
        );
    }
    // The queue's node down: what is confirmed was on its disk, what is
    // routed to it meanwhile is nacked, and a declare says where it lives
    // (RabbitMQ's 404).
    ch0.queue_declare("kept".into(), durable, FieldTable::default())
        .await
        .expect("declare kept on node 0");
    let seen = passive_until(&nodes, 1, "kept", 50, |seen| seen.is_ok()).await;
    assert_eq!(seen, Ok(0));
    assert_eq!(publish_confirmed(&ch1, "", "kept", "k", 20).await, (20, 0));
    ch0.queue_declare("watched".into(), durable, FieldTable::default())
        .await
        .expect("declare watched on node 0");
    let watch_conn = nodes.connect(1).await;
    let mut watcher = None;
    for _ in 0..50 {
        let watch_ch = watch_conn.create_channel().await.expect("channel");
        match watch_ch
            .basic_consume(
                "watched".into(),
                "w".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(consumer) => {
                watcher = Some(consumer);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut watcher = watcher.expect("consume watched through node 1");
    // The relay is in place once a message comes through it.
    assert_eq!(publish_confirmed(&ch1, "", "watched", "w", 1).await, (1, 0));
    let first = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .expect("a relayed delivery in time")
        .expect("consumer open")
        .expect("delivery");
    assert_eq!(&first.data[..], b"w0");
    nodes.net.kill(0);
    // Its consumer through node 1 is cancelled (basic.cancel), as RabbitMQ
    // does when a queue's node goes.
    let end = tokio::time::timeout(Duration::from_secs(15), watcher.next())
        .await
        .expect("the consumer is cancelled in time");
    assert!(end.is_none(), "expected the consumer to end, got {end:?}");
    assert_eq!(publish_confirmed(&ch1, "", "kept", "lost", 3).await, (0, 3));
    let (_, queues) = nodes.get(1, "/queues/%2F").await;
    let kept = queues
        .as_array()
        .into_iter()
        .flatten()
        .find(|q| q["name"] == "kept")
        .cloned()
        .unwrap_or_default();
    assert_eq!(kept["state"], "down", "{kept}");
    let down = passive(&nodes, 1, "kept").await;
    assert!(
        down.as_ref().is_err_and(|e| e.contains(
            "home node 'broker@n0' of durable queue 'kept' in vhost '/' is down or inaccessible"
        )),
        "{down:?}"
    );
    // Back: the 20 confirmed messages are there.
    nodes.start(0, true).await;
    let count = passive_until(&nodes, 1, "kept", 100, |count| count.is_ok()).await;
    assert_eq!(count, Ok(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_works_when_the_requester_and_the_responder_are_on_different_nodes() {
    use futures_lite::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
    if skip() {
        return;
    }
    let nodes = three_nodes().await;
    // The service's queue lives on node 1; its server consumes there.
    let server_conn = nodes.connect(1).await;
    let server = server_conn.create_channel().await.expect("channel");
    server
        .queue_declare(
            "rpc".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare rpc");
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut requests = server
        .basic_consume("rpc".into(), "srv".into(), no_ack, FieldTable::default())
        .await
        .expect("serve rpc");
    // The client is on node 0: its request is forwarded to node 1, and the
    // reply, published on node 1, comes back to node 0.
    let client_conn = nodes.connect(0).await;
    let client = client_conn.create_channel().await.expect("channel");
    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .expect("consume reply-to");
    for n in 0..5 {
        let mut sent = false;
        for _ in 0..50 {
            // The queue's definition reaches node 0 just after its declare.
            let props =
                lapin::BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into());
            client
                .basic_publish(
                    "".into(),
                    "rpc".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    format!("ping{n}").as_bytes(),
                    props,
                )
                .await
                .expect("publish request");
            match tokio::time::timeout(Duration::from_millis(500), requests.next()).await {
                Ok(request) => {
                    let request = request.expect("open").expect("request");
                    assert_eq!(request.data, format!("ping{n}").as_bytes());
                    let reply_to = request
                        .properties
                        .reply_to()
                        .clone()
                        .expect("reply_to")
                        .to_string();
                    server
                        .basic_publish(
                            "".into(),
                            reply_to.as_str().into(),
                            BasicPublishOptions::default(),
                            format!("pong{n}").as_bytes(),
                            lapin::BasicProperties::default(),
                        )
                        .await
                        .expect("publish reply");
                    sent = true;
                    break;
                }
                Err(_) => continue,
            }
        }
        assert!(sent, "request {n} never reached the server");
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("a reply in time")
            .expect("open")
            .expect("reply");
        assert_eq!(reply.data, format!("pong{n}").as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_queues_spread_over_the_nodes() {
    use lapin::options::QueueDeclareOptions;
    if skip() {
        return;
    }
    let nodes = three_nodes().await;
    // Balanced placement picks among the nodes node 0 has heard from.
    let mut running = 0;
    for _ in 0..50 {
        let (_, list) = nodes.get(0, "/nodes").await;
        running = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["running"] == true)
            .count();
        if running == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(running, 3, "node 0 does not see the others running");
    let conn = nodes.connect(0).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut balanced = FieldTable::default();
    balanced.insert(
        "x-queue-leader-locator".into(),
        lapin::types::AMQPValue::LongString("balanced".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for n in 0..6 {
        ch.queue_declare(
            format!("spread{n}").as_str().into(),
            durable,
            balanced.clone(),
        )
        .await
        .expect("declare balanced");
    }
    // Without the argument: the client's node.
    ch.queue_declare("local".into(), durable, FieldTable::default())
        .await
        .expect("declare local");
    let (status, list) = nodes.get(0, "/queues/%2F").await;
    assert_eq!(status, 200, "{list}");
    let mut per_node = std::collections::BTreeMap::new();
    for q in list.as_array().into_iter().flatten() {
        let name = q["name"].as_str().unwrap_or_default();
        let node = q["node"].as_str().unwrap_or_default().to_string();
        if name.starts_with("spread") {
            *per_node.entry(node).or_insert(0) += 1;
        } else if name == "local" {
            assert_eq!(node, "broker@n0", "{q}");
        }
    }
    let want: std::collections::BTreeMap<String, i32> =
        ALL.iter().map(|n| (n.to_string(), 2)).collect();
    assert_eq!(per_node, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_streams_partitions_live_on_its_node_and_are_read_through_another() {
    use futures_lite::StreamExt;
    use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
    if skip() {
        return;
    }
    let nodes = three_nodes().await;
    let conn0 = nodes.connect(0).await;
    let ch0 = conn0.create_channel().await.expect("channel");
    let mut partitions = FieldTable::default();
    partitions.insert("x-partitions".into(), lapin::types::AMQPValue::LongInt(3));
    ch0.exchange_declare(
        "events".into(),
        ExchangeKind::Custom("x-super-stream".into()),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        partitions,
    )
    .await
    .expect("declare super stream on node 0");
    // Every node lists the three partitions, living on node 0.
    for i in 0..3 {
        let mut homes = Vec::new();
        for _ in 0..50 {
            let (_, list) = nodes.get(i, "/queues/%2F").await;
            homes = list
                .as_array()
                .into_iter()
                .flatten()
                .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with("events-")))
                .map(|q| {
                    format!(
                        "{}@{}",
                        q["name"].as_str().unwrap_or_default(),
                        q["node"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            homes.sort();
            if homes.len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            homes,
            [
                "events-0@broker@n0",
                "events-1@broker@n0",
                "events-2@broker@n0"
            ],
            "node {i}"
        );
    }
    // Published through node 1 (routed there by partition key, forwarded
    // to node 0), read from partition 0 through node 2.
    let ch1 = nodes
        .connect(1)
        .await
        .create_channel()
        .await
        .expect("channel");
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut published = 0;
    for n in 0..30 {
        let key = n.to_string();
        let confirm = ch1
            .basic_publish(
                "events".into(),
                key.as_str().into(),
                Default::default(),
                format!("e{n}").as_bytes(),
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
        published += 1;
    }
    assert_eq!(published, 30);
    let mut counted = 0;
    for p in 0..3 {
        counted += passive(&nodes, 0, &format!("events-{p}"))
            .await
            .unwrap_or(0);
    }
    assert_eq!(counted, 30, "the partitions on node 0 hold every message");
    let ch2 = nodes
        .connect(2)
        .await
        .create_channel()
        .await
        .expect("channel");
    ch2.basic_qos(10, Default::default()).await.expect("qos");
    let mut offset = FieldTable::default();
    offset.insert(
        "x-stream-offset".into(),
        lapin::types::AMQPValue::LongString("first".into()),
    );
    let want = passive(&nodes, 0, "events-0").await.expect("events-0");
    let mut reader = ch2
        .basic_consume(
            "events-0".into(),
            "r".into(),
            BasicConsumeOptions::default(),
            offset,
        )
        .await
        .expect("read partition 0 through node 2");
    for _ in 0..want {
        let delivery = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("a stream delivery in time")
            .expect("consumer open")
            .expect("delivery");
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .expect("ack");
    }
    // A consumer group with members on nodes 1 and 2 (the partitions are
    // on node 0): the partitions are split between them, every message is
    // read once, and when one member leaves the other takes over.
    let mut group = FieldTable::default();
    group.insert(
        "x-consumer-group".into(),
        lapin::types::AMQPValue::LongString("g".into()),
    );
    group.insert(
        "x-stream-offset".into(),
        lapin::types::AMQPValue::LongString("first".into()),
    );
    let mut members = Vec::new();
    for i in [1, 2] {
        let ch = nodes
            .connect(i)
            .await
            .create_channel()
            .await
            .expect("channel");
        ch.basic_qos(10, Default::default()).await.expect("qos");
        let consumer = ch
            .basic_consume(
                "events".into(),
                format!("m{i}").as_str().into(),
                BasicConsumeOptions::default(),
                group.clone(),
            )
            .await
            .expect("join the group through another node");
        members.push((ch, consumer));
    }
    let mut seen = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 30 && std::time::Instant::now() < deadline {
        for (m, (_, consumer)) in members.iter_mut().enumerate() {
            if let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
            {
                let body = String::from_utf8_lossy(&delivery.data).to_string();
                assert!(seen.insert(body.clone(), m).is_none(), "{body} read twice");
                delivery
                    .ack(lapin::options::BasicAckOptions::default())
                    .await
                    .expect("ack");
            }
        }
    }
    assert_eq!(seen.len(), 30, "every message read once by the group");
    let by_member: std::collections::BTreeSet<usize> = seen.values().copied().collect();
    assert_eq!(by_member.len(), 2, "both members read: {seen:?}");
    // Member on node 2 leaves: node 1's member gets everything new.
    let (ch2, _) = members.pop().expect("member 2");
    ch2.close(200, "bye".into()).await.expect("close");
    for n in 30..39 {
        let key = n.to_string();
        let confirm = ch1
            .basic_publish(
                "events".into(),
                key.as_str().into(),
                Default::default(),
                format!("e{n}").as_bytes(),
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
    }
    let (_, consumer1) = &mut members[0];
    let mut later = std::collections::BTreeSet::new();
    while later.len() < 9 {
        let delivery = tokio::time::timeout(Duration::from_secs(40), consumer1.next())
            .await
            .expect("the remaining member gets the new messages")
            .expect("open")
            .expect("delivery");
        let body = String::from_utf8_lossy(&delivery.data).to_string();
        if !seen.contains_key(&body) {
            later.insert(body);
        }
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_and_transient_queues_are_known_on_every_node_and_go_with_their_owner() {
    use futures_lite::StreamExt;
    use lapin::options::{
        BasicConsumeOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    };
    if skip() {
        return;
    }
    let mut nodes = three_nodes().await;
    let owner = nodes.connect(0).await;
    let ch0 = owner.create_channel().await.expect("channel");
    declare(&owner, "news", ExchangeKind::Fanout)
        .await
        .expect("declare news");
    // A subscriber's exclusive, server-named queue, and a transient one.
    let private = ch0
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exclusive")
        .name()
        .to_string();
    let other = nodes.connect(0).await;
    let other_ch = other.create_channel().await.expect("channel");
    other_ch
        .queue_declare(
            "temp".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare transient");
    for queue in [private.as_str(), "temp"] {
        ch0.queue_bind(
            queue.into(),
            "news".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    let mut subscriber = ch0
        .basic_consume(
            private.as_str().into(),
            "sub".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    // Node 1 knows the exclusive queue but may not use it (RabbitMQ's 405).
    let locked = passive(&nodes, 1, &private).await;
    assert!(
        locked
            .as_ref()
            .is_err_and(|e| e.contains("RESOURCE_LOCKED")),
        "{locked:?}"
    );
    // Published on node 1 to the fanout: both queues on node 0 get it.
    let ch1 = nodes
        .connect(1)
        .await
        .create_channel()
        .await
        .expect("channel");
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    assert_eq!(publish_confirmed(&ch1, "news", "", "n", 1).await, (1, 0));
    let delivery = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .expect("the subscriber gets it in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(&delivery.data[..], b"n0");
    assert_eq!(passive(&nodes, 2, "temp").await, Ok(1));
    // The owner's connection closes: its exclusive queue goes everywhere.
    owner.close(200, "bye".into()).await.expect("close");
    let gone = passive_until(&nodes, 1, &private, 50, |gone| {
        gone.as_ref().is_err_and(|e| e.contains("NOT_FOUND"))
    })
    .await;
    assert!(
        gone.as_ref().is_err_and(|e| e.contains("NOT_FOUND")),
        "{gone:?}"
    );
    // The transient queue's node restarts: the queue is gone everywhere.
    nodes.net.kill(0);
    nodes.start(0, true).await;
    let gone = passive_until(&nodes, 2, "temp", 100, |gone| {
        gone.as_ref().is_err_and(|e| e.contains("NOT_FOUND"))
    })
    .await;
    assert!(
        gone.as_ref().is_err_and(|e| e.contains("NOT_FOUND")),
        "{gone:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_without_confirms_is_slowed_down_not_dropped_when_forwarding_backs_up() {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
    if skip() {
        return;
    }
    let nodes = three_nodes().await;
    let ch1 = nodes
        .connect(1)
        .await
        .create_channel()
        .await
        .expect("channel");
    ch1.queue_declare(
        "sink".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare sink on node 1");
    let seen = passive_until(&nodes, 0, "sink", 50, |seen| seen.is_ok()).await;
    assert_eq!(seen, Ok(0));
    // Node 1 stops answering for a while: what node 0 forwards piles up
    // far past the forwarding queue's flow-control mark.
    const COUNT: usize = 150_000;
    let ch0 = nodes
        .connect(0)
        .await
        .create_channel()
        .await
        .expect("channel");
    nodes.net.pause(1);
    let publisher = tokio::spawn(async move {
        let body = vec![b'x'; 16];
        for _ in 0..COUNT {
            ch0.basic_publish(
                "".into(),
                "sink".into(),
                BasicPublishOptions::default(),
                &body,
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish");
        }
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    nodes.net.resume(1);
    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("the publisher finishes once node 1 is back")
        .expect("publisher task");
    // Every message arrived: the publisher was held back, nothing dropped.
    let count = passive_until(&nodes, 1, "sink", 300, |count| *count == Ok(COUNT as u32)).await;
    assert_eq!(count, Ok(COUNT as u32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_consumer_closing_mid_stream_loses_nothing() {
    use futures_lite::StreamExt;
    use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions, QueueDeclareOptions};
    if skip() {
        return;
    }
    let nodes = three_nodes().await;
    let ch0 = nodes
        .connect(0)
        .await
        .create_channel()
        .await
        .expect("channel");
    ch0.queue_declare(
        "busy".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare busy on node 0");
    ch0.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    const COUNT: usize = 2000;
    assert_eq!(
        publish_confirmed(&ch0, "", "busy", "b", COUNT).await,
        (COUNT, 0)
    );
    // Consumers through node 1 that take a few deliveries, ack some, and
    // close their channel while more are on the way, again and again.
    let conn1 = nodes.connect(1).await;
    let mut acked = 0;
    for round in 0..10 {
        let ch = conn1.create_channel().await.expect("channel");
        ch.basic_qos(200, Default::default()).await.expect("qos");
        let mut consumer = ch
            .basic_consume(
                "busy".into(),
                format!("c{round}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume through node 1");
        for n in 0..20 {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("a delivery in time")
                .expect("open")
                .expect("delivery");
            if n % 2 == 0 {
                delivery
                    .ack(lapin::options::BasicAckOptions::default())
                    .await
                    .expect("ack");
                acked += 1;
            }
        }
        ch.close(200, "bye".into()).await.expect("close");
    }
    assert_eq!(acked, 100);
    // Everything not acked is back on node 0, nothing twice, nothing lost.
    let count = passive_until(&nodes, 0, "busy", 100, |count| {
        *count == Ok((COUNT - acked) as u32)
    })
    .await;
    assert_eq!(count, Ok((COUNT - acked) as u32));
    let (_, queue) = nodes.get(0, "/queues/%2F/busy").await;
    assert_eq!(queue["messages_unacknowledged"], 0, "{queue}");
}
