"""pika against a three-node cluster: failover to another node with a host list.

Clients from other languages against a cluster: a pika ``BlockingConnection``
given a LIST of ``ConnectionParameters`` (one per node) lands on the first
node; when that node is SIGKILLed the client notices, reconnects with the
same list (the reconnect loop pika's documentation recommends) to a
surviving node and carries on there with the replicated definitions.

What the cluster shares (docs/cluster.md): vhosts, users, permissions,
exchanges, policies, durable queues' definitions and their bindings.  A
classic queue lives on the node that declared it, so the dead node's queue
is unavailable until that node is back: after the failover the test
declares a FRESH queue on the surviving node.

The ``pika_cluster`` fixture (in this file, used only here) starts three
real broker processes on loopback:

* binary: ``$BROKER_BIN``, default ``target/release/broker`` (as conftest.py);
* ports: AMQP, management, Prometheus and node-to-node for each node are
  found free by binding port 0 (never inside ``$BROKER_TEST_PORTS``, the
  single-node fixture's range, default 5690-5699);
* data: a fresh temporary directory per node, removed at the end (kept,
  with the node logs, when ``BROKER_KEEP_DATA`` is set);
* logs: ``<workdir>/n<i>.log``; their tails are printed when the test fails.

Every node process is SIGKILLed in the fixture's finalizer.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pika
import pytest

from conftest import _broker_binary, _port_range

HOST = "127.0.0.1"
START_TIMEOUT = 20.0      # a node accepts AMQP connections
FORM_TIMEOUT = 20.0       # three voters and one leader, seen by every node
FAILOVER_TIMEOUT = 15.0   # from the SIGKILL to a new connection on a survivor
N_MESSAGES = 100


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, chosen by the kernel (port 0),
    outside the single-node fixture's range."""
    reserved = set(_port_range())
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            held.append(s)
            port = s.getsockname()[1]
            if port not in reserved:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


class ClusterNode:
    def __init__(self, binary: Path, index: int, workdir: Path, ports: list[int],
                 cluster_name: str, secret: str, seeds: str):
        self.binary = binary
        self.index = index
        self.name = f"pika@n{index}"
        self.amqp_port, self.mgmt_port, self.prom_port, self.cluster_port = ports
        self.workdir = workdir
        self.data_dir = workdir / f"n{index}"
        self.log_path = workdir / f"n{index}.log"
        self.cluster_name = cluster_name
        self.secret = secret
        self.seeds = seeds
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({
            "BROKER__AMQP__BIND": HOST,
            "BROKER__AMQP__PORT": str(self.amqp_port),
            "BROKER__MANAGEMENT__BIND": HOST,
            "BROKER__MANAGEMENT__PORT": str(self.mgmt_port),
            "BROKER__PROMETHEUS__PORT": str(self.prom_port),
            "BROKER__STORAGE__DATA_DIR": str(self.data_dir),
            "BROKER__CLUSTER__ENABLED": "true",
            "BROKER__CLUSTER__NAME": self.cluster_name,
            "BROKER__CLUSTER__NODE_NAME": self.name,
            "BROKER__CLUSTER__LISTEN": f"{HOST}:{self.cluster_port}",
            "BROKER__CLUSTER__ADVERTISE": f"{HOST}:{self.cluster_port}",
            "BROKER__CLUSTER__SEED_NODES": self.seeds,
            "BROKER__CLUSTER__SECRET": self.secret,
        })
        env.setdefault("RUST_LOG", "info")
        return env

    def spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # cwd = workdir so that no ./broker.toml from the repo is picked up.
        self.proc = subprocess.Popen(
            [str(self.binary)], cwd=self.workdir, env=self.env(),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def accepts_amqp(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex((HOST, self.amqp_port)) == 0

    def kill(self) -> None:
        """SIGKILL the node's process group and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def api(self, path: str, timeout: float = 2.0):
        req = urllib.request.Request(f"http://{HOST}:{self.mgmt_port}/api{path}")
        token = base64.b64encode(b"guest:guest").decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def status(self) -> dict | None:
        try:
            return self.api("/cluster")
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def params(self, **kw) -> pika.ConnectionParameters:
        kw.setdefault("heartbeat", 2)
        kw.setdefault("blocked_connection_timeout", 10)
        kw.setdefault("socket_timeout", 2)
        kw.setdefault("stack_timeout", 10)
        return pika.ConnectionParameters(
            host=HOST, port=self.amqp_port, virtual_host="/",
            credentials=pika.PlainCredentials("guest", "guest"), **kw,
        )

    def log_tail(self, n: int = 80) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-n:])


class PikaCluster:
    def __init__(self, binary: Path, workdir: Path):
        ports = _free_ports(12)
        cluster_name = f"pika-{uuid.uuid4().hex[:8]}"
        secret = uuid.uuid4().hex
        seeds = ",".join(f"{HOST}:{ports[4 * i + 3]}" for i in range(3))
        self.workdir = workdir
        self.nodes = [
            ClusterNode(binary, i, workdir, ports[4 * i:4 * i + 4], cluster_name, secret, seeds)
            for i in range(3)
        ]

    def start(self) -> None:
        for node in self.nodes:
            node.spawn()
        deadline = time.monotonic() + START_TIMEOUT
        for node in self.nodes:
            while not node.accepts_amqp():
                if not node.alive():
                    raise RuntimeError(f"{node.name} exited with {node.proc.returncode} "
                                       f"during start-up\n{self.logs()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node.name} did not accept AMQP connections on "
                                       f"{node.amqp_port} within {START_TIMEOUT}s\n{self.logs()}")
                time.sleep(0.05)

    def wait_formed(self, nodes=None, voters: int = 3, timeout: float = FORM_TIMEOUT) -> str:
        """Wait until every node of `nodes` names the same leader (one of
        them) and lists `voters` voters; return the leader's name."""
        nodes = nodes or self.nodes
        names = {n.name for n in nodes}
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            statuses = [n.status() for n in nodes]
            last = statuses
            if all(statuses):
                leaders = {s.get("leader") for s in statuses}
                counts = {sum(1 for m in s.get("members", []) if m.get("voter")) for s in statuses}
                if len(leaders) == 1 and leaders <= names and counts == {voters}:
                    return leaders.pop()
            time.sleep(0.1)
        raise AssertionError(f"cluster not formed within {timeout}s; last /api/cluster "
                             f"answers: {json.dumps(last, indent=1)}\n{self.logs()}")

    def host_list(self, order=None) -> list[pika.ConnectionParameters]:
        """One ConnectionParameters per node, in `order`.  As pika documents
        for several hosts, connection_attempts/retry_delay of the LAST element
        apply to the whole list (each attempt walks the list in order)."""
        order = order if order is not None else self.nodes
        params = [n.params() for n in order[:-1]]
        params.append(order[-1].params(connection_attempts=5, retry_delay=0.5))
        return params

    def node_of(self, conn: pika.BlockingConnection) -> ClusterNode:
        port = conn._impl.params.port  # the parameters pika connected with
        # Cross-check with the socket itself.
        peer = conn._impl._transport._sock.getpeername()[1]
        assert peer == port, (peer, port)
        return next(n for n in self.nodes if n.amqp_port == port)

    def logs(self) -> str:
        out = []
        for node in self.nodes:
            out.append(f"----- {node.name} (amqp {node.amqp_port}, mgmt {node.mgmt_port}, "
                       f"cluster {node.cluster_port}) log {node.log_path} -----")
            out.append(node.log_tail())
        return "\n".join(out)

    def kill_all(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def pika_cluster():
    workdir = Path(tempfile.mkdtemp(prefix="broker-pytest-cluster-"))
    cluster = PikaCluster(_broker_binary(), workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill_all()
        if os.environ.get("BROKER_KEEP_DATA"):
            print(f"cluster work dir kept at {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _publish_confirmed(ch, exchange: str, keys_bodies) -> int:
    """Publish with confirms on a confirm-mode channel; pika's
    BlockingChannel.basic_publish returns only once the broker acked
    (raises NackError / UnroutableError otherwise). Returns the count."""
    n = 0
    for key, body in keys_bodies:
        ch.basic_publish(exchange, key, body,
                         properties=pika.BasicProperties(delivery_mode=2),
                         mandatory=True)
        n += 1
    return n


def _consume(ch, queue: str, count: int, timeout: float = 10.0) -> list[bytes]:
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout
    for method, _props, body in ch.consume(queue, auto_ack=False, inactivity_timeout=0.5):
        if method is not None:
            bodies.append(body)
            ch.basic_ack(method.delivery_tag)
        if len(bodies) >= count or time.monotonic() > deadline:
            break
    ch.cancel()
    return bodies


def _connect_with_failover(params, timeout: float) -> tuple[pika.BlockingConnection, int]:
    """pika's recommended reconnect loop: on AMQPConnectionError connect
    again with the same parameter list.  Returns the connection and the
    number of BlockingConnection() calls it took."""
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        tries += 1
        try:
            return pika.BlockingConnection(params), tries
        except pika.exceptions.AMQPConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_pika_host_list_fails_over_to_another_node(pika_cluster):
    cluster = pika_cluster
    n0, n1, n2 = cluster.nodes
    conns: list[pika.BlockingConnection] = []
    t0 = time.monotonic()
    timings = {}
    try:
        # 1. The cluster has three voters and a leader.
        leader = cluster.wait_formed()
        timings["formed"] = time.monotonic() - t0
        print(f"cluster formed, leader {leader}")

        # 2. Host list node0, node1, node2: the connection lands on node0.
        params = cluster.host_list([n0, n1, n2])
        conn = pika.BlockingConnection(params)
        conns.append(conn)
        assert cluster.node_of(conn) is n0
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("orders", exchange_type="topic", durable=True)
        q0 = f"orders-n0-{uuid.uuid4().hex[:8]}"
        ch.queue_declare(q0, durable=True)
        ch.queue_bind(q0, "orders", routing_key="order.before.#")
        sent = [f"before-{i}".encode() for i in range(10)]
        assert _publish_confirmed(ch, "orders", ((f"order.before.{i}", b)
                                                 for i, b in enumerate(sent))) == len(sent)
        assert _consume(ch, q0, len(sent)) == sent

        # 3. SIGKILL node0; the client notices on its next I/O.
        t_kill = time.monotonic()
        n0.kill()
        assert not n0.alive()
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            deadline = time.monotonic() + 3 * 2 + 2  # heartbeat 2 s: at most ~3 intervals
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.2)
        timings["noticed"] = time.monotonic() - t_kill
        assert not conn.is_open

        # ... and reconnects with the same host list to node1 or node2.
        conn, tries = _connect_with_failover(params, FAILOVER_TIMEOUT)
        conns.append(conn)
        timings["reconnected"] = time.monotonic() - t_kill
        node = cluster.node_of(conn)
        assert node is not n0 and node.amqp_port != n0.amqp_port
        other = n2 if node is n1 else n1
        print(f"reconnected to {node.name} (port {node.amqp_port}) after {tries} "
              f"BlockingConnection() call(s), {timings['reconnected']:.2f}s after the kill")

        # 4. On the new node: the exchange definition was replicated.
        ch = conn.channel()
        ch.exchange_declare("orders", exchange_type="topic", durable=True, passive=True)

        # node0 was (in every run so far) the leader: the survivors elect a new
        # one.  Wait for it before any change of shared definitions (and
        # queue declares, should queues become replicated): with openraft
        # 0.9 a follower only stands for election leader_lease (2 s) +
        # election timeout (1-2 s) after the last heartbeat, i.e. 3-4 s after
        # the kill, which leaves a change made meanwhile little margin to its
        # 5 s commit deadline (541 after it).
        survivors_leader = cluster.wait_formed([n1, n2], voters=3, timeout=10)
        timings["survivors' leader"] = time.monotonic() - t_kill
        print(f"survivors' leader: {survivors_leader} (was {leader})")

        ch.confirm_delivery()
        q1 = f"orders-{node.name.split('@')[1]}-{uuid.uuid4().hex[:8]}"
        ch.queue_declare(q1, durable=True)
        # Not to q0: it lives on node0, which is down, and what is routed
        # to it is nacked until node0 is back.
        ch.queue_bind(q1, "orders", routing_key="order.after.#")
        sent = [f"after-{i:03d}".encode() for i in range(N_MESSAGES)]
        t_pub = time.monotonic()
        assert _publish_confirmed(ch, "orders", ((f"order.after.{i}", b)
                                                 for i, b in enumerate(sent))) == N_MESSAGES
        got = _consume(ch, q1, N_MESSAGES)
        timings["publish+consume"] = time.monotonic() - t_pub
        assert len(got) == N_MESSAGES
        assert got == sent
        ch.queue_delete(q1)

        # 5. The two survivors are a majority: a new exchange declared on this
        # node commits, and the third node sees it.
        t_decl = time.monotonic()
        x2 = f"orders-after-failover-{uuid.uuid4().hex[:8]}"
        ch.exchange_declare(x2, exchange_type="fanout", durable=True)
        timings["declare after failover"] = time.monotonic() - t_decl
        conn2 = pika.BlockingConnection(other.params())
        conns.append(conn2)
        assert cluster.node_of(conn2) is other
        # declare-ok means committed on a majority; the third node applies it
        # on the leader's next message, so poll for the positive signal.
        deadline = time.monotonic() + 5
        polls = 0
        while True:
            polls += 1
            ch2 = conn2.channel()
            try:
                ch2.exchange_declare(x2, passive=True)
                break
            except pika.exceptions.ChannelClosedByBroker as e:
                assert e.reply_code == 404, e
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        ch2.exchange_declare("orders", passive=True)
        print(f"{other.name} saw {x2} after {polls} passive declare(s)")
        assert cluster.wait_formed([n1, n2], voters=3, timeout=5) == survivors_leader
        ch.exchange_delete(x2)
        timings["total"] = time.monotonic() - t0
        print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    except BaseException:
        print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
        print(cluster.logs())
        raise
    finally:
        for c in conns:
            if c.is_open:
                try:
                    c.close()
                except Exception:
                    pass
