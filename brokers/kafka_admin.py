"""The Kafka broker's admin side: topic creation and deletion, consumer lag, liveness.

One ``KafkaAdminClient`` per broker, created lazily, every use behind one lock (so ``depth``,
``ping`` and topic creation may be called from any thread). Errors are passed to ``wrap`` (the
broker's mapping to ``BrokerUnavailable`` / ``BrokerError``).
"""
from __future__ import annotations

import threading
from typing import Callable


class KafkaAdmin:
    def __init__(self, settings: dict, wrap: Callable[[Exception], Exception]):
        self.settings = settings
        self.wrap = wrap
        self.lock = threading.RLock()
        self._client = None

    def client(self):
        with self.lock:
            if self._client is None:
                from kafka.admin import KafkaAdminClient

                try:
                    self._client = KafkaAdminClient(**self.settings)
                except Exception as exc:
                    raise self.wrap(exc) from exc
            return self._client

    def create_topic(self, name: str, partitions: int, replication: int) -> None:
        """Create topic ``name`` unless it exists."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = self.client()
        with self.lock:
            try:
                admin.create_topics([NewTopic(name, partitions, replication)])
            except TopicAlreadyExistsError:
                pass
            except Exception as exc:
                raise self.wrap(exc) from exc

    def delete_topic(self, name: str) -> None:
        admin = self.client()
        with self.lock:
            try:
                admin.delete_topics([name])
            except Exception as exc:
                raise self.wrap(exc) from exc

    def lag(self, name: str, group_ids: list[str]) -> int:
        """Largest lag (end offset - committed offset, summed over partitions) of ``group_ids`` on
        topic ``name``; -1 without groups; raises the wrapped error."""
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        if not group_ids:
            return -1
        admin = self.client()
        with self.lock:
            try:
                parts = self.partitions(admin, name)
                ends = admin.list_partition_offsets(
                    {TopicPartition(name, p): OffsetSpec.LATEST for p in parts})
                tps = [TopicPartition(name, p) for p in parts]
                committed = {gid: admin.list_group_offsets({gid: tps}).get(gid, {})
                             for gid in group_ids}
            except Exception as exc:
                raise self.wrap(exc) from exc
        best = 0
        for offs in committed.values():
            lag = 0
            for tp, end in ends.items():
                c = offs.get(tp)
                c_off = c.offset if c is not None and c.offset is not None and c.offset >= 0 else 0
                lag += max(0, end.offset - c_off)
            best = max(best, lag)
        return best

    @staticmethod
    def partitions(admin, name: str) -> list[int]:
        desc = admin.describe_topics([name])
        for t in desc:
            if t.get("name") == name and not t.get("error_code"):
                return sorted(p["partition_index"] for p in t["partitions"])
        from kafka.errors import UnknownTopicOrPartitionError

        raise UnknownTopicOrPartitionError(name)

    def ping(self) -> bool:
        try:
            with self.lock:
                self.client().list_topics()
            return True
        except Exception:
            return False

    def close(self) -> None:
        with self.lock:
            admin, self._client = self._client, None
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001
                pass
