#!/usr/bin/env python3
"""Writes the small hand-made seed corpus in corpus/<target>/."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def shortstr(s):
    b = s.encode()
    return bytes([len(b)]) + b


def longstr(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b


def table(entries):
    """entries: list of (key, type byte, encoded value)."""
    body = b"".join(shortstr(k) + t + v for k, t, v in entries)
    return struct.pack(">I", len(body)) + body


def frame(kind, channel, payload):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def method(channel, class_id, method_id, args=b""):
    return frame(1, channel, struct.pack(">HH", class_id, method_id) + args)


def header(channel, size, flags=0, props=b""):
    return frame(2, channel, struct.pack(">HHQH", 60, 0, size, flags) + props)


def body(channel, data):
    return frame(3, channel, data)


HEARTBEAT = frame(8, 0, b"")
ARGS = table([
    ("x-max-length", b"I", struct.pack(">i", 10)),
    ("x-message-ttl", b"l", struct.pack(">q", 1000)),
    ("x-dead-letter-exchange", b"S", longstr("dlx")),
    ("flag", b"t", b"\x01"),
    ("list", b"A", longstr(b"I" + struct.pack(">i", 1) + b"S" + longstr("a"))),
    ("nested", b"F", table([("k", b"s", struct.pack(">h", 2))])),
    ("when", b"T", struct.pack(">Q", 1700000000)),
    ("dec", b"D", b"\x02" + struct.pack(">I", 12345)),
    ("void", b"V", b""),
    ("bytes", b"x", longstr(b"\x00\x01")),
    ("f", b"f", struct.pack(">f", 1.5)),
    ("d", b"d", struct.pack(">d", 2.5)),
])
CHANNEL_OPEN = method(1, 20, 10, shortstr(""))
QUEUE_DECLARE = method(1, 50, 10, b"\x00\x00" + shortstr("q") + b"\x00" + ARGS)
EXCHANGE_DECLARE = method(1, 40, 10, b"\x00\x00" + shortstr("x") + shortstr("topic") + b"\x02" + table([]))
QUEUE_BIND = method(1, 50, 20, b"\x00\x00" + shortstr("q") + shortstr("x") + shortstr("a.#") + b"\x00" + table([]))
CONFIRM_SELECT = method(1, 85, 10, b"\x00")
PUBLISH = method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("q") + b"\x00")
# flags: content-type, headers, delivery-mode, priority, message-id, expiration
PROPS_FLAGS = (1 << 15) | (1 << 13) | (1 << 12) | (1 << 11) | (1 << 8) | (1 << 7)
PROPS = (shortstr("text/plain") + table([("h", b"S", longstr("v"))]) + b"\x02" + b"\x05"
         + shortstr("60000") + shortstr("id-1"))
CONTENT = PUBLISH + header(1, 5, PROPS_FLAGS, PROPS) + body(1, b"hello")
QOS = method(1, 60, 10, struct.pack(">IH", 0, 10) + b"\x00")
CONSUME = method(1, 60, 20, b"\x00\x00" + shortstr("q") + shortstr("c") + b"\x00" + table([("x-priority", b"I", struct.pack(">i", 1))]))
ACK = method(1, 60, 80, struct.pack(">Q", 1) + b"\x01")
NACK = method(1, 60, 120, struct.pack(">Q", 1) + b"\x03")
GET = method(1, 60, 70, b"\x00\x00" + shortstr("q") + b"\x00")
TX = method(1, 90, 10) + CONTENT + method(1, 90, 20)
CHANNEL_CLOSE = method(1, 20, 40, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0))
CONNECTION_CLOSE = method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0))

START_OK_PLAIN = method(0, 10, 11, table([("product", b"S", longstr("seed"))]) + shortstr("PLAIN")
                        + longstr(b"\x00guest\x00guest") + shortstr("en_US"))
AMQPLAIN = shortstr("LOGIN") + b"S" + longstr("guest") + shortstr("PASSWORD") + b"S" + longstr("guest")
START_OK_AMQPLAIN = method(0, 10, 11, table([]) + shortstr("AMQPLAIN") + longstr(AMQPLAIN) + shortstr("en_US"))
TUNE_OK = method(0, 10, 31, struct.pack(">HIH", 16, 131072, 0))
OPEN = method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00")

SEEDS = {
    "frame_decoder": {
        "heartbeat": b"\x01" + HEARTBEAT,
        "declare": b"\x01" + QUEUE_DECLARE,
        "publish": b"\x01" + CONTENT,
        "small_frame_max": b"\x00" + CHANNEL_OPEN + CONTENT,
        "bad_end": b"\x01" + CHANNEL_OPEN[:-1] + b"\x00",
        "start_ok": b"\x02" + START_OK_PLAIN + TUNE_OK + OPEN,
    },
    "field_table": {
        "empty": b"",
        "args": ARGS[4:],
        "nested": table([("a", b"F", table([("b", b"A", longstr(b"F" + table([]) ))]))])[4:],
    },
    "content_header": {
        "none": b"\x00\x00\x00",
        "props": b"\x00" + struct.pack(">H", PROPS_FLAGS) + PROPS,
        "other_class": b"\xff" + struct.pack(">H", 0),
    },
    "connection": {
        "publish_consume": b"\x00" + CHANNEL_OPEN + QUEUE_DECLARE + CONFIRM_SELECT + CONTENT + QOS + CONSUME
        + ACK + GET + NACK + CHANNEL_CLOSE + CONNECTION_CLOSE,
        "topology": b"\x00" + CHANNEL_OPEN + EXCHANGE_DECLARE + QUEUE_DECLARE + QUEUE_BIND
        + method(1, 60, 40, b"\x00\x00" + shortstr("x") + shortstr("a.b") + b"\x01")
        + header(1, 3) + body(1, b"abc") + CONNECTION_CLOSE,
        "tx": b"\x00" + CHANNEL_OPEN + QUEUE_DECLARE + TX + HEARTBEAT + CONNECTION_CLOSE,
        "handshake_plain": b"\x01" + START_OK_PLAIN + TUNE_OK + OPEN + CHANNEL_OPEN + CONNECTION_CLOSE,
        "handshake_amqplain": b"\x01" + START_OK_AMQPLAIN + TUNE_OK + OPEN + CONNECTION_CLOSE,
    },
    # Bytes map onto a, a, b, *, #, ., ., . (byte % 8); 0xFF separates the
    # routing key from the binding keys.
    "topic_matcher": {
        "words": bytes([0, 5, 2, 5, 0]) + b"\xff" + bytes([0, 5, 3]) + b"\xff" + bytes([4]),
        "hashes": bytes([0, 5] * 40) + b"\xff" + bytes([4, 5] * 12 + [3]) + b"\xff" + bytes([4, 5, 0, 5, 4]),
        "empty": b"\xff" + b"\xff" + bytes([4]),
    },
    # First byte: the endpoint (fuzz_targets/mgmt_json.rs); the rest: the body.
    "mgmt_json": {
        "definitions": b"\x00" + b'{"queues": [{"name": "d", "vhost": "/", "durable": true, "arguments": {"x-max-length": 5}}], '
        b'"exchanges": [{"name": "dx", "vhost": "/", "type": "topic"}], '
        b'"bindings": [{"source": "dx", "vhost": "/", "destination": "d", "destination_type": "queue", "routing_key": "#"}]}',
        "publish": b"\x02" + b'{"properties": {"headers": {"a": [1, {"b": null}]}}, "routing_key": "q", "payload": "x", "payload_encoding": "string"}',
        "policy": b"\x03" + b'{"pattern": "^q", "definition": {"max-length": 10}, "apply-to": "queues"}',
        "queue": b"\x04" + b'{"durable": true, "arguments": {"x-queue-type": "quorum"}}',
        "binding": b"\x06" + b'{"routing_key": "k", "arguments": {"x-match": "all"}}',
    },
}

for target, seeds in SEEDS.items():
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
