"""Celery app used by test_celery.py (not a test module itself).

The broker URL comes from $CELERY_TEST_BROKER_URL (set by the test fixture
for both the worker subprocess and the in-process client).
"""

import os
import time

from celery import Celery

app = Celery(
    "celery_tasks",
    broker=os.environ.get("CELERY_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5690//"),
    backend="rpc://",
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    worker_prefetch_multiplier=4,
    task_acks_late=False,
    result_expires=600,
)


class Boom(ValueError):
    pass


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    return sum(numbers)


@app.task
def fail(msg):
    raise Boom(msg)


@app.task(acks_late=True)
def slow_echo(value, delay=0.2):
    time.sleep(delay)
    return value


@app.task(bind=True, max_retries=2, default_retry_delay=0.2)
def flaky(self, succeed_on):
    """Fails (and retries) until its retry count reaches succeed_on."""
    if self.request.retries < succeed_on:
        raise self.retry(exc=RuntimeError("not yet"))
    return f"ok after {self.request.retries} retries"
