"""RedisStreamsBroker against a REAL redis-server (started by tests/servers.py; no mocks)."""
from __future__ import annotations

import os
import sys
import threading
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from servers import (ServerMissing, free_port, redis_aof_server,  # noqa: E402,F401  (fixtures)
                     redis_server, redis_server_binary, tansu_binary)

from brokers import BrokerFull, BrokerUnavailable, open_broker  # noqa: E402
from brokers.message import MalformedMessage, Message, decode_message, encode_message  # noqa: E402
from brokers.redis_streams import RedisStreamsBroker  # noqa: E402


def _broker(server, **opts) -> RedisStreamsBroker:
    opts.setdefault("prefix", f"t{uuid.uuid4().hex[:8]}:")   # isolate tests on the shared server
    return RedisStreamsBroker.from_url(server.url, **opts)


def _drain(broker, topic, group, consumer, want, timeout_s=5.0, max_messages=16):
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += broker.consume(topic, group, consumer, max_messages=max_messages, timeout_s=0.1)
    return got


def test_open_broker_dispatch_and_options(redis_server):
    b = open_broker(redis_server.url + "?maxlen=50&claim_idle_ms=1234&prefix=x:")
    assert isinstance(b, RedisStreamsBroker)
    assert (b.maxlen, b.high_water, b.claim_idle_ms, b.prefix) == (50, 50, 1234, "x:")
    assert b.ping()
    b.close()


def test_round_trip_preserves_100kb_payloads(redis_server):
    b = _broker(redis_server)
    payloads = [os.urandom(100_000) for _ in range(20)]
    for i, p in enumerate(payloads):
        b.publish("crops", p, key=f"req-{i}")
    assert b.depth("crops") == 20
    t0 = time.time_ns()
    got = _drain(b, "crops", "workers", "w1", 20)
    assert [d.payload for d in got] == payloads
    assert [d.key for d in got] == [f"req-{i}" for i in range(20)]
    assert all(d.topic == "crops" and d.deliver_ns >= t0 for d in got)
    assert b.pending("crops", "workers") == 20
    b.ack("crops", "workers", got)
    assert b.pending("crops", "workers") == 0
    assert b.depth("crops") == 0
    assert b.consume("crops", "workers", "w1", timeout_s=0.05) == []


def test_message_encoding_survives_the_stream(redis_server):
    b = _broker(redis_server)
    msg = Message(request_id="r1", kind="crop", index=2, k=3, shape=(8, 8, 3), dtype="uint8",
                  produce_ns=123, extra={"trace": "abc"}, payload=bytes(range(192)))
    b.publish("crops", encode_message(msg), key="r1")
    (d,) = _drain(b, "crops", "g", "c", 1)
    back = decode_message(d.payload)
    assert (back.request_id, back.index, back.shape, back.payload) == ("r1", 2, (8, 8, 3),
                                                                       msg.payload)


def test_group_splits_work_and_each_message_is_processed_once(redis_server):
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    producer = _broker(redis_server, prefix=prefix)
    n = 300
    for i in range(n):
        producer.publish("crops", f"m{i}".encode(), key=str(i))
    seen: dict[str, list[bytes]] = {"w1": [], "w2": []}
    done = threading.Event()

    def worker(name):
        b = _broker(redis_server, prefix=prefix)     # one client per worker, as processes would
        while not done.is_set():
            ds = b.consume("crops", "workers", name, max_messages=4, timeout_s=0.05)
            for d in ds:
                seen[name].append(d.payload)
            time.sleep(0.001 * len(ds))                 # "work", so both get a share
            b.ack("crops", "workers", ds)
            if sum(map(len, seen.values())) >= n:
                done.set()
        b.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    done.set()
    all_seen = seen["w1"] + seen["w2"]
    assert sorted(all_seen) == sorted(f"m{i}".encode() for i in range(n))   # each exactly once
    assert seen["w1"] and seen["w2"], "both consumers of the group got work"
    assert producer.pending("crops", "workers") == 0
    assert producer.depth("crops") == 0


def test_entries_of_a_dead_consumer_are_reclaimed(redis_server):
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    opts = dict(prefix=prefix, claim_idle_ms=300, claim_interval_ms=0)
    dead, alive = _broker(redis_server, **opts), _broker(redis_server, **opts)
    for i in range(5):
        dead.publish("crops", f"m{i}".encode(), key=f"r{i}")
    taken = _drain(dead, "crops", "workers", "dead-1", 5)
    assert len(taken) == 5
    dead.close()                                       # "dies" without ack
    assert alive.consume("crops", "workers", "alive-1", timeout_s=0.05) == []   # not idle yet
    time.sleep(0.35)
    again = _drain(alive, "crops", "workers", "alive-1", 5)
    assert [d.payload for d in again] == [d.payload for d in taken]
    assert [d.key for d in again] == [d.key for d in taken]
    assert [d.tag for d in again] == [d.tag for d in taken]        # the same entries
    alive.ack("crops", "workers", again)
    assert alive.pending("crops", "workers") == 0
    assert alive.depth("crops") == 0


def test_poison_entry_goes_to_dead_letter_after_max_deliveries(redis_server):
    b = _broker(redis_server, claim_idle_ms=50, claim_interval_ms=0, max_deliveries=1)
    b.publish("crops", b"poison", key="r9")
    assert len(_drain(b, "crops", "workers", "w1", 1)) == 1     # delivery 1, never acked
    time.sleep(0.1)
    assert b.consume("crops", "workers", "w2", timeout_s=0.05) == []   # delivery 2: parked
    assert b.pending("crops", "workers") == 0
    (dl,) = _drain(b, "crops.dlq", "dlq", "c", 1)
    assert dl.payload == b"poison" and "max_deliveries=1" in dl.key


def test_high_water_mark_raises_broker_full_then_recovers(redis_server):
    b = _broker(redis_server, maxlen=10)
    for i in range(10):
        b.publish("crops", b"x" * 1000)
    t0 = time.monotonic()
    with pytest.raises(BrokerFull, match="high-water"):
        b.publish("crops", b"one too many", timeout_s=0.2)
    assert 0.15 <= time.monotonic() - t0 < 2.0
    assert b.depth("crops") == 10                      # nothing was trimmed or added
    got = _drain(b, "crops", "workers", "w1", 4, max_messages=4)
    b.ack("crops", "workers", got)
    b.publish("crops", b"fits again", timeout_s=0.2)
    assert b.depth("crops") == 7


def test_concurrent_publishers_stop_at_the_mark_and_nothing_is_trimmed(redis_server):
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    ok = []

    def publisher(i):
        b = _broker(redis_server, prefix=prefix, maxlen=200)
        n = 0
        try:
            while True:
                b.publish("crops", os.urandom(2000), timeout_s=0.0)
                n += 1
        except BrokerFull:
            ok.append(n)
        finally:
            b.close()

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    b = _broker(redis_server, prefix=prefix)
    length = b.depth("crops")
    assert 200 <= length <= 200 + len(threads)        # overshoot: one per racing publisher
    assert sum(ok) == length                           # every accepted entry is still there


def test_publish_waits_for_room_within_timeout(redis_server):
    b = _broker(redis_server, maxlen=2)
    b.publish("crops", b"a")
    b.publish("crops", b"b")
    got = _drain(b, "crops", "workers", "w1", 2)
    threading.Timer(0.1, b.ack, args=("crops", "workers", got)).start()
    t0 = time.monotonic()
    b.publish("crops", b"c", timeout_s=2.0)            # room appears after ~0.1 s
    assert time.monotonic() - t0 < 1.5


def test_dead_letter_keeps_payload_and_reason(redis_server):
    b = _broker(redis_server)
    b.dead_letter("crops", b"\x00not a message", "MalformedMessage: bad magic")
    raw = b.client.xrange(b.stream("crops.dlq"))
    assert len(raw) == 1
    fields = raw[0][1]
    assert fields[b"d"] == b"\x00not a message"
    assert fields[b"reason"] == b"MalformedMessage: bad magic"
    assert fields[b"topic"] == b"crops"
    (d,) = _drain(b, "crops.dlq", "inspect", "c", 1)
    assert d.payload == b"\x00not a message" and d.key == "MalformedMessage: bad magic"


def test_foreign_or_damaged_entries_are_delivered_as_bytes(redis_server):
    b = _broker(redis_server)
    b.client.xadd(b.stream("crops"), {b"other": b"field"})        # no payload field at all
    b.client.xadd(b.stream("crops"), {b"d": b"garbage bytes"})
    got = _drain(b, "crops", "workers", "w1", 2)
    assert [d.payload for d in got] == [b"", b"garbage bytes"]
    assert [d.key for d in got] == [None, None]
    for d in got:
        with pytest.raises(MalformedMessage):
            decode_message(d.payload)
        b.dead_letter("crops", d.payload, "malformed")           # what the worker does
    b.ack("crops", "workers", got)
    assert b.depth("crops") == 0 and b.depth("crops.dlq") == 2


def test_unreachable_server_raises_broker_unavailable_naming_the_url():
    port = free_port()
    b = open_broker(f"redis://overhead:s3cret@127.0.0.1:{port}/0")
    for call in (lambda: b.publish("crops", b"x"),
                 lambda: b.consume("crops", "g", "c", timeout_s=0.1),
                 lambda: b.dead_letter("crops", b"x", "reason")):
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            call()
        assert time.monotonic() - t0 < 3.0
        assert f"127.0.0.1:{port}" in str(info.value) and "s3cret" not in str(info.value)
    assert b.depth("crops") == -1 and b.ping() is False


def test_restart_with_aof_keeps_pending_entries_and_redelivers_them(redis_aof_server):
    opts = dict(claim_idle_ms=200, claim_interval_ms=0, prefix="aof:")
    b = _broker(redis_aof_server, **opts)
    payloads = [os.urandom(100_000) for _ in range(3)]
    for i, p in enumerate(payloads):
        b.publish("crops", p, key=f"r{i}")
    taken = _drain(b, "crops", "workers", "dead-1", 3)            # pending, never acked
    assert len(taken) == 3
    b.publish("crops", b"unread")                                   # waiting, never read

    redis_aof_server.stop()                                         # broker goes down
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=str(redis_aof_server.port)):
        b.publish("crops", b"while down")
    with pytest.raises(BrokerUnavailable):
        b.consume("crops", "workers", "w2", timeout_s=0.1)
    assert time.monotonic() - t0 < 5.0
    assert not b.ping()

    redis_aof_server.start()                                        # same port, AOF replayed
    assert b.ping()
    time.sleep(0.25)
    got = _drain(b, "crops", "workers", "w2", 4)
    assert sorted(d.payload for d in got) == sorted(payloads + [b"unread"])
    assert {d.tag for d in taken} <= {d.tag for d in got}           # the same pending entries
    b.ack("crops", "workers", got)
    b.publish("crops", b"after restart")
    assert [d.payload for d in _drain(b, "crops", "workers", "w2", 1)] == [b"after restart"]


def test_a_missing_server_binary_fails_with_the_fix(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServerMissing, match="scripts/ensure_servers.sh"):
        redis_server_binary()
    assert os.access(tansu_binary(), os.X_OK)
