"""Kafka broker (kafka-python): a topic per stage with N partitions, consumer groups, manual commit.

URL, options and credentials: ``brokers.kafka_config`` (``kafka://host:port?partitions=..``);
topic creation, lag and liveness: ``brokers.kafka_admin``. This module: publish, consume, ack.

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
import threading
import time

from brokers import kafka_config
from brokers.base import (MAX_REASON_CHARS, Broker, BrokerError, BrokerFull, BrokerUnavailable,
                          Delivery, dead_letter_topic)
from brokers.kafka_admin import KafkaAdmin
from brokers.kafka_offsets import ConsumerState as _ConsumerState
from brokers.urls import redact_url
from overhead.contract.clock import now_ns

log = logging.getLogger(__name__)


class KafkaBroker(Broker):
    name = "kafka"
    ALIVE_CHECK_S = 2.0

    def __init__(self, bootstrap_servers: list[str], url: str = "kafka://",
                 security: dict | None = None, **cfg):
        import kafka  # noqa: F401  (fail early with ImportError if the extra is missing)

        kafka_config.check_options(cfg)
        self.bootstrap = bootstrap_servers
        self.url = redact_url(url)
        self.cfg = kafka_config.defaults()
        self.cfg.update(cfg)
        self.prefix = self.cfg["prefix"]
        self._security = dict(security or {})
        self._lock = threading.RLock()
        self._producer = None
        self._admin = KafkaAdmin(self._common(), self._wrap)
        self._topics: set[str] = set()
        self._consumers: dict[tuple, _ConsumerState] = {}
        self._lag_cache: dict[str, list] = {}     # kafka topic -> [depth, monotonic time]
        self._groups_by_topic: dict[str, set] = {}
        for g in filter(None, (s.strip() for s in str(self.cfg["lag_groups"]).split(","))):
            self._groups_by_topic.setdefault("*", set()).add(g)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_url(cls, url: str = "kafka://127.0.0.1:9092", **options) -> "KafkaBroker":
        servers, cfg, security = kafka_config.parse_url(url, options)
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
        return kafka_config.client_settings(self.bootstrap, self.cfg, self._security)

    def _unavailable(self, exc: Exception) -> BrokerUnavailable:
        return BrokerUnavailable(f"Kafka broker at {self.url} is unavailable: "
                                 f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _is_unavailable(exc: Exception) -> bool:
        return kafka_config.is_unavailable(exc)

    def _wrap(self, exc: Exception) -> BrokerError:
        with self._lock:
            self._topics.clear()   # a restarted (memory) broker lost them: re-create (cheap)
        if self._is_unavailable(exc):
            return self._unavailable(exc)
        return BrokerError(f"Kafka broker at {self.url}: {type(exc).__name__}: {exc}")

    def _producer_client(self):
        if self._producer is None:
            with self._lock:
                if self._producer is None:
                    from kafka import KafkaProducer

                    try:
                        self._producer = KafkaProducer(**self._common(),
                                                       **kafka_config.producer_settings(self.cfg))
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
        self._admin.create_topic(name, self.cfg["partitions"], self.cfg["replication"])
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
                st.forget(revoked)

            def on_partitions_assigned(self, assigned):
                pass

        try:
            kc = KafkaConsumer(**common, group_id=self.group_id(name, group),
                               **kafka_config.consumer_settings(c))
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
            now = now_ns()
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
                for r in records:
                    st.delivered(tp, r.offset)
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
                st.acked((tp, offset) for _key, tp, offset in tags)
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
        """Largest lag of the groups known for ``topic``; raises BrokerUnavailable."""
        with self._lock:
            groups = set(self._groups_by_topic.get(name, ())) | set(
                self._groups_by_topic.get("*", ()))
        return self._admin.lag(name, [self.group_id(name, g) for g in sorted(groups)])

    def depth(self, topic: str) -> int:
        """Consumer lag of ``topic`` for the groups consumed here or named in ``lag_groups``
        (the largest); -1 if no group is known or the broker cannot be reached."""
        name = self.topic_name(topic)
        try:
            return self._lag(topic, name)
        except BrokerError:
            return -1

    def ping(self) -> bool:
        return self._admin.ping()

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
        self._admin.delete_topic(name)
        with self._lock:
            self._topics.discard(name)

    def close(self) -> None:
        with self._lock:
            states = list(self._consumers.values())
            self._consumers.clear()
            producer, self._producer = self._producer, None
        for st in states:
            self._close_state(st)
        if producer is not None:
            try:
                producer.close(timeout=2)
            except Exception as exc:  # noqa: BLE001
                log.debug("closing Kafka producer: %s", exc)
        self._admin.close()
