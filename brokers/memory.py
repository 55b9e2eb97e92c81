"""In-process broker: bounded per-topic logs with consumer groups (threads only, one process).

Model (a tiny Redis-Streams/Kafka look-alike):
* a topic is a log of entries with increasing offsets; ``publish`` appends, blocking while the
  topic holds ``maxsize`` entries not yet delivered to its slowest group, and raises
  ``BrokerFull`` after ``timeout_s``;
* every consumer group has its own cursor, so each group sees every message; within a group each
  entry is delivered to exactly one consumer. A group created later starts at the oldest entry
  still held (entries no group has consumed yet are kept, up to ``maxsize``);
* a delivered entry stays pending for (group, consumer) until ``ack``; ``requeue_unacked``
  puts a dead consumer's pending entries back at the head of its group's queue.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from urllib.parse import parse_qs, urlparse

from brokers.base import Broker, BrokerFull, BrokerUnavailable, Delivery
from overhead.contract.clock import now_ns


class _Group:
    __slots__ = ("cursor", "redeliver", "pending")

    def __init__(self, cursor: int):
        self.cursor = cursor                  # next offset to deliver
        self.redeliver: deque = deque()       # (offset, payload, key) requeued from dead consumers
        self.pending: dict = {}               # offset -> (consumer, payload, key)


class _Topic:
    __slots__ = ("log", "base", "groups", "not_empty", "not_full")

    def __init__(self, lock: threading.Lock):
        self.log: deque = deque()             # (payload, key); log[i] has offset base + i
        self.base = 0
        self.groups: dict[str, _Group] = {}
        self.not_empty = threading.Condition(lock)
        self.not_full = threading.Condition(lock)

    @property
    def end(self) -> int:
        return self.base + len(self.log)

    def trim(self) -> None:
        """Drop entries every group has been handed (acked or pending: pending keep a copy)."""
        if not self.groups:
            return
        low = min(g.cursor for g in self.groups.values())
        dropped = False
        while self.base < low:
            self.log.popleft()
            self.base += 1
            dropped = True
        if dropped:
            self.not_full.notify_all()


class MemoryBroker(Broker):
    name = "memory"

    def __init__(self, maxsize: int = 1024):
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = int(maxsize)
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._closed = False

    @classmethod
    def from_url(cls, url: str = "memory://", **options) -> "MemoryBroker":
        """``memory://`` or ``memory://?maxsize=N``; keyword options override the URL."""
        parsed = urlparse(url)
        if parsed.scheme not in ("memory", ""):
            raise ValueError(f"not a memory:// URL: {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(query) - {"maxsize"}
        if unknown:
            raise ValueError(f"unknown memory:// option(s) {sorted(unknown)}; known: maxsize")
        if "maxsize" in query:
            options.setdefault("maxsize", int(query["maxsize"]))
        return cls(**options)

    def _topic(self, topic: str) -> _Topic:
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[topic] = _Topic(self._lock)
        return t

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("memory broker is closed")

    # -- Broker interface --------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, key: str | None = None,
                timeout_s: float = 1.0) -> None:
        with self._lock:
            self._check_open()
            t = self._topic(topic)
            if len(t.log) >= self.maxsize:
                deadline = time.monotonic() + max(0.0, timeout_s)
                while len(t.log) >= self.maxsize:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BrokerFull(f"topic {topic!r} holds {len(t.log)} undelivered messages "
                                         f"(maxsize {self.maxsize})")
                    t.not_full.wait(remaining)
                    self._check_open()
            t.log.append((bytes(payload), key))
            t.not_empty.notify_all()

    def dead_letter(self, topic: str, payload: bytes, reason: str) -> None:
        """Append to ``<topic>.dlq`` without ever blocking: when it holds ``maxsize`` entries the
        oldest is dropped (a dead-letter queue nobody reads must not stall the worker)."""
        from brokers.base import MAX_REASON_CHARS, dead_letter_topic

        with self._lock:
            self._check_open()
            t = self._topic(dead_letter_topic(topic))
            if len(t.log) >= self.maxsize:
                t.log.popleft()
                t.base += 1
                for g in t.groups.values():
                    g.cursor = max(g.cursor, t.base)
            t.log.append((bytes(payload), str(reason)[:MAX_REASON_CHARS]))
            t.not_empty.notify_all()

    def consume(self, topic: str, group: str, consumer: str, max_messages: int = 16,
                timeout_s: float = 0.1) -> list[Delivery]:
        with self._lock:
            self._check_open()
            t = self._topic(topic)
            g = t.groups.get(group)
            if g is None:
                g = t.groups[group] = _Group(t.base)
            if not g.redeliver and g.cursor >= t.end and timeout_s > 0:
                deadline = time.monotonic() + timeout_s
                while not g.redeliver and g.cursor >= t.end:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    t.not_empty.wait(remaining)
                    self._check_open()
            out: list[Delivery] = []
            ts = now_ns()
            while g.redeliver and len(out) < max_messages:
                off, payload, key = g.redeliver.popleft()
                g.pending[off] = (consumer, payload, key)
                out.append(Delivery(topic, payload, ts, tag=(group, off), key=key))
            while g.cursor < t.end and len(out) < max_messages:
                off = g.cursor
                payload, key = t.log[off - t.base]
                g.cursor += 1
                g.pending[off] = (consumer, payload, key)
                out.append(Delivery(topic, payload, ts, tag=(group, off), key=key))
            if out:
                t.trim()
            return out

    def ack(self, topic: str, group: str, deliveries: list[Delivery]) -> None:
        with self._lock:
            t = self._topics.get(topic)
            g = t.groups.get(group) if t else None
            if g is None:
                return
            for d in deliveries:
                tag = d.tag
                if isinstance(tag, tuple) and tag[0] == group:
                    g.pending.pop(tag[1], None)

    def requeue_unacked(self, consumer: str, topic: str | None = None,
                        group: str | None = None) -> int:
        """Give a dead consumer's unacknowledged deliveries back to its group(s), oldest first.
        Returns how many were requeued."""
        n = 0
        with self._lock:
            for tname, t in self._topics.items():
                if topic is not None and tname != topic:
                    continue
                woke = False
                for gname, g in t.groups.items():
                    if group is not None and gname != group:
                        continue
                    mine = sorted(off for off, p in g.pending.items() if p[0] == consumer)
                    for off in reversed(mine):
                        _, payload, key = g.pending.pop(off)
                        g.redeliver.appendleft((off, payload, key))
                    n += len(mine)
                    woke = woke or bool(mine)
                if woke:
                    t.not_empty.notify_all()
        return n

    def pending(self, topic: str, group: str) -> int:
        """Delivered but not yet acknowledged entries of a group."""
        with self._lock:
            t = self._topics.get(topic)
            g = t.groups.get(group) if t else None
            return len(g.pending) if g else 0

    def depth(self, topic: str) -> int:
        """Entries not yet delivered to the slowest group (all entries if no group exists yet)."""
        with self._lock:
            t = self._topics.get(topic)
            if t is None:
                return 0
            if not t.groups:
                return len(t.log)
            return max(t.end - g.cursor + len(g.redeliver) for g in t.groups.values())

    def ping(self) -> bool:
        return not self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for t in self._topics.values():
                t.not_empty.notify_all()
                t.not_full.notify_all()

    def __repr__(self) -> str:
        return f"MemoryBroker(maxsize={self.maxsize})"
