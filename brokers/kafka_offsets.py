"""Ack bookkeeping of one Kafka consumer: which offset each partition may commit.

Per partition the records are kept in delivery order with an acked flag; the partition may commit
the highest offset up to which EVERY delivered record has been acked, plus one. A record that is
never acked holds its partition's commit back (after a rebalance or a restart the group re-reads
from the committed offset). Pure bookkeeping: the broker holds ``lock`` around every use.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict


class ConsumerState:
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

    def delivered(self, tp, offset: int) -> None:
        self.pending.setdefault(tp, OrderedDict())[offset] = False

    def acked(self, tps_offsets) -> None:
        """Mark ``(tp, offset)`` pairs acked; advance ``to_commit`` past each partition's
        contiguously acked head. Offsets of partitions no longer held are ignored."""
        touched = set()
        for tp, offset in tps_offsets:
            q = self.pending.get(tp)
            if q is not None and offset in q:
                q[offset] = True
                touched.add(tp)
        for tp in touched:
            q = self.pending[tp]
            nxt = None
            while q:
                off, done = next(iter(q.items()))
                if not done:
                    break
                q.popitem(last=False)
                nxt = off + 1
            if nxt is not None:
                self.to_commit[tp] = nxt

    def forget(self, tps) -> None:
        """Drop the in-flight records of partitions this consumer lost (the new owner
        re-delivers them)."""
        for tp in tps:
            self.pending.pop(tp, None)
            self.to_commit.pop(tp, None)
