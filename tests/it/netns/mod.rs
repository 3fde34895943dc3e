//! Several broker processes, each in its own network namespace, for
//! cluster tests: a partition is a link taken down, not a port trick.
//!
//! Each node has two links to the host's namespace (where the test runs):
//! - a **cluster link** (`eth0` inside, one end on a bridge shared by all
//!   nodes): node-to-node traffic. `partition`, `delay` and `loss` act here.
//! - a **client link** (`eth1`, point-to-point to the host): the test's
//!   AMQP and HTTP clients. It stays up in a partition, so a test can still
//!   talk to a node that is cut off from the others.
//!
//! Needs root and iproute2 (`ip`, `tc`); `.ci/run` runs as root. Everything
//! made is removed on drop (deleting a namespace deletes its links).

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;

pub const AMQP_PORT: u16 = 5672;
pub const MGMT_PORT: u16 = 15672;
pub const CLUSTER_PORT: u16 = 25672;

/// Whether this machine can run namespace tests (root, `ip` present).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

/// The namespaces, links and bridge of one test, and its broker processes.
pub struct Net {
    id: u32,
    bridge: String,
    pub nodes: Vec<NetNode>,
}

pub struct NetNode {
    /// The namespace's name (`ip netns exec <ns> …`).
    pub ns: String,
    /// Host end of the cluster link (on the bridge).
    cluster_host_if: String,
    /// Host end of the client link.
    client_host_if: String,
    /// The node's address on the cluster network (what peers dial).
    pub cluster_addr: Ipv4Addr,
    /// The node's address on its client link (what tests dial).
    pub client_addr: Ipv4Addr,
    pub process: Option<Child>,
}

impl Net {
    /// `count` namespaces joined by a bridge. Panics when the machine
    /// cannot (check [`available`] first).
    pub fn new(count: usize) -> Net {
        assert!((1..=60).contains(&count), "1 to 60 nodes");
        // Tests run in parallel (processes under nextest): each takes a
        // free id by creating its bridge, which fails if the name is taken.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let seed = std::process::id().wrapping_mul(7) + NEXT.fetch_add(1, Ordering::Relaxed);
        let mut chosen = None;
        for attempt in 0..250 {
            let id = (seed + attempt) % 250 + 1;
            let bridge = format!("bkb{id}");
            if run(&["ip", "link", "add", &bridge, "type", "bridge"]).is_ok() {
                chosen = Some((id, bridge));
                break;
            }
        }
        let (id, bridge) = chosen.expect("no free bridge name bkb1..bkb250");
        let mut net = Net {
            id,
            bridge: bridge.clone(),
            nodes: Vec::new(),
        };
        must(&[
            "ip",
            "addr",
            "add",
            &format!("10.231.{id}.254/24"),
            "dev",
            &bridge,
        ]);
        must(&["ip", "link", "set", &bridge, "up"]);
        for index in 0..count {
            net.add_namespace(index);
        }
        net
    }

    fn add_namespace(&mut self, index: usize) {
        let id = self.id;
        let ns = format!("bk{id}n{index}");
        let _ = run(&["ip", "netns", "del", &ns]);
        must(&["ip", "netns", "add", &ns]);
        let node = NetNode {
            ns: ns.clone(),
            cluster_host_if: format!("bk{id}c{index}"),
            client_host_if: format!("bk{id}a{index}"),
            cluster_addr: Ipv4Addr::new(10, 231, id as u8, index as u8 + 1),
            client_addr: Ipv4Addr::new(10, 232, id as u8, 4 * index as u8 + 2),
            process: None,
        };
        let exec = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", &ns];
            full.extend_from_slice(args);
            must(&full);
        };
        exec(&["ip", "link", "set", "lo", "up"]);
        // Cluster link: eth0 inside, the other end on the bridge.
        let tmp0 = format!("bk{id}t{index}");
        must(&[
            "ip",
            "link",
            "add",
            &node.cluster_host_if,
            "type",
            "veth",
            "peer",
            "name",
            &tmp0,
        ]);
        must(&["ip", "link", "set", &tmp0, "netns", &ns]);
        exec(&["ip", "link", "set", &tmp0, "name", "eth0"]);
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", node.cluster_addr),
            "dev",
            "eth0",
        ]);
        exec(&["ip", "link", "set", "eth0", "up"]);
        must(&[
            "ip",
            "link",
            "set",
            &node.cluster_host_if,
            "master",
            &self.bridge,
        ]);
        must(&["ip", "link", "set", &node.cluster_host_if, "up"]);
        // Client link: eth1 inside, a /30 with the host.
        let tmp1 = format!("bk{id}u{index}");
        let host_addr = Ipv4Addr::new(10, 232, id as u8, 4 * index as u8 + 1);
        must(&[
            "ip",
            "link",
            "add",
            &node.client_host_if,
            "type",
            "veth",
            "peer",
            "name",
            &tmp1,
        ]);
        must(&["ip", "link", "set", &tmp1, "netns", &ns]);
        exec(&["ip", "link", "set", &tmp1, "name", "eth1"]);
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", node.client_addr),
            "dev",
            "eth1",
        ]);
        exec(&["ip", "link", "set", "eth1", "up"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &node.client_host_if,
        ]);
        must(&["ip", "link", "set", &node.client_host_if, "up"]);
        self.nodes.push(node);
    }

    /// Starts `program` (with `args` and `env`) inside node `index`'s
    /// namespace; stdout/stderr to the test's output when TEST_BROKER_LOGS
    /// is set.
    pub fn spawn(&mut self, index: usize, program: &str, args: &[&str], env: &[(String, String)]) {
        let node = &mut self.nodes[index];
        let logs = std::env::var_os("TEST_BROKER_LOGS").is_some();
        let out = || {
            if logs {
                Stdio::inherit()
            } else {
                Stdio::null()
            }
        };
        // `ip netns exec` execs the program after entering the namespace,
        // so the child's pid is the program's (signals reach it).
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns, program])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(out())
            .stderr(out())
            .spawn()
            .expect("start a process in a namespace");
        node.process = Some(child);
    }

    /// Waits until node `index` accepts TCP on its client link at `port`.
    pub async fn wait_listening(&self, index: usize, port: u16, within: Duration) -> bool {
        let addr = (self.nodes[index].client_addr, port);
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn signal(&self, index: usize, signal: &str) {
        if let Some(child) = &self.nodes[index].process {
            must(&["kill", signal, &child.id().to_string()]);
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(&mut self, index: usize) -> Option<std::process::ExitStatus> {
        self.signal(index, "-TERM");
        let mut child = self.nodes[index].process.take()?;
        child.wait().ok()
    }

    pub fn pause(&self, index: usize) {
        self.signal(index, "-STOP");
    }

    pub fn resume(&self, index: usize) {
        self.signal(index, "-CONT");
    }

    /// Cuts node `index` off from the other nodes (its cluster link goes
    /// down); its client link stays up.
    pub fn partition(&self, index: usize) {
        must(&[
            "ip",
            "link",
            "set",
            &self.nodes[index].cluster_host_if,
            "down",
        ]);
    }

    pub fn heal(&self, index: usize) {
        must(&[
            "ip",
            "link",
            "set",
            &self.nodes[index].cluster_host_if,
            "up",
        ]);
    }

    /// Whether this kernel has `tc netem` (sch_netem): tried on node 0's
    /// cluster link and removed again.
    pub fn netem_available(&self) -> bool {
        let dev = &self.nodes[0].cluster_host_if;
        let added = run(&[
            "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms",
        ])
        .is_ok();
        if added {
            let _ = run(&["tc", "qdisc", "del", "dev", dev, "root"]);
        }
        added
    }

    /// `tc netem` on node `index`'s cluster link, both directions, e.g.
    /// `"delay 50ms 10ms loss 5%"`; `None` removes it.
    pub fn netem(&self, index: usize, spec: Option<&str>) {
        let node = &self.nodes[index];
        for (ns, dev) in [
            (None, node.cluster_host_if.as_str()),
            (Some(&node.ns), "eth0"),
        ] {
            let mut args: Vec<&str> = Vec::new();
            if let Some(ns) = ns {
                args.extend(["ip", "netns", "exec", ns]);
            }
            match spec {
                Some(spec) => {
                    args.extend(["tc", "qdisc", "replace", "dev", dev, "root", "netem"]);
                    args.extend(spec.split_whitespace());
                    must(&args);
                }
                None => {
                    args.extend(["tc", "qdisc", "del", "dev", dev, "root"]);
                    let _ = run(&args);
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.process.take() {
                // A paused process must be resumed to die promptly.
                let _ = run(&["kill", "-CONT", &child.id().to_string()]);
                let _ = child.kill();
                let _ = child.wait();
            }
            // Deleting the namespace deletes the links in it and their
            // host ends.
            let _ = run(&["ip", "netns", "del", &node.ns]);
            let _ = run(&["ip", "link", "del", &node.cluster_host_if]);
            let _ = run(&["ip", "link", "del", &node.client_host_if]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
