"""Kafka broker (kafka-python): a topic per stage with N partitions, consumer groups, manual commit.

URL: ``kafka://[user:password@]host:port[,host2:port]?option=value&...``. Credentials come only
from the URL or the environment (``OVERHEAD_KAFKA_USERNAME`` / ``OVERHEAD_KAFKA_PASSWORD``); with
credentials the client uses SASL (``sasl_mechanism``, default PLAIN, over ``security_protocol``,
default SASL_PLAINTEXT). Options (query string, or keyword arguments to ``from_url``, which win):

``prefix`` (``overhead.``)          Kafka topic = prefix + topic
``partitions`` (4), ``replication`` (1)   for topics this broker creates (KafkaAdminClient)
``acks`` (1: 0, 1 or all), ``linger_ms`` (0), ``batch_size`` (16384), ``compression`` (none),
``max_request_size`` (8388608)       producer settings
``sync`` (1)                        publish waits for the broker's ack (0: fire and forget;
                                    errors are then only logged, ``close`` flushes)
``session_timeout_ms`` (10000), ``heartbeat_interval_ms`` (1000), ``max_poll_interval_ms``
(300000), ``fetch_max_wait_ms`` (100), ``offset_reset`` (earliest)   consumer settings. A group
                                    join costs about session_timeout/2 on tansu. Against tansu,
                                    fetch_max_wait_ms 1/10/100/500 gave the same round-trip p50;
                                    10 costs ~0.12 core per idle consumer, 100 ~0.015
``request_timeout_ms`` (3000), ``connect_timeout_ms`` (2000)   bound every wait on an unreachable
                                    broker (then ``BrokerUnavailable``)
``high_water`` (0 = off), ``lag_groups`` (comma list), ``lag_check_ms`` (200)
                                    publish raises ``BrokerFull`` while ``depth(topic)`` (the lag of
                                    the groups named in lag_groups or consumed here) >= high_water

Groups: the interface's ``group`` on topic ``t`` is Kafka group ``<prefix>t.<group>`` (scoped
per topic, like a Redis consumer group).

Keys: ``publish(..., key=request_id)`` hashes the key to the partition, so all crops of a request
land in one partition (in order).

Delivery semantics: at-least-once. Offsets are committed by ``ack`` only (auto-commit off): per
partition the highest offset up to which EVERY delivered record has been acked, plus one. A record
that is never acked holds its partition's commit back; after a rebalance or a restart the group
re-reads from the committed offset. Acks for partitions this consumer no longer owns are dropped
(the new owner re-delivers those records).

Threads: ``publish``, ``dead_letter``, ``depth`` and ``ping`` may be called from any thread
(KafkaProducer is thread-safe, the admin client is behind a lock). kafka-python consumers are NOT
thread-safe: there is one KafkaConsumer per (topic, group, consumer), created lazily by
``consume``, and every use of it (``consume``, ``ack`` of its deliveries, ``close_consumer``) takes
that consumer's lock; call ``consume``/``ack`` for one consumer from one thread (another thread
would wait for a running poll to end).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from urllib.parse import parse_qsl, unquote, urlsplit

from brokers.base import (MAX_REASON_CHARS, Broker, BrokerError, BrokerFull, BrokerUnavailable,
                          Delivery, dead_letter_topic)
from brokers.urls import convert_option, redact_url

log = logging.getLogger(__name__)

_OPTIONS = {  # name: (type, default)
    "prefix": (str, "overhead."),
    "partitions": (int, 4),
    "replication": (int, 1),
    "acks": (str, "1"),
    "linger_ms": (int, 0),
    "batch_size": (int, 16384),
    "compression": (str, ""),
    "max_request_size": (int, 8 * 1024 * 1024),
    "sync": (bool, True),
    "session_timeout_ms": (int, 10000),
    "heartbeat_interval_ms": (int, 1000),
    "max_poll_interval_ms": (int, 300000),
    "fetch_max_wait_ms": (int, 100),
    "offset_reset": (str, "earliest"),
    "request_timeout_ms": (int, 3000),
    "connect_timeout_ms": (int, 2000),
    "high_water": (int, 0),
    "lag_groups": (str, ""),
    "lag_check_ms": (int, 200),
    "security_protocol": (str, ""),
    "sasl_mechanism": (str, "PLAIN"),
    "client_id": (str, "overhead"),
}


class _ConsumerState:
    """One KafkaConsumer and the ack bookkeeping of the records it delivered."""

    __slots__ = ("key", "consumer", "lock", "pending", "to_commit", "group", "alive_checked")

    def __init__(self, key, group):
        self.key = key
        self.group = group
        self.consumer = None
        self.lock = threading.RLock()
        # TopicPartition -> OrderedDict(offset -> acked?) in delivery order
        self.pending: dict = {}
        # TopicPartition -> next offset to commit (contiguously acked, not yet committed)
        self.to_commit: dict = {}
        # kafka-python's poll() never raises when the broker is gone: consume() checks the
        # broker itself (ping) after an empty poll, at most every ALIVE_CHECK_S
        self.alive_checked = time.monotonic()


class KafkaBroker(Broker):
    name = "kafka"
    ALIVE_CHECK_S = 2.0

    def __init__(self, bootstrap_servers: list[str], url: str = "kafka://",
                 security: dict | None = None, **cfg):
        import kafka  # noqa: F401  (fail early with ImportError if the extra is missing)

        unknown = set(cfg) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"unknown Kafka broker option(s): {sorted(unknown)}")
        self.bootstrap = bootstrap_servers
        self.url = redact_url(url)
        self.cfg = {name: default for name, (_t, default) in _OPTIONS.items()}
        self.cfg.update(cfg)
        self.prefix = self.cfg["prefix"]
        self._security = dict(security or {})
        self._lock = threading.RLock()
        self._admin_lock = threading.RLock()
        self._producer = None
        self._admin = None
        self._topics: set[str] = set()
        self._consumers: dict[tuple, _ConsumerState] = {}
        self._lag_cache: dict[str, list] = {}     # kafka topic -> [depth, monotonic time]
        self._groups_by_topic: dict[str, set] = {}
        for g in filter(None, (s.strip() for s in str(self.cfg["lag_groups"]).split(","))):
            self._groups_by_topic.setdefault("*", set()).add(g)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_url(cls, url: str = "kafka://127.0.0.1:9092", **options) -> "KafkaBroker":
        parts = urlsplit(url)
        if parts.scheme != "kafka":
            raise ValueError(f"not a Kafka URL: {redact_url(url)!r}")
        netloc = parts.netloc.rsplit("@", 1)[-1]
        servers = [s.strip() for s in netloc.split(",") if s.strip()] or ["127.0.0.1:9092"]
        ours = {}
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k not in _OPTIONS:
                raise ValueError(f"unknown Kafka broker option {k!r} in {redact_url(url)!r}")
            ours[k] = v
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"unknown Kafka broker option(s): {sorted(unknown)}")
        ours.update(options)
        cfg = {name: convert_option(name, typ, ours[name]) for name, (typ, _d) in _OPTIONS.items()
               if name in ours and ours[name] is not None}
        user = unquote(parts.username) if parts.username else os.environ.get("OVERHEAD_KAFKA_USERNAME")
        password = (unquote(parts.password) if parts.password is not None
                    else os.environ.get("OVERHEAD_KAFKA_PASSWORD"))
        security = {}
        if user and password is not None:
            security = {"security_protocol": cfg.get("security_protocol") or "SASL_PLAINTEXT",
                        "sasl_mechanism": cfg.get("sasl_mechanism", "PLAIN"),
                        "sasl_plain_username": user, "sasl_plain_password": password}
        elif cfg.get("security_protocol"):
            security = {"security_protocol": cfg["security_protocol"]}
        return cls(servers, url, security=security, **cfg)

    # ------------------------------------------------------------------ helpers
    def topic_name(self, topic: str) -> str:
        return self.prefix + topic

    @staticmethod
    def group_id(name: str, group: str) -> str:
        """Kafka group id of interface group ``group`` on Kafka topic ``name``: groups are scoped
        per topic, as Redis consumer groups are (members of one Kafka group subscribed to
        different topics would rebalance each other all the time)."""
        return f"{name}.{group}"

    def _common(self) -> dict:
        c = self.cfg
        return dict(bootstrap_servers=self.bootstrap, client_id=c["client_id"],
                    request_timeout_ms=c["request_timeout_ms"],
                    bootstrap_timeout_ms=c["connect_timeout_ms"],
                    reconnect_backoff_ms=50, reconnect_backoff_max_ms=1000,
                    **self._security)

    def _unavailable(self, exc: Exception) -> BrokerUnavailable:
        return BrokerUnavailable(f"Kafka broker at {self.url} is unavailable: "
                                 f"{type(exc).__name__}: {exc}")

    def _is_unavailable(self, exc: Exception) -> bool:
        import kafka.errors as E

        # RetriableError covers connection, timeout, metadata and coordinator errors.
        # UnknownError (-1) is what tansu answers a produce to a topic it lost in a restart.
        return isinstance(exc, (E.RetriableError, E.BrokerNotAvailableError,
                                E.UnknownTopicOrPartitionError, E.CoordinatorNotAvailableError,
                                E.NotCoordinatorError, E.UnknownError, OSError))

    def _wrap(self, exc: Exception) -> BrokerError:
        with self._lock:
            self._topics.clear()   # a restarted (memory) broker lost them: re-create (cheap)
        if self._is_unavailable(exc):
            return self._unavailable(exc)
        return BrokerError(f"Kafka broker at {self.url}: {type(exc).__name__}: {exc}")

    def _admin_client(self):
        with self._admin_lock:
            if self._admin is None:
                from kafka.admin import KafkaAdminClient

                try:
                    self._admin = KafkaAdminClient(**self._common())
                except Exception as exc:
                    raise self._wrap(exc) from exc
            return self._admin

    def _producer_client(self):
        if self._producer is None:
            with self._lock:
                if self._producer is None:
                    from kafka import KafkaProducer

                    c = self.cfg
                    acks = c["acks"].strip().lower()
                    acks = "all" if acks in ("all", "-1") else int(acks)
                    try:
                        self._producer = KafkaProducer(
                            **self._common(), acks=acks, linger_ms=c["linger_ms"],
                            batch_size=c["batch_size"], max_request_size=c["max_request_size"],
                            compression_type=c["compression"] or None,
                            max_block_ms=c["request_timeout_ms"],
                            delivery_timeout_ms=c["request_timeout_ms"] + c["linger_ms"] + 100,
                            allow_auto_create_topics=False)
                    except Exception as exc:
                        raise self._wrap(exc) from exc
                    # kafka-python 3.0.12 bug: a topic known only from the bootstrap (all-topics)
                    # metadata is never added to the producer's tracked topics; once a NEW topic
                    # is tracked, refreshes fetch only that one, the first topic's partitions
                    # lose their leader and the sender thread spins at 100% of a core
                    # ("Unknown leaders exist"). Tracking all topics avoids it (few topics here).
                    meta = getattr(self._producer, "_metadata", None)
                    if meta is not None and hasattr(meta, "need_all_topic_metadata"):
                        meta.need_all_topic_metadata = True
        return self._producer

    def ensure_topic(self, name: str) -> None:
        """Create the Kafka topic ``name`` (full name, with prefix) if missing."""
        if name in self._topics:
            return
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = self._admin_client()
        with self._admin_lock:
            try:
                admin.create_topics([NewTopic(name, self.cfg["partitions"],
                                              self.cfg["replication"])])
            except TopicAlreadyExistsError:
                pass
            except Exception as exc:
                raise self._wrap(exc) from exc
        with self._lock:
            self._topics.add(name)

    # ------------------------------------------------------------------ publish
    def publish(self, topic: str, payload: bytes, key: str | None = None,
                timeout_s: float = 1.0) -> None:
        name = self.topic_name(topic)
        self.ensure_topic(name)
        if self.cfg["high_water"] > 0:
            self._wait_below_high_water(topic, name, timeout_s)
        self._send(name, bytes(payload), None if key is None else key.encode())

    def _send(self, name: str, value: bytes, key: bytes | None, headers=None) -> None:
        producer = self._producer_client()
        try:
            fut = producer.send(name, value=value, key=key, headers=headers)
            if self.cfg["sync"]:
                fut.get(timeout=(self.cfg["request_timeout_ms"] + self.cfg["linger_ms"]) / 1000)
            else:
                fut.add_errback(lambda exc: log.warning("Kafka publish to %s failed: %s",
                                                        name, exc))
        except Exception as exc:
            raise self._wrap(exc) from exc

    def _wait_below_high_water(self, topic: str, name: str, timeout_s: float) -> None:
        hw = self.cfg["high_water"]
        deadline = time.monotonic() + max(0.0, timeout_s)
        ttl = self.cfg["lag_check_ms"] / 1000
        while True:
            now = time.monotonic()
            with self._lock:
                cached = self._lag_cache.get(name)
            if cached is None or now - cached[1] > ttl:
                d = self._lag(topic, name)
                cached = [d, time.monotonic()]
                with self._lock:
                    self._lag_cache[name] = cached
            if cached[0] < hw:
                with self._lock:
                    cached[0] += 1     # count our own publishes until the next check
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerFull(f"Kafka topic {name!r} at {self.url} has a consumer lag of "
                                 f">= {hw} (high-water mark) after {timeout_s:.3g} s")
            time.sleep(min(left, max(0.005, ttl / 4)))
            with self._lock:
                self._lag_cache.pop(name, None)

    # ------------------------------------------------------------------ consume / ack
    def _state(self, name: str, group: str, consumer: str) -> _ConsumerState:
        key = (name, group, consumer)
        with self._lock:
            st = self._consumers.get(key)
            if st is None:
                st = self._consumers[key] = _ConsumerState(key, group)
                self._groups_by_topic.setdefault(name, set()).add(group)
        if st.consumer is None:
            with st.lock:
                if st.consumer is None:
                    st.consumer = self._new_consumer(st, name, group, consumer)
        return st

    def _new_consumer(self, st: _ConsumerState, name: str, group: str, consumer: str):
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        c = self.cfg
        common = self._common()
        common["client_id"] = f"{c['client_id']}-{consumer}"
        broker = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                # Commit what was fully acked, then forget the partitions' in-flight records:
                # their acks can no longer be committed by us (the new owner re-delivers them).
                commit = {tp: st.to_commit[tp] for tp in revoked if tp in st.to_commit}
                if commit:
                    try:
                        broker._commit(st, commit)
                    except Exception as exc:   # noqa: BLE001 - re-delivery is the fallback
                        log.warning("commit on revoke failed for %s: %s", st.key, exc)
                for tp in revoked:
                    st.pending.pop(tp, None)
                    st.to_commit.pop(tp, None)

            def on_partitions_assigned(self, assigned):
                pass

        try:
            kc = KafkaConsumer(
                **common, group_id=self.group_id(name, group), enable_auto_commit=False,
                auto_offset_reset=c["offset_reset"],
                session_timeout_ms=c["session_timeout_ms"],
                heartbeat_interval_ms=c["heartbeat_interval_ms"],
                max_poll_interval_ms=c["max_poll_interval_ms"],
                fetch_max_wait_ms=c["fetch_max_wait_ms"],
                max_partition_fetch_bytes=max(1048576, c["max_request_size"]),
                fetch_max_bytes=max(52428800, c["max_request_size"]),
                allow_auto_create_topics=False)
            kc.subscribe([name], listener=_Listener())
        except Exception as exc:
            raise self._wrap(exc) from exc
        return kc

    def consume(self, topic: str, group: str, consumer: str, max_messages: int = 16,
                timeout_s: float = 0.1) -> list[Delivery]:
        name = self.topic_name(topic)
        self.ensure_topic(name)
        st = self._state(name, group, consumer)
        with st.lock:
            if st.consumer is None:          # closed meanwhile
                return []
            self._flush_commits(st)
            try:
                batches = st.consumer.poll(timeout_ms=max(0, int(timeout_s * 1000)),
                                           max_records=max(1, int(max_messages)))
            except Exception as exc:
                raise self._wrap(exc) from exc
            now = time.time_ns()
            out = []
            if not batches:
                mono = time.monotonic()
                if mono - st.alive_checked >= self.ALIVE_CHECK_S:
                    st.alive_checked = mono
                    if not self.ping():
                        raise BrokerUnavailable(f"Kafka broker at {self.url} is unavailable "
                                                f"(consumer {consumer!r} of {name!r} gets no "
                                                f"answer)")
                return out
            for tp, records in batches.items():
                q = st.pending.setdefault(tp, OrderedDict())
                for r in records:
                    q[r.offset] = False
                    out.append(Delivery(topic=topic, payload=r.value or b"", deliver_ns=now,
                                        tag=(st.key, tp, r.offset),
                                        key=None if r.key is None else
                                        r.key.decode("utf-8", "replace")))
            return out

    def ack(self, topic: str, group: str, deliveries: list[Delivery]) -> None:
        by_state: dict[tuple, list] = {}
        for d in deliveries:
            by_state.setdefault(d.tag[0], []).append(d.tag)
        for key, tags in by_state.items():
            with self._lock:
                st = self._consumers.get(key)
            if st is None:
                continue            # consumer closed: its records are re-delivered
            with st.lock:
                if st.consumer is None:
                    continue
                touched = set()
                for _key, tp, offset in tags:
                    q = st.pending.get(tp)
                    if q is not None and offset in q:
                        q[offset] = True
                        touched.add(tp)
                for tp in touched:
                    q = st.pending[tp]
                    nxt = None
                    while q:
                        off, done = next(iter(q.items()))
                        if not done:
                            break
                        q.popitem(last=False)
                        nxt = off + 1
                    if nxt is not None:
                        st.to_commit[tp] = nxt
                self._flush_commits(st)

    def _flush_commits(self, st: _ConsumerState) -> None:
        if not st.to_commit:
            return
        self._commit(st, dict(st.to_commit))

    def _commit(self, st: _ConsumerState, offsets: dict) -> None:
        from kafka.errors import CommitFailedError, IllegalStateError
        from kafka.structs import OffsetAndMetadata

        try:
            st.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()},
                               timeout_ms=self.cfg["request_timeout_ms"])
        except (CommitFailedError, IllegalStateError) as exc:
            # Rebalanced away: the new owner re-delivers from the last committed offset.
            log.warning("Kafka commit for %s dropped after a rebalance: %s", st.key, exc)
            for tp in offsets:
                st.to_commit.pop(tp, None)
            return
        except Exception as exc:
            raise self._wrap(exc) from exc   # kept in to_commit: retried on the next call
        for tp, off in offsets.items():
            if st.to_commit.get(tp) == off:
                del st.to_commit[tp]

    # ------------------------------------------------------------------ DLQ / depth / admin
    def dead_letter(self, topic: str, payload: bytes, reason: str) -> None:
        """Produce to ``<prefix><topic>.dlq``: value = payload, key = reason (as every broker),
        headers ``reason``, ``topic``, ``t`` (time.time_ns())."""
        reason = str(reason)[:MAX_REASON_CHARS]
        name = self.topic_name(dead_letter_topic(topic))
        self.ensure_topic(name)
        self._send(name, bytes(payload), reason.encode(),
                   headers=[("reason", reason.encode()), ("topic", topic.encode()),
                            ("t", str(time.time_ns()).encode())])

    def _lag(self, topic: str, name: str) -> int:
        """Largest lag (end offset - committed offset, summed over partitions) of the groups
        known for ``topic``; raises BrokerUnavailable."""
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        with self._lock:
            groups = set(self._groups_by_topic.get(name, ())) | set(
                self._groups_by_topic.get("*", ()))
        if not groups:
            return -1
        admin = self._admin_client()
        with self._admin_lock:
            try:
                parts = self._partitions(admin, name)
                ends = admin.list_partition_offsets(
                    {TopicPartition(name, p): OffsetSpec.LATEST for p in parts})
                tps = [TopicPartition(name, p) for p in parts]
                committed = {}
                for g in groups:
                    gid = self.group_id(name, g)
                    committed[g] = admin.list_group_offsets({gid: tps}).get(gid, {})
            except Exception as exc:
                raise self._wrap(exc) from exc
        best = 0
        for g in groups:
            offs = committed.get(g, {})
            lag = 0
            for tp, end in ends.items():
                c = offs.get(tp)
                c_off = c.offset if c is not None and c.offset is not None and c.offset >= 0 else 0
                lag += max(0, end.offset - c_off)
            best = max(best, lag)
        return best

    @staticmethod
    def _partitions(admin, name: str) -> list[int]:
        desc = admin.describe_topics([name])
        for t in desc:
            if t.get("name") == name and not t.get("error_code"):
                return sorted(p["partition_index"] for p in t["partitions"])
        from kafka.errors import UnknownTopicOrPartitionError

        raise UnknownTopicOrPartitionError(name)

    def depth(self, topic: str) -> int:
        """Consumer lag of ``topic`` for the groups consumed here or named in ``lag_groups``
        (the largest); -1 if no group is known or the broker cannot be reached."""
        name = self.topic_name(topic)
        try:
            return self._lag(topic, name)
        except BrokerError:
            return -1

    def ping(self) -> bool:
        try:
            with self._admin_lock:
                self._admin_client().list_topics()
            return True
        except Exception:
            return False

    def assignment(self, topic: str, group: str, consumer: str) -> set[int]:
        """Partitions currently assigned to this consumer (empty before it joined the group)."""
        with self._lock:
            st = self._consumers.get((self.topic_name(topic), group, consumer))
        if st is None:
            return set()
        with st.lock:
            return set() if st.consumer is None else {tp.partition
                                                      for tp in st.consumer.assignment()}

    def flush(self, timeout_s: float = 5.0) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(timeout=timeout_s)
            except Exception as exc:
                raise self._wrap(exc) from exc

    def close_consumer(self, topic: str, group: str, consumer: str) -> None:
        """Close one consumer WITHOUT committing its unacked deliveries (it leaves the group;
        another member takes its partitions from the committed offsets)."""
        with self._lock:
            st = self._consumers.pop((self.topic_name(topic), group, consumer), None)
        if st is not None:
            self._close_state(st)

    @staticmethod
    def _close_state(st: _ConsumerState) -> None:
        with st.lock:
            kc, st.consumer = st.consumer, None
            st.pending.clear()
            st.to_commit.clear()
        if kc is not None:
            try:
                kc.close(autocommit=False)
            except Exception as exc:  # noqa: BLE001
                log.debug("closing Kafka consumer %s: %s", st.key, exc)

    def delete_topic(self, topic: str) -> None:
        name = self.topic_name(topic)
        admin = self._admin_client()
        with self._admin_lock:
            try:
                admin.delete_topics([name])
            except Exception as exc:
                raise self._wrap(exc) from exc
        with self._lock:
            self._topics.discard(name)

    def close(self) -> None:
        with self._lock:
            states = list(self._consumers.values())
            self._consumers.clear()
            producer, self._producer = self._producer, None
            admin, self._admin = self._admin, None
        for st in states:
            self._close_state(st)
        if producer is not None:
            try:
                producer.close(timeout=2)
            except Exception as exc:  # noqa: BLE001
                log.debug("closing Kafka producer: %s", exc)
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001
                pass
