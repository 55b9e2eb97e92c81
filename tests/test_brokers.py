import threading
import time

import pytest

from brokers import BrokerFull, BrokerUnavailable, open_broker
from brokers.memory import MemoryBroker


def _payloads(deliveries):
    return [d.payload for d in deliveries]


def test_from_url_and_open_broker():
    assert MemoryBroker.from_url("memory://?maxsize=7").maxsize == 7
    assert open_broker("memory://").maxsize == 1024
    with pytest.raises(ValueError, match="unknown memory:// option"):
        MemoryBroker.from_url("memory://?size=3")


def test_order_is_kept_and_deliveries_carry_key_and_time():
    b = MemoryBroker()
    for i in range(10):
        b.publish("t", b"%d" % i, key=f"k{i}")
    t0 = time.time_ns()
    got = b.consume("t", "g", "c1", max_messages=4) + b.consume("t", "g", "c1", max_messages=100)
    assert _payloads(got) == [b"%d" % i for i in range(10)]
    assert [d.key for d in got] == [f"k{i}" for i in range(10)]
    assert all(d.topic == "t" and d.deliver_ns >= t0 for d in got)
    assert b.consume("t", "g", "c1", timeout_s=0.01) == []


def test_each_group_gets_every_message_and_within_a_group_one_consumer_each():
    b = MemoryBroker()
    b.consume("t", "a", "a1", timeout_s=0)     # both groups exist before the publish
    b.consume("t", "b", "b1", timeout_s=0)
    for i in range(6):
        b.publish("t", bytes([i]))
    a1 = b.consume("t", "a", "a1", max_messages=3)
    a2 = b.consume("t", "a", "a2", max_messages=10)
    bb = b.consume("t", "b", "b1", max_messages=10)
    assert _payloads(a1) + _payloads(a2) == [bytes([i]) for i in range(6)]
    assert _payloads(bb) == [bytes([i]) for i in range(6)]
    assert b.depth("t") == 0


def test_a_group_created_later_sees_what_is_still_held():
    b = MemoryBroker()
    b.publish("t", b"x")
    assert _payloads(b.consume("t", "late", "c")) == [b"x"]


def test_bounded_publish_blocks_then_raises_broker_full():
    b = MemoryBroker(maxsize=3)
    for i in range(3):
        b.publish("t", b"m")
    assert b.depth("t") == 3
    t0 = time.monotonic()
    with pytest.raises(BrokerFull, match="maxsize 3"):
        b.publish("t", b"m", timeout_s=0.05)
    assert time.monotonic() - t0 >= 0.045
    # a consumer frees space; a blocked publisher then gets through
    threading.Timer(0.05, lambda: b.consume("t", "g", "c", max_messages=1)).start()
    b.publish("t", b"last", timeout_s=2)
    assert b.depth("t") == 3


def test_slowest_group_bounds_the_topic():
    b = MemoryBroker(maxsize=2)
    b.consume("t", "fast", "f", timeout_s=0)
    b.consume("t", "slow", "s", timeout_s=0)
    b.publish("t", b"1")
    b.publish("t", b"2")
    b.consume("t", "fast", "f")
    with pytest.raises(BrokerFull):
        b.publish("t", b"3", timeout_s=0.01)
    b.consume("t", "slow", "s")
    b.publish("t", b"3", timeout_s=0.01)


def test_ack_removes_and_requeue_gives_unacked_back_in_order():
    b = MemoryBroker()
    for i in range(5):
        b.publish("t", bytes([i]))
    dead = b.consume("t", "g", "dead", max_messages=3)
    b.ack("t", "g", dead[:1])
    assert b.pending("t", "g") == 2
    assert b.requeue_unacked("dead") == 2
    assert b.pending("t", "g") == 0
    alive = b.consume("t", "g", "alive", max_messages=10)
    assert _payloads(alive) == [bytes([1]), bytes([2]), bytes([3]), bytes([4])]
    b.ack("t", "g", alive)
    assert b.pending("t", "g") == 0 and b.requeue_unacked("dead") == 0


def test_consume_waits_for_a_publish():
    b = MemoryBroker()
    threading.Timer(0.05, lambda: b.publish("t", b"late")).start()
    t0 = time.monotonic()
    got = b.consume("t", "g", "c", timeout_s=2)
    assert _payloads(got) == [b"late"] and time.monotonic() - t0 < 1


def test_close_wakes_waiters():
    b = MemoryBroker()
    errors = []

    def wait():
        try:
            b.consume("t", "g", "c", timeout_s=5)
        except BrokerUnavailable as exc:
            errors.append(exc)

    th = threading.Thread(target=wait)
    th.start()
    time.sleep(0.05)
    b.close()
    th.join(2)
    assert not th.is_alive() and errors
    with pytest.raises(BrokerUnavailable):
        b.publish("t", b"x")


def test_concurrent_producers_and_consumers_lose_nothing():
    b = MemoryBroker(maxsize=50)
    n_prod, per_prod, n_cons = 4, 2000, 3
    received = [[] for _ in range(n_cons)]
    done = threading.Event()

    def produce(p):
        for i in range(per_prod):
            b.publish("t", f"{p}:{i}".encode(), timeout_s=10)

    def consume(c):
        while True:
            got = b.consume("t", "g", f"c{c}", max_messages=16, timeout_s=0.02)
            received[c].extend(d.payload for d in got)
            b.ack("t", "g", got)
            if not got and done.is_set():
                return

    cons = [threading.Thread(target=consume, args=(c,)) for c in range(n_cons)]
    prods = [threading.Thread(target=produce, args=(p,)) for p in range(n_prod)]
    for th in cons + prods:
        th.start()
    for th in prods:
        th.join()
    done.set()
    for th in cons:
        th.join()
    allgot = [m for r in received for m in r]
    assert len(allgot) == n_prod * per_prod
    assert set(allgot) == {f"{p}:{i}".encode() for p in range(n_prod) for i in range(per_prod)}
    # per producer, each consumer saw that producer's messages in publish order
    for r in received:
        for p in range(n_prod):
            seq = [int(m.split(b":")[1]) for m in r if m.startswith(f"{p}:".encode())]
            assert seq == sorted(seq)
    assert b.pending("t", "g") == 0 and b.depth("t") == 0


def test_dead_letter_parks_payload_and_reason_and_never_blocks():
    b = MemoryBroker(maxsize=2)
    for i in range(3):
        b.dead_letter("crops", bytes([i]), f"reason {i}")    # a third one drops the oldest
    got = b.consume("crops.dlq", "inspect", "c", max_messages=10)
    assert [(d.payload, d.key) for d in got] == [(b"\x01", "reason 1"), (b"\x02", "reason 2")]
    b.dead_letter("crops", b"\x03", "x" * 5000)
    (d,) = b.consume("crops.dlq", "inspect", "c")
    assert len(d.key) == 1000 and b.depth("crops") == 0
