"""Redis Streams broker: one stream per topic, consumer groups, at-least-once with recovery.

URL: ``redis://[user:password@]host:port/db?option=value&...`` (``rediss://`` for TLS).
Credentials come only from the URL or from the environment (``OVERHEAD_REDIS_USERNAME``,
``OVERHEAD_REDIS_PASSWORD``, used when the URL has none). Options (query string, or keyword
arguments to ``from_url`` which win over the query string):

``prefix`` (``overhead:``)      stream name = prefix + topic
``maxlen`` (10000)              capacity of a stream: the default high-water mark, and XADD
                                trims at ``MAXLEN ~ trim_at`` (maxlen, plus 10% / at least 100
                                when the high-water check is on, so that trimming never drops
                                entries that publishers racing past the mark added)
``high_water`` (= maxlen)       publish refuses (``BrokerFull``) while XLEN >= high_water;
                                0 disables the check (then MAXLEN trimming may drop old entries).
                                Far below the mark a publish is XADD + XLEN in one round trip;
                                within 10% of it (or with no recent XLEN) it is an atomic Lua
                                check-and-add, so concurrent publishers overshoot by a few at most
``delete_on_ack`` (1)           XACK + XDEL on ack, so XLEN is the backlog (waiting + pending).
                                Assumes one consumer group per stream (the pipeline's use); set 0
                                for fan-out to several groups (then high_water defaults to 0)
``claim_idle_ms`` (30000)       entries pending longer than this in another (dead) consumer are
                                taken over with XAUTOCLAIM
``claim_interval_ms`` (1000)    how often consume() looks for such entries (XAUTOCLAIM costs a
                                round trip, so it is not done on every call)
``max_deliveries`` (5)          a reclaimed entry delivered more often than this is moved to the
                                dead-letter stream instead (0 = never)
``dlq_maxlen`` (10000)          MAXLEN ~ of ``<topic>.dlq`` streams
``socket_timeout`` (5), ``connect_timeout`` (2), ``retries`` (1)   seconds / reconnect attempts
Any other query parameter is passed to redis-py (e.g. ``ssl_cert_reqs`` for rediss://).

Stream entry fields: ``d`` = payload bytes, ``k`` = key (request id) if any; dead letters also
carry ``reason``, ``topic`` and ``t`` (time.time_ns()).

Threads: one ``RedisStreamsBroker`` may be shared by threads (redis-py's connection pool is
thread-safe; a blocking consume holds one pooled connection for its duration).
"""
from __future__ import annotations

import os
import threading
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from brokers.base import (MAX_REASON_CHARS, Broker, BrokerError, BrokerFull, BrokerUnavailable,
                          Delivery, dead_letter_topic)
from brokers.urls import convert_option, redact_url
from overhead.contract.clock import now_ns

# Atomic "publish unless the backlog is at the high-water mark": one round trip, no race between
# concurrent publishers. Returns the stream's length after the add, or false when full. (Passing
# the payload through Lua costs ~0.2 ms per 100 KB, so it is only used near the mark.)
_PUBLISH_LUA = """
local hw = tonumber(ARGV[1])
if hw > 0 and redis.call('XLEN', KEYS[1]) >= hw then return false end
if ARGV[4] == '1' then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[3], 'k', ARGV[5])
else
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[3])
end
return redis.call('XLEN', KEYS[1])
"""

_OPTIONS = {  # name: (type, default)
    "prefix": (str, "overhead:"),
    "maxlen": (int, 10000),
    "high_water": (int, None),
    "delete_on_ack": (bool, True),
    "claim_idle_ms": (int, 30000),
    "claim_interval_ms": (int, 1000),
    "max_deliveries": (int, 5),
    "dlq_maxlen": (int, 10000),
    "socket_timeout": (float, 5.0),
    "connect_timeout": (float, 2.0),
    "retries": (int, 1),
}


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


class RedisStreamsBroker(Broker):
    name = "redis"

    def __init__(self, client, url: str = "redis://", *, prefix: str = "overhead:",
                 maxlen: int = 10000, high_water: int | None = None, delete_on_ack: bool = True,
                 claim_idle_ms: int = 30000, claim_interval_ms: int = 1000,
                 max_deliveries: int = 5, dlq_maxlen: int = 10000, socket_timeout: float = 5.0):
        import redis

        self._redis = redis
        self.client = client
        self.url = redact_url(url)
        self.prefix = prefix
        self.maxlen = max(1, int(maxlen))
        self.delete_on_ack = bool(delete_on_ack)
        if high_water is None:
            high_water = self.maxlen if self.delete_on_ack else 0
        self.high_water = max(0, int(high_water))
        # use the atomic path within this distance of the mark
        self.hw_slack = max(1, self.high_water // 10)
        self.trim_at = (max(self.maxlen, self.high_water + max(100, self.high_water // 10))
                        if self.high_water else self.maxlen)
        self._len_seen: dict[str, tuple[int, float]] = {}   # stream -> (XLEN, monotonic time)
        self.claim_idle_ms = max(0, int(claim_idle_ms))
        self.claim_interval_s = max(0, int(claim_interval_ms)) / 1000.0
        self.max_deliveries = max(0, int(max_deliveries))
        self.dlq_maxlen = max(1, int(dlq_maxlen))
        self.socket_timeout = float(socket_timeout)
        self._publish_script = client.register_script(_PUBLISH_LUA)
        self._groups: set[tuple[str, str]] = set()
        self._claim_state: dict[tuple[str, str], list] = {}   # (stream, group) -> [cursor, next_t]
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_url(cls, url: str = "redis://127.0.0.1:6379/0", **options) -> "RedisStreamsBroker":
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"not a Redis URL: {redact_url(url)!r}")
        ours: dict = {}
        passthrough = []
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k in _OPTIONS:
                ours[k] = v
            else:
                passthrough.append((k, v))
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"unknown Redis broker option(s): {sorted(unknown)}")
        ours.update(options)
        cfg = {name: (convert_option(name, typ, ours[name]) if name in ours and ours[name] is not None
                      else default)
               for name, (typ, default) in _OPTIONS.items()}
        client_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(passthrough),
                                 parts.fragment))
        kwargs = {}
        if parts.password is None and os.environ.get("OVERHEAD_REDIS_PASSWORD"):
            kwargs["password"] = os.environ["OVERHEAD_REDIS_PASSWORD"]
            if parts.username is None and os.environ.get("OVERHEAD_REDIS_USERNAME"):
                kwargs["username"] = os.environ["OVERHEAD_REDIS_USERNAME"]
        client = redis.Redis.from_url(
            client_url, decode_responses=False,
            socket_timeout=cfg["socket_timeout"], socket_connect_timeout=cfg["connect_timeout"],
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), max(0, cfg["retries"])),
            client_name="overhead", **kwargs)
        return cls(client, url, prefix=cfg["prefix"], maxlen=cfg["maxlen"],
                   high_water=cfg["high_water"], delete_on_ack=cfg["delete_on_ack"],
                   claim_idle_ms=cfg["claim_idle_ms"], claim_interval_ms=cfg["claim_interval_ms"],
                   max_deliveries=cfg["max_deliveries"], dlq_maxlen=cfg["dlq_maxlen"],
                   socket_timeout=cfg["socket_timeout"])

    # ------------------------------------------------------------------ helpers
    def stream(self, topic: str) -> str:
        return self.prefix + topic

    def _unavailable(self, exc: Exception) -> BrokerUnavailable:
        return BrokerUnavailable(f"Redis broker at {self.url} is unavailable: "
                                 f"{type(exc).__name__}: {exc}")

    def _call(self, fn, *args, **kwargs):
        """Run one client call, mapping connection failures to ``BrokerUnavailable``."""
        r = self._redis
        try:
            return fn(*args, **kwargs)
        except (r.exceptions.ConnectionError, r.exceptions.TimeoutError, OSError) as exc:
            # BusyLoadingError (server replaying its AOF) is a ConnectionError too.
            with self._lock:
                self._groups.clear()
            raise self._unavailable(exc) from exc
        except r.exceptions.ResponseError as exc:
            raise BrokerError(f"Redis broker at {self.url}: {exc}") from exc

    def _ensure_group(self, stream: str, group: str, force: bool = False) -> None:
        if not force and (stream, group) in self._groups:
            return
        try:
            # "0": a group created after the first publish still sees those entries.
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except self._redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        with self._lock:
            self._groups.add((stream, group))

    @staticmethod
    def _delivery(topic: str, entry_id, fields, now_ns: int) -> Delivery:
        fields = fields or {}
        payload = fields.get(b"d")
        if payload is None:  # foreign or damaged entry: deliver empty bytes, the worker DLQs it
            payload = b""
        key = fields.get(b"k")
        return Delivery(topic=topic, payload=bytes(payload), deliver_ns=now_ns, tag=entry_id,
                        key=None if key is None else _text(key))

    # ------------------------------------------------------------------ Broker API
    def publish(self, topic: str, payload: bytes, key: str | None = None,
                timeout_s: float = 1.0) -> None:
        stream = self.stream(topic)
        payload = bytes(payload)
        hw = self.high_water
        deadline = time.monotonic() + max(0.0, timeout_s)
        delay = 0.001
        while True:
            seen = self._len_seen.get(stream)
            now = time.monotonic()
            if not hw or (seen is not None and seen[0] < hw - self.hw_slack
                          and now - seen[1] < 1.0):
                # fast path: plain XADD, and XLEN to know how far the mark is
                fields = {b"d": payload} if key is None else {b"d": payload, b"k": key}
                pipe = self.client.pipeline(transaction=False)
                pipe.xadd(stream, fields, maxlen=self.trim_at, approximate=True)
                pipe.xlen(stream)
                _id, length = self._call(pipe.execute)
                self._len_seen[stream] = (int(length), now)
                return
            length = self._call(self._publish_script, keys=[stream],
                                args=[hw, self.trim_at, payload, "0" if key is None else "1",
                                      "" if key is None else key])
            if length:
                self._len_seen[stream] = (int(length), now)
                return
            self._len_seen[stream] = (hw, now)
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerFull(f"Redis stream {stream!r} at {self.url} holds >= "
                                 f"{self.high_water} entries (high-water mark) after "
                                 f"{timeout_s:.3g} s")
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def consume(self, topic: str, group: str, consumer: str, max_messages: int = 16,
                timeout_s: float = 0.1) -> list[Delivery]:
        stream = self.stream(topic)
        max_messages = max(1, int(max_messages))
        self._call(self._ensure_group, stream, group)
        out = self._reclaim(topic, stream, group, consumer, max_messages)
        if len(out) >= max_messages:
            return out
        count = max_messages - len(out)
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            left = deadline - time.monotonic()
            # BLOCK 0 means forever: never send it. Chunk long waits below the socket timeout.
            chunk = min(left, max(0.1, self.socket_timeout - 0.5))
            block = None if out or left <= 0 else max(1, int(chunk * 1000))
            try:
                resp = self._call(self.client.xreadgroup, group, consumer, {stream: ">"},
                                  count=count, block=block)
            except BrokerError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream or group vanished (server restarted without persistence, FLUSHALL).
                self._call(self._ensure_group, stream, group, True)
                continue
            now = now_ns()
            for _name, entries in resp or []:
                for entry_id, fields in entries:
                    out.append(self._delivery(topic, entry_id, fields, now))
            if out or block is None or deadline - time.monotonic() <= 0:
                return out

    def _reclaim(self, topic, stream, group, consumer, count) -> list[Delivery]:
        """Take over entries another consumer left pending for longer than claim_idle_ms."""
        key = (stream, group)
        now_m = time.monotonic()
        with self._lock:
            state = self._claim_state.setdefault(key, [b"0-0", 0.0])
            if now_m < state[1]:
                return []
            state[1] = now_m + self.claim_interval_s
            cursor = state[0]
        resp = self._call(self.client.xautoclaim, stream, group, consumer, self.claim_idle_ms,
                          start_id=cursor, count=count)
        next_cursor, entries = resp[0], resp[1]
        with self._lock:
            state[0] = next_cursor
            if entries and next_cursor not in (b"0-0", "0-0"):
                state[1] = 0.0   # more may be waiting: look again on the next call
        if not entries:
            return []
        now = now_ns()
        out = [self._delivery(topic, eid, fields, now) for eid, fields in entries]
        if self.max_deliveries:
            out = self._park_poison(topic, stream, group, out)
        return out

    def _park_poison(self, topic, stream, group, deliveries: list[Delivery]) -> list[Delivery]:
        ids = [d.tag for d in deliveries]
        info = self._call(self.client.xpending_range, stream, group, min=ids[0], max=ids[-1],
                          count=len(ids) * 4 + 16)
        times = {row["message_id"]: row["times_delivered"] for row in info}
        keep, poison = [], []
        for d in deliveries:
            n = times.get(d.tag, 0)
            (poison if n > self.max_deliveries else keep).append((d, n))
        for d, n in poison:
            self.dead_letter(topic, d.payload,
                             f"delivered {n} times without ack (max_deliveries="
                             f"{self.max_deliveries})", key=d.key)
        if poison:
            self.ack(topic, group, [d for d, _ in poison])
        return [d for d, _ in keep]

    def ack(self, topic: str, group: str, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        stream = self.stream(topic)
        ids = [d.tag for d in deliveries]
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(stream, group, *ids)
        if self.delete_on_ack:
            pipe.xdel(stream, *ids)
        self._call(pipe.execute)

    def dead_letter(self, topic: str, payload: bytes, reason: str, key: str | None = None) -> None:
        """XADD to ``<prefix><topic>.dlq`` (MAXLEN ~ dlq_maxlen, never BrokerFull) with fields
        ``d`` (payload), ``k`` (the reason, as for every broker), ``reason``, ``topic``, ``t``
        and ``rid`` (the original key, if given)."""
        reason = str(reason)[:MAX_REASON_CHARS]
        fields = {b"d": bytes(payload), b"k": reason, b"reason": reason, b"topic": topic,
                  b"t": str(time.time_ns())}
        if key is not None:
            fields[b"rid"] = key
        self._call(self.client.xadd, self.stream(dead_letter_topic(topic)), fields,
                   maxlen=self.dlq_maxlen, approximate=True)

    def depth(self, topic: str) -> int:
        """XLEN (= waiting + pending when delete_on_ack); otherwise the largest ``lag + pending``
        of the stream's groups. -1 if the server cannot be reached."""
        stream = self.stream(topic)
        try:
            if self.delete_on_ack:
                return int(self._call(self.client.xlen, stream))
            try:
                groups = self._call(self.client.xinfo_groups, stream)
            except BrokerError as exc:
                if "no such key" in str(exc).lower():
                    return 0
                raise
            best = 0
            for g in groups:
                lag = g.get("lag")
                if lag is None:
                    return int(self._call(self.client.xlen, stream))
                best = max(best, int(lag) + int(g.get("pending", 0)))
            return best if groups else int(self._call(self.client.xlen, stream))
        except BrokerUnavailable:
            return -1

    def pending(self, topic: str, group: str) -> int:
        """Entries delivered to ``group`` and not yet acknowledged."""
        try:
            info = self._call(self.client.xpending, self.stream(topic), group)
        except BrokerError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise
        return int(info["pending"])

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:
            return False

    def delete_topic(self, topic: str) -> None:
        """Drop the stream (and its groups): for tests and benchmarks."""
        self._call(self.client.delete, self.stream(topic))
        with self._lock:
            self._groups = {g for g in self._groups if g[0] != self.stream(topic)}

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
