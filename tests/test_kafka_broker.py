"""KafkaBroker against a REAL Kafka-protocol broker (tansu, started by tests/servers.py).

Group joins on tansu cost about session_timeout/2 (3 s here), so these tests are few and share
one server; each uses its own topic prefix.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from servers import free_port, tansu_server, tansu_server_fresh  # noqa: E402,F401  (fixtures)

from brokers import BrokerFull, BrokerUnavailable, open_broker  # noqa: E402
from brokers.kafka import KafkaBroker  # noqa: E402

# kafka-python 3.0 loads its protocol schemas with deprecated importlib.resources calls.
pytestmark = [pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")]

FAST = dict(session_timeout_ms=6000, heartbeat_interval_ms=1000)


def _broker(server, **opts) -> KafkaBroker:
    opts = {**FAST, **opts}
    opts.setdefault("prefix", f"t{uuid.uuid4().hex[:8]}.")
    return KafkaBroker.from_url(server.url, **opts)


def _drain(broker, topic, group, consumer, want, timeout_s=20.0, max_messages=16):
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += broker.consume(topic, group, consumer, max_messages=max_messages, timeout_s=0.2)
    return got


def _read_raw(server, topic_name, want, timeout_s=10.0):
    """Read a topic from the beginning with a plain kafka-python consumer (no group)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=server.bootstrap, enable_auto_commit=False,
                      request_timeout_ms=3000, fetch_max_wait_ms=10)
    parts = c.partitions_for_topic(topic_name) or {0}
    tps = [TopicPartition(topic_name, p) for p in sorted(parts)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            out += recs
    c.close()
    return out


def test_round_trip_100kb_and_one_request_stays_in_one_partition(tansu_server):
    b = _broker(tansu_server, partitions=4)
    assert isinstance(open_broker(tansu_server.url), KafkaBroker)
    sent = {}
    for r in range(4):
        for crop in range(3):
            p = os.urandom(100_000)
            sent[p] = f"req-{r}"
            b.publish("crops", p, key=f"req-{r}")
    got = _drain(b, "crops", "workers", "w1", 12)
    assert len(got) == 12
    assert {d.payload: d.key for d in got} == sent                   # bytes and keys intact
    part_of = {}
    for d in got:
        part_of.setdefault(d.key, set()).add(d.tag[1].partition)
    assert all(len(ps) == 1 for ps in part_of.values()), part_of     # a request: one partition
    assert b.depth("crops") == 12                                     # lag before the commit
    b.ack("crops", "workers", got)
    assert b.depth("crops") == 0
    assert b.consume("crops", "workers", "w1", timeout_s=0.1) == []
    b.close()


def test_group_splits_partitions_and_each_message_is_processed_once(tansu_server):
    b = _broker(tansu_server, partitions=4)
    names = ("w1", "w2")
    seen = {n: [] for n in names}
    stop = threading.Event()

    def worker(name):          # one thread per consumer: kafka-python consumers are per thread
        while not stop.is_set():
            ds = b.consume("crops", "workers", name, max_messages=8, timeout_s=0.1)
            seen[name] += [d.payload for d in ds]
            b.ack("crops", "workers", ds)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:           # both members joined, partitions split
        a1, a2 = (b.assignment("crops", "workers", n) for n in names)
        if a1 and a2 and not a1 & a2 and len(a1 | a2) == 4:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"group did not balance: {a1} {a2}")
    n = 80
    for i in range(n):
        b.publish("crops", f"m{i}".encode(), key=f"req-{i}")
    deadline = time.monotonic() + 15
    while sum(map(len, seen.values())) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)                                # anything delivered twice would show now
    stop.set()
    for t in threads:
        t.join(5)
    assert sorted(seen["w1"] + seen["w2"]) == sorted(f"m{i}".encode() for i in range(n))
    assert seen["w1"] and seen["w2"]
    assert b.depth("crops") == 0
    b.close()


def test_unacked_records_are_redelivered_to_a_new_member_from_the_committed_offset(tansu_server):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    first = _broker(tansu_server, prefix=prefix, partitions=1)
    for i in range(10):
        first.publish("crops", f"m{i}".encode(), key="same-request")
    got = _drain(first, "crops", "workers", "w1", 10)
    assert [d.tag[2] for d in got] == list(range(10))
    # Ack 0-3 and 5-6 but not 4: the commit may only reach offset 4 (never skip an unacked one).
    first.ack("crops", "workers", [got[i] for i in (5, 0, 2, 1, 3, 6)])
    assert first.depth("crops") == 6
    first.close()                        # the consumer "dies": 4..9 were never committed

    second = _broker(tansu_server, prefix=prefix, partitions=1)
    again = _drain(second, "crops", "workers", "w2", 6)
    assert [d.payload for d in again] == [f"m{i}".encode() for i in range(4, 10)]
    second.ack("crops", "workers", again)
    assert second.depth("crops") == 0
    second.close()


def test_high_water_on_consumer_lag_raises_broker_full(tansu_server):
    b = _broker(tansu_server, partitions=2, high_water=5, lag_groups="workers", lag_check_ms=50)
    for i in range(5):
        b.publish("crops", b"x", key=str(i))
    assert b.depth("crops") == 5
    t0 = time.monotonic()
    with pytest.raises(BrokerFull, match="high-water"):
        b.publish("crops", b"one too many", timeout_s=0.3)
    assert 0.25 <= time.monotonic() - t0 < 3.0
    b.close()


def test_dead_letter_writes_payload_reason_and_headers(tansu_server):
    b = _broker(tansu_server, partitions=2)
    b.dead_letter("crops", b"\x00garbage", "MalformedMessage: bad magic")
    (rec,) = _read_raw(tansu_server, b.topic_name("crops.dlq"), 1)
    assert rec.value == b"\x00garbage"
    assert rec.key == b"MalformedMessage: bad magic"
    headers = dict(rec.headers)
    assert headers["reason"] == b"MalformedMessage: bad magic" and headers["topic"] == b"crops"
    b.close()


def test_unreachable_broker_raises_broker_unavailable_promptly():
    port = free_port()
    b = open_broker(f"kafka://user:s3cret@127.0.0.1:{port}?connect_timeout_ms=1000")
    for call in (lambda: b.publish("crops", b"x"),
                 lambda: b.consume("crops", "g", "c", timeout_s=0.1)):
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            call()
        assert time.monotonic() - t0 < 4.0
        assert f"127.0.0.1:{port}" in str(info.value) and "s3cret" not in str(info.value)
    assert b.ping() is False and b.depth("crops") == -1
    b.close()


def test_broker_down_then_back(tansu_server_fresh):
    server = tansu_server_fresh
    b = _broker(server, partitions=2, request_timeout_ms=2000)
    b.publish("crops", b"before", key="a")
    got = _drain(b, "crops", "workers", "w1", 1)               # the consumer has joined
    assert [d.payload for d in got] == [b"before"]
    b.ack("crops", "workers", got)

    server.stop()
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=str(server.port)):
        b.publish("crops", b"while down", key="a")
    with pytest.raises(BrokerUnavailable, match=str(server.port)):
        while time.monotonic() - t0 < 10:                       # poll() itself never raises:
            b.consume("crops", "workers", "w1", timeout_s=0.2)  # the adapter checks the broker
    assert time.monotonic() - t0 < 6.0
    assert not b.ping()

    server.start(timeout_s=30)          # same port; memory storage: topics and groups are gone
    deadline, last = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        try:
            b.publish("crops", b"after", key="a")
            break
        except BrokerUnavailable as exc:   # until the client reconnects / re-creates the topic
            last = exc
            time.sleep(0.2)
    else:
        pytest.fail(f"publish did not recover after the broker came back: {last}")
    recs = _read_raw(server, b.topic_name("crops"), 1)
    assert [r.value for r in recs] == [b"after"]
    b.close()
