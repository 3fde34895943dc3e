"""Celery end to end against the real broker binary.

A real worker (``celery -A celery_tasks worker --pool=solo``) runs as a
subprocess; the client side uses the same app with the ``rpc://`` result
backend.  Timeouts are generous but bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RESULT_TIMEOUT = 30
WORKER_START_TIMEOUT = 60


@pytest.fixture(scope="module")
def celery_app(broker):
    os.environ["CELERY_TEST_BROKER_URL"] = broker.url
    import celery_tasks

    celery_tasks.app.conf.broker_url = broker.url
    yield celery_tasks.app
    celery_tasks.app.close()


@pytest.fixture(scope="module")
def worker(broker, celery_app, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    env = dict(os.environ)
    env["CELERY_TEST_BROKER_URL"] = broker.url
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
         "--pool=solo", "--loglevel=INFO", "-n", "pytest-worker@%h"],
        cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()

    def tail():
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-80:])

    deadline = time.monotonic() + WORKER_START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"celery worker exited with {proc.returncode}:\n{tail()}")
            if " ready." in log_path.read_text(errors="replace"):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"celery worker not ready after {WORKER_START_TIMEOUT}s:\n{tail()}")
            time.sleep(0.25)
        proc.log_tail = tail
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        print(f"--- celery worker log ({log_path}) ---\n{tail()}")


@pytest.fixture
def tasks(worker, celery_app):
    import celery_tasks

    yield celery_tasks
    assert worker.poll() is None, f"celery worker died:\n{worker.log_tail()}"


def test_control_ping(tasks):
    """Broadcast over the pidbox fanout exchange, replies via a reply queue."""
    replies = tasks.app.control.ping(timeout=5.0)
    assert any("pytest-worker@" in name for r in replies for name in r), replies
    for r in replies:
        for name, answer in r.items():
            assert answer == {"ok": "pong"}


def test_add(tasks):
    r = tasks.add.delay(2, 3)
    assert r.get(timeout=RESULT_TIMEOUT) == 5
    assert r.state == "SUCCESS"
    assert r.successful()


def test_many_results(tasks):
    results = [tasks.add.delay(i, i) for i in range(20)]
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [2 * i for i in range(20)]


def test_task_raises(tasks):
    r = tasks.fail.delay("kaboom")
    with pytest.raises(Exception) as ei:
        r.get(timeout=RESULT_TIMEOUT)
    assert isinstance(ei.value, ValueError), repr(ei.value)
    assert type(ei.value).__name__ == "Boom"
    assert "kaboom" in str(ei.value)
    assert r.state == "FAILURE"
    # propagate=False returns the exception instead of raising
    r2 = tasks.fail.delay("quiet")
    exc = r2.get(timeout=RESULT_TIMEOUT, propagate=False)
    assert "quiet" in str(exc)
    assert r2.failed()


def test_retry_then_succeed(tasks):
    r = tasks.flaky.delay(2)
    assert r.get(timeout=RESULT_TIMEOUT) == "ok after 2 retries"


def test_countdown(tasks):
    """ETA tasks are held by the worker (it raises its basic.qos prefetch)."""
    start = time.monotonic()
    r = tasks.add.apply_async((40, 2), countdown=1)
    assert r.get(timeout=RESULT_TIMEOUT) == 42
    assert time.monotonic() - start >= 0.9


def test_acks_late(tasks):
    assert tasks.slow_echo.delay("late", 0.1).get(timeout=RESULT_TIMEOUT) == "late"


def test_chain(tasks):
    from celery import chain

    r = chain(tasks.add.s(1, 2), tasks.mul.s(10), tasks.add.s(5))()
    assert r.get(timeout=RESULT_TIMEOUT) == 35


def test_group(tasks):
    from celery import group

    r = group(tasks.add.s(i, 100) for i in range(10))()
    assert r.get(timeout=RESULT_TIMEOUT) == [100 + i for i in range(10)]
    assert r.successful()
    # fan-in done by the client (a chord needs a backend other than rpc://)
    assert tasks.xsum.delay(r.get(timeout=RESULT_TIMEOUT)).get(timeout=RESULT_TIMEOUT) == 1045



# No chord test: Celery's rpc:// result backend raises
# NotImplementedError('The "rpc" result backend does not support chords!')
# on the client before anything reaches the broker.
