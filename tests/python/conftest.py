"""Shared fixtures for the Python client compatibility tests.

Run (from the repo root):

    cargo build --release
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -r tests/python/requirements.txt
    BROKER_BIN=target/release/broker /tmp/venv/bin/pytest tests/python -v

The ``broker`` fixture starts the real broker binary once per test session:

* binary: ``$BROKER_BIN``, default ``target/release/broker`` under the repo root;
* port: the first free port in ``$BROKER_TEST_PORTS`` (default ``5690-5699``);
* data dir: a fresh temporary directory (removed at the end).

It waits until the port accepts TCP connections and kills the broker at the
end.  If a test makes the broker process die, the crash is reported as an
error of that test and the broker is restarted for the following tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pika
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT = 30.0


def _port_range():
    spec = os.environ.get("BROKER_TEST_PORTS", "5690-5699")
    lo, _, hi = spec.partition("-")
    lo = int(lo)
    hi = int(hi or lo)
    return range(lo, hi + 1)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    # Also make sure nobody is listening on the wildcard address.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) != 0


def _find_free_port() -> int:
    for port in _port_range():
        if _port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {_port_range()} (set BROKER_TEST_PORTS)")


class BrokerProcess:
    def __init__(self, binary: Path, port: int, workdir: Path):
        self.binary = binary
        self.host = HOST
        self.port = port
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "broker.log"
        self.proc: subprocess.Popen | None = None
        self.crashes = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    def env(self) -> dict:
        env = dict(os.environ)
        env["BROKER__AMQP__PORT"] = str(self.port)
        env["BROKER__AMQP__BIND"] = self.host
        env["BROKER__STORAGE__DATA_DIR"] = str(self.data_dir)
        env["BROKER__MANAGEMENT__PORT"] = "0"
        env["BROKER__PROMETHEUS__PORT"] = "0"
        env.setdefault("RUST_LOG", "info")
        return env

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # cwd = workdir so that no ./broker.toml from the repo is picked up.
        self.proc = subprocess.Popen(
            [str(self.binary)],
            cwd=self.workdir,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"broker exited with {self.proc.returncode} during start-up:\n{self.log_tail()}"
                )
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"broker did not accept connections on port {self.port} "
                           f"within {START_TIMEOUT}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-n:])


def _broker_binary() -> Path:
    path = Path(os.environ.get("BROKER_BIN", "target/release/broker"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        pytest.exit(f"broker binary not found at {path}; run `cargo build --release` "
                    f"or set BROKER_BIN", returncode=2)
    return path


@pytest.fixture(scope="session")
def broker():
    workdir = Path(tempfile.mkdtemp(prefix="broker-pytest-"))
    bp = BrokerProcess(_broker_binary(), _find_free_port(), workdir)
    bp.start()
    try:
        yield bp
    finally:
        bp.stop()
        if os.environ.get("BROKER_KEEP_DATA"):
            print(f"broker work dir kept at {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _broker_watchdog(request):
    """Restart a dead broker before a test; report a crash caused by a test."""
    if "broker" not in request.fixturenames:
        yield
        return
    bp: BrokerProcess = request.getfixturevalue("broker")
    if not bp.alive():
        bp.proc = None
        bp.start()
    yield
    if not bp.alive():
        rc = bp.proc.returncode if bp.proc else None
        bp.crashes += 1
        tail = bp.log_tail()
        bp.proc = None
        pytest.fail(f"broker process died during this test (exit code {rc}):\n{tail}",
                    pytrace=False)


def connection_params(broker, **kw) -> pika.ConnectionParameters:
    kw.setdefault("heartbeat", 0)
    kw.setdefault("blocked_connection_timeout", 30)
    kw.setdefault("socket_timeout", 10)
    kw.setdefault("stack_timeout", 30)
    kw.setdefault("connection_attempts", 3)
    kw.setdefault("retry_delay", 0.5)
    return pika.ConnectionParameters(
        host=broker.host,
        port=broker.port,
        virtual_host="/",
        credentials=pika.PlainCredentials("guest", "guest"),
        **kw,
    )


@pytest.fixture
def connect(broker):
    """Factory: open a BlockingConnection; all are closed at test end."""
    conns = []

    def _connect(**kw) -> pika.BlockingConnection:
        c = pika.BlockingConnection(connection_params(broker, **kw))
        conns.append(c)
        return c

    yield _connect
    for c in conns:
        if c.is_open:
            try:
                c.close()
            except Exception:
                pass


@pytest.fixture
def conn(connect):
    return connect()


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def qname(request):
    """A unique name prefix for queues/exchanges in a test."""
    return f"py-{request.node.name[5:35]}-{uuid.uuid4().hex[:8]}"
