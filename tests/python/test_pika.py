"""pika (BlockingConnection) compatibility tests against the real broker binary.

Expected behaviour is RabbitMQ's (see shared/RABBITMQ-BEHAVIOUR.md): error
tests assert both the reply code and the exact reply text.
"""

from __future__ import annotations

import time
import uuid

import pika
import pika.exceptions as pex
import pytest

VHOST = "/"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def drain(ch, queue, ack=True, limit=1000):
    """basic.get everything from ``queue``; return [(method, props, body)]."""
    out = []
    for _ in range(limit):
        method, props, body = ch.basic_get(queue, auto_ack=ack)
        if method is None:
            return out
        out.append((method, props, body))
    raise AssertionError(f"queue {queue} did not drain within {limit} gets")


def bodies(ch, queue):
    return [b for _, _, b in drain(ch, queue)]


def ready_count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def wait_until(pred, conn, timeout=5.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        conn.process_data_events(time_limit=step)
    return pred()


def assert_channel_error(excinfo, code, text):
    err = excinfo.value
    assert isinstance(err, pex.ChannelClosedByBroker), repr(err)
    assert (err.reply_code, err.reply_text) == (code, text)


def assert_connection_error(excinfo, code, text):
    err = excinfo.value
    assert isinstance(err, pex.ConnectionClosedByBroker), repr(err)
    assert (err.reply_code, err.reply_text) == (code, text)


def assert_fresh_connection_works(connect):
    """After an error: a brand new connection can declare, publish, get."""
    c = connect()
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"still-alive")
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert method is not None and body == b"still-alive"
    c.close()


def declare_queues(ch, prefix, n):
    names = [f"{prefix}-q{i}" for i in range(n)]
    for name in names:
        ch.queue_declare(name, auto_delete=False)
    return names


# --------------------------------------------------------------------------
# basic messaging
# --------------------------------------------------------------------------

def test_publish_consume_with_acks(conn, ch, qname):
    ok = ch.queue_declare(qname)
    assert ok.method.queue == qname
    assert ok.method.message_count == 0
    assert ok.method.consumer_count == 0

    props = pika.BasicProperties(
        content_type="text/plain",
        content_encoding="utf-8",
        delivery_mode=2,
        priority=3,
        correlation_id="corr-1",
        message_id="mid-1",
        timestamp=1700000000,
        type="greeting",
        app_id="pytest",
        headers={"h-str": "v", "h-int": 42, "h-bool": True,
                 "h-list": [1, "two"], "h-table": {"k": "v"}},
    )
    n = 20
    for i in range(n):
        ch.basic_publish("", qname, f"msg-{i}".encode(), props)
    # a larger body spanning several frames (frame_max 131072)
    big = bytes(range(256)) * 2048  # 512 KiB
    ch.basic_publish("", qname, big)

    received = []
    for method, p, body in ch.consume(qname, inactivity_timeout=5):
        assert method is not None, f"timed out after {len(received)} messages"
        assert method.exchange == ""
        assert method.routing_key == qname
        assert method.redelivered is False
        received.append(body)
        if len(received) <= n:
            assert p.content_type == "text/plain"
            assert p.content_encoding == "utf-8"
            assert p.delivery_mode == 2
            assert p.priority == 3
            assert p.correlation_id == "corr-1"
            assert p.message_id == "mid-1"
            assert p.timestamp == 1700000000
            assert p.type == "greeting"
            assert p.app_id == "pytest"
            assert p.headers == {"h-str": "v", "h-int": 42, "h-bool": True,
                                 "h-list": [1, "two"], "h-table": {"k": "v"}}
        ch.basic_ack(method.delivery_tag)
        if len(received) == n + 1:
            break
    ch.cancel()

    assert received[:n] == [f"msg-{i}".encode() for i in range(n)]
    assert received[n] == big
    assert ready_count(ch, qname) == 0

    # everything was acked: nothing comes back after the channel closes
    ch.close()
    ch2 = conn.channel()
    assert ready_count(ch2, qname) == 0
    ch2.queue_delete(qname)


def test_unacked_messages_requeued_on_channel_close(conn, qname):
    ch = conn.channel()
    ch.queue_declare(qname)
    for i in range(3):
        ch.basic_publish("", qname, f"m{i}".encode())
    got = []
    for method, _, body in ch.consume(qname, inactivity_timeout=5):
        assert method is not None
        got.append(body)
        if len(got) == 3:
            break
    ch.close()  # closes with 3 unacked messages

    ch2 = conn.channel()
    msgs = drain(ch2, qname)
    assert [b for _, _, b in msgs] == [b"m0", b"m1", b"m2"]
    assert all(m.redelivered for m, _, _ in msgs)
    ch2.queue_delete(qname)


def test_basic_get_message_count(ch, qname):
    ch.queue_declare(qname)
    assert ch.basic_get(qname) == (None, None, None)
    for i in range(3):
        ch.basic_publish("", qname, f"g{i}".encode(),
                         pika.BasicProperties(message_id=f"id{i}"))

    m1, p1, b1 = ch.basic_get(qname, auto_ack=False)
    assert (b1, m1.message_count, m1.redelivered) == (b"g0", 2, False)
    assert m1.exchange == "" and m1.routing_key == qname
    assert p1.message_id == "id0"
    m2, _, b2 = ch.basic_get(qname, auto_ack=True)
    assert (b2, m2.message_count) == (b"g1", 1)
    assert m2.delivery_tag == m1.delivery_tag + 1
    m3, _, b3 = ch.basic_get(qname, auto_ack=False)
    assert (b3, m3.message_count) == (b"g2", 0)
    assert ch.basic_get(qname) == (None, None, None)

    # declare-ok counts ready messages only (two are unacked)
    assert ready_count(ch, qname) == 0
    ch.basic_ack(m3.delivery_tag, multiple=True)
    assert ready_count(ch, qname) == 0
    ch.queue_delete(qname)


# --------------------------------------------------------------------------
# publisher confirms
# --------------------------------------------------------------------------

def test_publisher_confirms(ch, qname):
    ch.queue_declare(qname)
    ch.confirm_delivery()
    # routed publishes are confirmed without error
    for i in range(50):
        ch.basic_publish("", qname, f"c{i}".encode())
    ch.basic_publish("", qname, b"mandatory-routed", mandatory=True)
    assert ready_count(ch, qname) == 51

    # unroutable, not mandatory: silently dropped but still acked
    ch.basic_publish("amq.direct", f"{qname}-nowhere", b"dropped")

    # unroutable + mandatory: basic.return then ack -> UnroutableError
    with pytest.raises(pex.UnroutableError) as ei:
        ch.basic_publish("amq.direct", f"{qname}-nowhere", b"returned",
                         pika.BasicProperties(message_id="ret-1"), mandatory=True)
    (ret,) = ei.value.messages
    assert ret.method.reply_code == 312
    assert ret.method.reply_text == "NO_ROUTE"
    assert ret.method.exchange == "amq.direct"
    assert ret.method.routing_key == f"{qname}-nowhere"
    assert ret.body == b"returned"
    assert ret.properties.message_id == "ret-1"

    # the channel is still usable
    ch.basic_publish("", qname, b"after")
    assert ready_count(ch, qname) == 52
    ch.queue_delete(qname)


# --------------------------------------------------------------------------
# nack / reject / requeue
# --------------------------------------------------------------------------

def test_nack_requeue_keeps_order_and_sets_redelivered(ch, qname):
    ch.queue_declare(qname)
    for b in (b"a", b"b", b"c", b"d"):
        ch.basic_publish("", qname, b)
    tags = []
    for expected in (b"a", b"b", b"c"):
        m, _, body = ch.basic_get(qname, auto_ack=False)
        assert body == expected and m.redelivered is False
        tags.append(m.delivery_tag)
    ch.basic_nack(tags[-1], multiple=True, requeue=True)

    msgs = drain(ch, qname, ack=False)
    assert [b for _, _, b in msgs] == [b"a", b"b", b"c", b"d"]
    assert [m.redelivered for m, _, _ in msgs] == [True, True, True, False]
    ch.basic_ack(msgs[-1][0].delivery_tag, multiple=True)
    assert ready_count(ch, qname) == 0
    ch.queue_delete(qname)


def test_reject_requeue_and_drop(ch, qname):
    ch.queue_declare(qname)
    for b in (b"x", b"y", b"z"):
        ch.basic_publish("", qname, b)
    mx, _, _ = ch.basic_get(qname, auto_ack=False)
    my, _, _ = ch.basic_get(qname, auto_ack=False)
    ch.basic_reject(my.delivery_tag, requeue=True)   # y back before z
    ch.basic_reject(mx.delivery_tag, requeue=True)   # x back before y
    msgs = drain(ch, qname, ack=False)
    assert [b for _, _, b in msgs] == [b"x", b"y", b"z"]
    assert [m.redelivered for m, _, _ in msgs] == [True, True, False]

    # reject / nack without requeue drops (no DLX)
    ch.basic_reject(msgs[0][0].delivery_tag, requeue=False)
    ch.basic_nack(msgs[2][0].delivery_tag, multiple=True, requeue=False)
    assert ready_count(ch, qname) == 0
    assert ch.basic_get(qname) == (None, None, None)
    ch.queue_delete(qname)


def test_consumer_nack_requeue_redelivers(conn, ch, qname):
    ch.queue_declare(qname)
    ch.basic_publish("", qname, b"once")
    seen = []

    def on_msg(c, method, props, body):
        seen.append((method.redelivered, body))
        if not method.redelivered:
            c.basic_nack(method.delivery_tag, requeue=True)
        else:
            c.basic_ack(method.delivery_tag)

    ch.basic_consume(qname, on_msg)
    assert wait_until(lambda: len(seen) >= 2, conn)
    assert seen[:2] == [(False, b"once"), (True, b"once")]
    ch.close()


def test_basic_recover_requeues_unacked(ch, qname):
    ch.queue_declare(qname)
    for b in (b"r1", b"r2"):
        ch.basic_publish("", qname, b)
    ch.basic_get(qname, auto_ack=False)
    ch.basic_get(qname, auto_ack=False)
    ch.basic_recover(requeue=True)
    msgs = drain(ch, qname)
    assert [(b, m.redelivered) for m, _, b in msgs] == [(b"r1", True), (b"r2", True)]
    ch.queue_delete(qname)


def test_server_named_queue_and_consumer_tag(conn, ch):
    ok = ch.queue_declare("", exclusive=True)
    q = ok.method.queue
    assert q.startswith("amq.gen-") and len(q) == 30, q
    tag = ch.basic_consume(q, lambda *a: None)
    assert tag.startswith("ctag") or tag.startswith("amq.ctag-"), tag
    # declare-ok counts consumers
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(tag)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 0


def test_broker_cancels_consumer_when_queue_deleted(conn, ch, qname):
    """pika advertises consumer_cancel_notify: deletion sends basic.cancel."""
    ch.queue_declare(qname)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(qname, lambda *a: None)
    other = conn.channel()
    other.queue_delete(qname)
    assert wait_until(lambda: cancelled, conn)
    assert cancelled == [tag]
    assert ch.is_open


def test_auto_delete_queue_goes_with_last_consumer(conn, ch, qname):
    ch.queue_declare(qname, auto_delete=True)
    t1 = ch.basic_consume(qname, lambda *a: None)
    t2 = ch.basic_consume(qname, lambda *a: None)
    ch.basic_cancel(t1)
    assert ch.queue_declare(qname, passive=True).method.consumer_count == 1
    ch.basic_cancel(t2)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(qname, passive=True)
    assert_channel_error(ei, 404, f"NOT_FOUND - no queue '{qname}' in vhost '{VHOST}'")


def test_exclusive_consumer(connect, qname):
    c = connect()
    ch = c.channel()
    ch.queue_declare(qname)
    ch.basic_consume(qname, lambda *a: None, exclusive=True)
    ch2 = c.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch2.basic_consume(qname, lambda *a: None)
    assert_channel_error(
        ei, 403, f"ACCESS_REFUSED - queue '{qname}' in vhost '{VHOST}' in exclusive use")
    c.channel().queue_delete(qname)
    assert_fresh_connection_works(connect)


def test_duplicate_consumer_tag_closes_connection(connect, qname):
    c = connect()
    ch = c.channel()
    ch.queue_declare(qname)
    ch.basic_consume(qname, lambda *a: None, consumer_tag="dup-tag")
    # pika refuses a duplicate tag client-side, so send the raw method
    ch._impl._send_method(pika.spec.Basic.Consume(queue=qname, consumer_tag="dup-tag"))
    with pytest.raises(pex.ConnectionClosedByBroker) as ei:
        c.process_data_events(time_limit=2)
        ch.queue_declare(qname, passive=True)
    assert_connection_error(ei, 530, "NOT_ALLOWED - attempt to reuse consumer tag 'dup-tag'")
    assert_fresh_connection_works(connect)
    cleanup = connect().channel()
    cleanup.queue_delete(qname)


def test_ttl_and_dead_lettering(ch, qname):
    dlx = f"{qname}-dlx"
    dlq = f"{qname}-dead"
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(qname, arguments={"x-dead-letter-exchange": dlx,
                                       "x-message-ttl": 60000})
    # rejected without requeue -> dead-lettered
    ch.basic_publish("", qname, b"rejected", pika.BasicProperties(message_id="m-rej"))
    m, _, _ = ch.basic_get(qname, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    # per-message expiration -> dead-lettered
    ch.basic_publish("", qname, b"expired", pika.BasicProperties(expiration="50"))
    deadline = time.monotonic() + 5
    msgs = []
    while len(msgs) < 2 and time.monotonic() < deadline:
        msgs += drain(ch, dlq)
        time.sleep(0.05)
    assert [b for _, _, b in msgs] == [b"rejected", b"expired"]

    (m1, p1, _), (m2, p2, _) = msgs
    assert m1.exchange == dlx and m1.routing_key == qname
    assert p1.message_id == "m-rej"
    (death,) = p1.headers["x-death"]
    assert death["count"] == 1
    assert death["reason"] == "rejected"
    assert death["queue"] == qname
    assert death["exchange"] == ""
    assert death["routing-keys"] == [qname]
    assert p1.headers["x-first-death-reason"] == "rejected"
    assert p1.headers["x-first-death-queue"] == qname
    assert p1.headers["x-first-death-exchange"] == ""

    assert p2.expiration is None
    (death2,) = p2.headers["x-death"]
    assert death2["reason"] == "expired"
    assert death2["original-expiration"] == "50"
    for q in (qname, dlq):
        ch.queue_delete(q)
    ch.exchange_delete(dlx)


def test_message_ttl_expires(ch, qname):
    ch.queue_declare(qname, arguments={"x-message-ttl": 100})
    ch.basic_publish("", qname, b"queue-ttl")
    ch.basic_publish("", f"{qname}", b"msg-ttl", pika.BasicProperties(expiration="50"))
    time.sleep(0.5)
    assert ch.basic_get(qname, auto_ack=True) == (None, None, None)
    assert ready_count(ch, qname) == 0
    ch.queue_delete(qname)


def test_max_length_drop_head(ch, qname):
    ch.queue_declare(qname, arguments={"x-max-length": 3})
    for i in range(5):
        ch.basic_publish("", qname, f"L{i}".encode())
    assert ready_count(ch, qname) == 3
    assert bodies(ch, qname) == [b"L2", b"L3", b"L4"]
    ch.queue_delete(qname)


def test_priority_queue(ch, qname):
    ch.queue_declare(qname, arguments={"x-max-priority": 5})
    for prio in (None, 0, 3, 9, 5, 1, 255, 3):
        ch.basic_publish("", qname, str(prio).encode(),
                         pika.BasicProperties(priority=prio))
    assert bodies(ch, qname) == [b"9", b"5", b"255", b"3", b"3", b"1", b"None", b"0"]
    ch.queue_delete(qname)


def test_mandatory_return_in_tx_mode(conn, ch, qname):
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m.reply_code, m.reply_text, b)))
    ch.tx_select()
    ch.basic_publish("amq.direct", f"{qname}-nowhere", b"tx-ret", mandatory=True)
    ch.tx_commit()
    conn.process_data_events(time_limit=0.2)
    assert returned == [(312, "NO_ROUTE", b"tx-ret")]


# --------------------------------------------------------------------------
# qos
# --------------------------------------------------------------------------

def test_qos_prefetch_count(conn, ch, qname):
    ch.queue_declare(qname)
    ch.basic_qos(prefetch_count=2)
    for i in range(5):
        ch.basic_publish("", qname, f"p{i}".encode())
    got = []
    ch.basic_consume(qname, lambda c, m, p, b: got.append((m.delivery_tag, b)))
    conn.process_data_events(time_limit=1.0)
    assert [b for _, b in got] == [b"p0", b"p1"]
    # 3 still ready while 2 are unacked
    assert ready_count(ch, qname) == 3

    ch.basic_ack(got[0][0])
    assert wait_until(lambda: len(got) >= 3, conn)
    conn.process_data_events(time_limit=0.5)
    assert [b for _, b in got] == [b"p0", b"p1", b"p2"]

    ch.basic_ack(got[-1][0], multiple=True)
    assert wait_until(lambda: len(got) >= 5, conn)
    conn.process_data_events(time_limit=0.5)
    assert [b for _, b in got] == [f"p{i}".encode() for i in range(5)]
    ch.basic_ack(got[-1][0], multiple=True)
    assert ready_count(ch, qname) == 0
    ch.close()


def test_qos_prefetch_zero_is_unlimited(conn, ch, qname):
    ch.queue_declare(qname)
    ch.basic_qos(prefetch_count=0)
    for i in range(30):
        ch.basic_publish("", qname, b"u")
    got = []
    ch.basic_consume(qname, lambda c, m, p, b: got.append(m.delivery_tag))
    assert wait_until(lambda: len(got) >= 30, conn)
    ch.close()


# --------------------------------------------------------------------------
# exchange types
# --------------------------------------------------------------------------

def route(ch, exchange, routing_key, queues, headers=None):
    """Publish one message and return the queues it landed in."""
    props = pika.BasicProperties(headers=headers) if headers is not None else None
    ch.basic_publish(exchange, routing_key, b"r", props)
    hit = []
    for q in queues:
        n = len(drain(ch, q))
        assert n in (0, 1), f"{q} got {n} copies"
        if n:
            hit.append(q)
    return hit


def test_direct_exchange(ch, qname):
    x = f"{qname}-x"
    ch.exchange_declare(x, "direct")
    q1, q2, q3 = declare_queues(ch, qname, 3)
    ch.queue_bind(q1, x, "k1")
    ch.queue_bind(q2, x, "k2")
    ch.queue_bind(q3, x, "k1")
    ch.queue_bind(q3, x, "k2")
    qs = [q1, q2, q3]
    assert route(ch, x, "k1", qs) == [q1, q3]
    assert route(ch, x, "k2", qs) == [q2, q3]
    assert route(ch, x, "K1", qs) == []
    assert route(ch, x, "", qs) == []
    ch.queue_unbind(q3, x, "k1")
    assert route(ch, x, "k1", qs) == [q1]
    # the pre-declared amq.direct works too
    ch.queue_bind(q2, "amq.direct", qname)
    assert route(ch, "amq.direct", qname, qs) == [q2]
    for q in qs:
        ch.queue_delete(q)
    ch.exchange_delete(x)


def test_fanout_exchange(ch, qname):
    x = f"{qname}-x"
    ch.exchange_declare(x, "fanout")
    q1, q2, q3 = declare_queues(ch, qname, 3)
    ch.queue_bind(q1, x, "ignored")
    ch.queue_bind(q2, x, "")
    qs = [q1, q2, q3]
    assert route(ch, x, "anything", qs) == [q1, q2]
    assert route(ch, x, "", qs) == [q1, q2]
    for q in qs:
        ch.queue_delete(q)
    ch.exchange_delete(x)


TOPIC_CASES = {
    # pattern -> keys (from the probe set below) it must match
    "#": ["", "a", "a.b", "a.x.b", "a..b", "b", ".", "a.", "a.b.c"],
    "*": ["a", "b"],
    "a.*": ["a.b", "a."],
    "a.#": ["a", "a.b", "a.x.b", "a..b", "a.", "a.b.c"],
    "a.#.b": ["a.b", "a.x.b", "a..b"],
    "#.b": ["a.b", "a.x.b", "a..b", "b"],
    "*.*": ["a.b", ".", "a."],
    "a.*.b": ["a.x.b", "a..b"],
    "": [""],
}
TOPIC_KEYS = ["", "a", "a.b", "a.x.b", "a..b", "b", ".", "a.", "a.b.c"]


def test_topic_exchange(ch, qname):
    x = f"{qname}-x"
    ch.exchange_declare(x, "topic")
    patterns = list(TOPIC_CASES)
    queues = declare_queues(ch, qname, len(patterns))
    for q, pat in zip(queues, patterns):
        ch.queue_bind(q, x, pat)
    mismatches = []
    for key in TOPIC_KEYS:
        hit = set(route(ch, x, key, queues))
        for q, pat in zip(queues, patterns):
            expected = key in TOPIC_CASES[pat]
            if (q in hit) != expected:
                mismatches.append(f"pattern {pat!r} key {key!r}: expected "
                                  f"{'match' if expected else 'no match'}")
    assert not mismatches, mismatches
    # a queue matched by several patterns gets one copy
    multi = f"{qname}-multi"
    ch.queue_declare(multi)
    for pat in ("a.*", "#", "a.b"):
        ch.queue_bind(multi, x, pat)
    assert route(ch, x, "a.b", [multi]) == [multi]
    for q in queues + [multi]:
        ch.queue_delete(q)
    ch.exchange_delete(x)


def test_headers_exchange(ch, qname):
    x = f"{qname}-x"
    ch.exchange_declare(x, "headers")
    q_all, q_any, q_default, q_void, q_allx = declare_queues(ch, qname, 5)
    ch.queue_bind(q_all, x, "", arguments={"x-match": "all", "fmt": "pdf", "type": "report"})
    ch.queue_bind(q_any, x, "", arguments={"x-match": "any", "fmt": "pdf", "type": "report"})
    ch.queue_bind(q_default, x, "", arguments={"fmt": "pdf", "type": "report"})
    ch.queue_bind(q_void, x, "", arguments={"x-match": "all", "flag": None})
    ch.queue_bind(q_allx, x, "", arguments={"x-match": "all-with-x", "x-tag": "t1"})
    qs = [q_all, q_any, q_default, q_void, q_allx]

    assert route(ch, x, "", qs, {"fmt": "pdf", "type": "report"}) == [q_all, q_any, q_default]
    assert route(ch, x, "key-ignored", qs, {"fmt": "pdf", "type": "report", "more": 1}) \
        == [q_all, q_any, q_default]
    assert route(ch, x, "", qs, {"fmt": "pdf"}) == [q_any]
    assert route(ch, x, "", qs, {"fmt": "pdf", "type": "log"}) == [q_any]
    assert route(ch, x, "", qs, {"fmt": "txt", "type": "log"}) == []
    assert route(ch, x, "", qs, {"flag": "anything"}) == [q_void]
    assert route(ch, x, "", qs, {"flag": 7, "type": "report"}) == [q_any, q_void]
    assert route(ch, x, "", qs, {"x-tag": "t1"}) == [q_allx]
    assert route(ch, x, "", qs, {"x-tag": "t2"}) == []
    assert route(ch, x, "", qs, None) == []
    for q in qs:
        ch.queue_delete(q)
    ch.exchange_delete(x)


def test_exchange_to_exchange_binding(ch, qname):
    src, dst, dst2 = f"{qname}-src", f"{qname}-dst", f"{qname}-dst2"
    ch.exchange_declare(src, "direct")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_declare(dst2, "topic")
    q1, q2 = declare_queues(ch, qname, 2)
    ch.queue_bind(q1, dst)
    ch.queue_bind(q2, dst2, "k.#")
    ch.exchange_bind(destination=dst, source=src, routing_key="k")
    ch.exchange_bind(destination=dst2, source=dst)  # chain src -> dst -> dst2

    ch.basic_publish(src, "k", b"e2e")
    m1, _, b1 = ch.basic_get(q1, auto_ack=True)
    assert b1 == b"e2e"
    # the delivery keeps the original exchange and routing key
    assert (m1.exchange, m1.routing_key) == (src, "k")
    m2, _, b2 = ch.basic_get(q2, auto_ack=True)
    assert (b2, m2.exchange, m2.routing_key) == (b"e2e", src, "k")

    assert route(ch, src, "other", [q1, q2]) == []
    ch.exchange_unbind(destination=dst, source=src, routing_key="k")
    assert route(ch, src, "k", [q1, q2]) == []
    assert route(ch, dst, "k.z", [q1, q2]) == [q1, q2]
    for q in (q1, q2):
        ch.queue_delete(q)
    for x in (src, dst, dst2):
        ch.exchange_delete(x)


# --------------------------------------------------------------------------
# purge / delete
# --------------------------------------------------------------------------

def test_queue_purge_and_delete_counts(conn, ch, qname):
    ch.queue_declare(qname)
    for i in range(5):
        ch.basic_publish("", qname, b"p")
    assert ch.queue_purge(qname).method.message_count == 5
    assert ch.queue_purge(qname).method.message_count == 0

    for i in range(4):
        ch.basic_publish("", qname, f"d{i}".encode())
    m, _, _ = ch.basic_get(qname, auto_ack=False)  # one unacked
    assert ready_count(ch, qname) == 3
    # purge and delete count ready messages only
    assert ch.queue_purge(qname).method.message_count == 3
    ch.basic_publish("", qname, b"d-last")
    ok = ch.queue_delete(qname)
    assert ok.method.message_count == 1

    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(qname, passive=True)
    assert_channel_error(ei, 404, f"NOT_FOUND - no queue '{qname}' in vhost '{VHOST}'")

    # deleting a missing queue is fine and reports 0
    ch2 = conn.channel()
    assert ch2.queue_delete(f"{qname}-missing").method.message_count == 0
    ch2.close()


def test_queue_delete_if_unused_if_empty(conn, ch, qname):
    ch.queue_declare(qname)
    ch.basic_publish("", qname, b"x")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_delete(qname, if_empty=True)
    assert_channel_error(
        ei, 406, f"PRECONDITION_FAILED - queue '{qname}' in vhost '{VHOST}' not empty")

    ch2 = conn.channel()
    ch2.basic_consume(qname, lambda *a: None)
    ch3 = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch3.queue_delete(qname, if_unused=True)
    assert_channel_error(
        ei, 406, f"PRECONDITION_FAILED - queue '{qname}' in vhost '{VHOST}' in use")
    ch2.close()
    ch4 = conn.channel()
    ch4.queue_delete(qname)


# --------------------------------------------------------------------------
# transactions
# --------------------------------------------------------------------------

def test_transactions_publish(connect, qname):
    c = connect()
    ch = c.channel()
    observer = connect().channel()
    ch.queue_declare(qname)
    ch.tx_select()
    ch.basic_publish("", qname, b"t1")
    ch.basic_publish("", qname, b"t2")
    # uncommitted publishes are invisible
    assert ready_count(observer, qname) == 0
    ch.tx_rollback()
    assert ready_count(observer, qname) == 0

    ch.basic_publish("", qname, b"t3")
    ch.basic_publish("", qname, b"t4")
    assert ready_count(observer, qname) == 0
    ch.tx_commit()
    assert ready_count(observer, qname) == 2
    # the channel stays transactional
    ch.basic_publish("", qname, b"t5")
    assert ready_count(observer, qname) == 2
    ch.tx_commit()
    assert bodies(observer, qname) == [b"t3", b"t4", b"t5"]
    observer.queue_delete(qname)


def test_transactions_ack_rollback(connect, qname):
    c = connect()
    setup = c.channel()
    setup.queue_declare(qname)
    setup.basic_publish("", qname, b"a1")
    setup.basic_publish("", qname, b"a2")

    ch = c.channel()
    ch.tx_select()
    m1, _, b1 = ch.basic_get(qname, auto_ack=False)
    m2, _, b2 = ch.basic_get(qname, auto_ack=False)
    assert (b1, b2) == (b"a1", b"a2")
    ch.basic_ack(m1.delivery_tag)
    ch.tx_rollback()
    # rolled-back ack: the message stays unacked (not requeued) ...
    assert ready_count(setup, qname) == 0
    # ... and can be acked again in a later commit
    ch.basic_ack(m1.delivery_tag)
    ch.tx_commit()
    ch.close()  # a2 was never acked -> requeued
    msgs = drain(setup, qname)
    assert [(b, m.redelivered) for m, _, b in msgs] == [(b"a2", True)]
    setup.queue_delete(qname)


def test_tx_commit_without_select(conn, ch, connect):
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.tx_commit()
    assert_channel_error(ei, 406, "PRECONDITION_FAILED - channel is not transactional")
    assert conn.is_open
    assert_fresh_connection_works(connect)


def test_confirm_after_tx_select(conn, ch, connect):
    ch.tx_select()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.confirm_delivery()
    assert_channel_error(ei, 406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")
    assert_fresh_connection_works(connect)


# --------------------------------------------------------------------------
# direct reply-to
# --------------------------------------------------------------------------

def test_direct_reply_to(connect, qname):
    server_conn = connect()
    server = server_conn.channel()
    server.queue_declare(qname)

    client_conn = connect()
    client = client_conn.channel()
    replies = []
    client.basic_consume("amq.rabbitmq.reply-to",
                         lambda c, m, p, b: replies.append((m, p, b)),
                         auto_ack=True)
    client.basic_publish("", qname, b"ping",
                         pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                              correlation_id="c-42"))

    deadline = time.monotonic() + 5
    req = (None, None, None)
    while req[0] is None and time.monotonic() < deadline:
        req = server.basic_get(qname, auto_ack=True)
        if req[0] is None:
            time.sleep(0.05)
    method, props, body = req
    assert body == b"ping"
    reply_to = props.reply_to
    assert reply_to.startswith("amq.rabbitmq.reply-to.")
    assert len(reply_to) > len("amq.rabbitmq.reply-to.")

    server.basic_publish("", reply_to, b"pong",
                         pika.BasicProperties(correlation_id=props.correlation_id))
    assert wait_until(lambda: replies, client_conn)
    m, p, b = replies[0]
    assert b == b"pong"
    assert p.correlation_id == "c-42"
    assert m.exchange == ""
    assert m.routing_key == reply_to
    assert m.redelivered is False

    # a reply to a stale / unknown name is silently dropped
    server.basic_publish("", "amq.rabbitmq.reply-to.bogus-name", b"lost")
    server.queue_declare(qname, passive=True)  # round trip: channel still fine
    server.queue_delete(qname)


def test_direct_reply_to_without_consumer(connect, qname):
    c = connect()
    ch = c.channel()
    ch.queue_declare(qname)
    ch.basic_publish("", qname, b"req",
                     pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(qname, passive=True)
    assert_channel_error(ei, 406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    c.channel().queue_delete(qname)
    assert_fresh_connection_works(connect)


# --------------------------------------------------------------------------
# error cases: reply code + exact reply text, then a fresh connection works
# --------------------------------------------------------------------------

def test_error_passive_declare_missing_queue(conn, ch, connect, qname):
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(qname, passive=True)
    assert_channel_error(ei, 404, f"NOT_FOUND - no queue '{qname}' in vhost '{VHOST}'")
    # channel error: the connection survives
    assert conn.is_open
    conn.channel().queue_declare("", exclusive=True)
    assert_fresh_connection_works(connect)


def test_error_passive_declare_missing_exchange(conn, ch, connect, qname):
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_declare(qname, passive=True)
    assert_channel_error(ei, 404, f"NOT_FOUND - no exchange '{qname}' in vhost '{VHOST}'")
    assert conn.is_open
    assert_fresh_connection_works(connect)


def test_error_publish_to_missing_exchange(conn, ch, connect, qname):
    ch.basic_publish(f"{qname}-nox", "k", b"x")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare("", exclusive=True)
    assert_channel_error(ei, 404, f"NOT_FOUND - no exchange '{qname}-nox' in vhost '{VHOST}'")
    assert conn.is_open
    assert_fresh_connection_works(connect)


def test_error_redeclare_different_args(conn, connect, qname):
    ch = conn.channel()
    ch.queue_declare(qname, arguments={"x-message-ttl": 1000})
    # same args: fine
    ch.queue_declare(qname, arguments={"x-message-ttl": 1000})
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(qname, arguments={"x-message-ttl": 2000})
    assert_channel_error(
        ei, 406,
        f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{qname}' "
        f"in vhost '{VHOST}': received '2000' but current is '1000'")
    assert conn.is_open

    ch = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(qname, durable=True, arguments={"x-message-ttl": 1000})
    assert_channel_error(
        ei, 406,
        f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{qname}' "
        f"in vhost '{VHOST}': received 'true' but current is 'false'")

    # passive declare ignores args
    ch = conn.channel()
    assert ch.queue_declare(qname, passive=True, arguments={"x-message-ttl": 5}).method.queue == qname
    ch.queue_delete(qname)
    assert_fresh_connection_works(connect)


def test_error_exchange_redeclare_different_type(conn, connect, qname):
    ch = conn.channel()
    ch.exchange_declare(qname, "direct")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_declare(qname, "fanout")
    assert_channel_error(
        ei, 406,
        f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{qname}' "
        f"in vhost '{VHOST}': received 'fanout' but current is 'direct'")
    conn.channel().exchange_delete(qname)
    assert_fresh_connection_works(connect)


@pytest.mark.parametrize("kind", ["queue", "exchange"])
def test_error_reserved_amq_prefix(conn, connect, qname, kind):
    name = f"amq.{qname}"
    ch = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        if kind == "queue":
            ch.queue_declare(name)
        else:
            ch.exchange_declare(name, "direct")
    assert_channel_error(
        ei, 403, f"ACCESS_REFUSED - {kind} name '{name}' contains reserved prefix 'amq.*'")
    assert conn.is_open
    assert_fresh_connection_works(connect)


def test_error_delete_system_exchange(conn, connect):
    ch = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_delete("amq.fanout")
    assert_channel_error(
        ei, 403, f"ACCESS_REFUSED - deletion of system exchange 'amq.fanout' in vhost '{VHOST}' not allowed")
    assert_fresh_connection_works(connect)


def test_error_unknown_delivery_tag(conn, ch, connect):
    ch.basic_ack(delivery_tag=99)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare("", exclusive=True)  # any synchronous round trip
    assert_channel_error(ei, 406, "PRECONDITION_FAILED - unknown delivery tag 99")
    assert conn.is_open
    assert_fresh_connection_works(connect)


def test_error_double_ack(conn, connect, qname):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x")
    m, _, _ = ch.basic_get(q, auto_ack=False)
    ch.basic_ack(m.delivery_tag)
    ch.basic_ack(m.delivery_tag)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert_channel_error(ei, 406, f"PRECONDITION_FAILED - unknown delivery tag {m.delivery_tag}")
    assert_fresh_connection_works(connect)


def test_error_nack_unknown_delivery_tag(conn, ch, connect):
    ch.basic_nack(delivery_tag=7, requeue=True)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare("", exclusive=True)
    assert_channel_error(ei, 406, "PRECONDITION_FAILED - unknown delivery tag 7")
    assert_fresh_connection_works(connect)


def locked_text(q):
    return (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
            f"'{q}' in vhost '{VHOST}'. It could be originally declared on another "
            f"connection or the exclusive property value does not match that of the "
            f"original declaration.")


def test_error_exclusive_queue_other_connection(connect):
    qname = f"excl-{uuid.uuid4().hex[:8]}"  # short: the full text fits in 255 bytes
    owner = connect()
    och = owner.channel()
    och.queue_declare(qname, exclusive=True)
    locked = locked_text(qname)

    other = connect()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        other.channel().queue_declare(qname, passive=True)
    assert_channel_error(ei, 405, locked)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        other.channel().queue_declare(qname, exclusive=True)
    assert_channel_error(ei, 405, locked)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        other.channel().basic_consume(qname, lambda *a: None)
    assert_channel_error(ei, 405, locked)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        other.channel().basic_get(qname)
    assert_channel_error(ei, 405, locked)
    assert other.is_open

    # publishing to another connection's exclusive queue is allowed
    pub = other.channel()
    pub.basic_publish("", qname, b"to-exclusive")
    pub.queue_declare("", exclusive=True)  # round trip
    assert wait_until(lambda: ready_count(och, qname) == 1, owner)
    assert och.basic_get(qname, auto_ack=True)[2] == b"to-exclusive"

    # the exclusive queue disappears with its connection
    owner.close()
    ch = other.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(qname, passive=True)
    assert_channel_error(ei, 404, f"NOT_FOUND - no queue '{qname}' in vhost '{VHOST}'")
    assert_fresh_connection_works(connect)


def test_error_long_reply_text_is_truncated(connect):
    """RabbitMQ cuts reply texts longer than 255 bytes to 252 bytes + '...'."""
    qname = "excl-long-" + "n" * 50 + "-" + uuid.uuid4().hex[:8]
    owner = connect()
    owner.channel().queue_declare(qname, exclusive=True)
    full = locked_text(qname)
    assert len(full.encode()) > 255
    other = connect()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        other.channel().queue_declare(qname, passive=True)
    assert_channel_error(ei, 405, full[:252] + "...")
    assert_fresh_connection_works(connect)


@pytest.mark.parametrize("xtype,text", [
    ("foo", "COMMAND_INVALID - invalid exchange type 'foo'"),
    ("x-foo", "COMMAND_INVALID - unknown exchange type 'x-foo'"),
])
def test_error_unknown_exchange_type(connect, qname, xtype, text):
    c = connect()
    ch = c.channel()
    with pytest.raises(pex.ConnectionClosedByBroker) as ei:
        ch.exchange_declare(qname, xtype)
    assert_connection_error(ei, 503, text)
    assert not c.is_open
    assert_fresh_connection_works(connect)


def test_error_qos_prefetch_size(connect):
    c = connect()
    ch = c.channel()
    with pytest.raises(pex.ConnectionClosedByBroker) as ei:
        ch.basic_qos(prefetch_size=1000, prefetch_count=1)
    assert_connection_error(ei, 540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)")
    assert_fresh_connection_works(connect)


def test_error_default_exchange_operations(conn, connect, qname):
    ch = conn.channel()
    ch.queue_declare(qname)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_bind(qname, "", "k")
    assert_channel_error(ei, 403, "ACCESS_REFUSED - operation not permitted on the default exchange")
    conn.channel().queue_delete(qname)
    assert_fresh_connection_works(connect)


def test_many_errors_in_a_row_then_fresh_connection(connect, qname):
    """Repeated channel errors on one connection don't wedge the broker."""
    c = connect()
    for i in range(20):
        ch = c.channel()
        with pytest.raises(pex.ChannelClosedByBroker) as ei:
            ch.queue_declare(f"{qname}-{i}", passive=True)
        assert ei.value.reply_code == 404
    assert c.is_open
    assert_fresh_connection_works(connect)
