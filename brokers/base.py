"""The broker interface every implementation (memory, Redis Streams, Kafka) provides.

Semantics are at-least-once: a consumed delivery stays owned by its consumer until ``ack``;
an implementation that can recover unacknowledged work (Redis pending entries, Kafka offsets)
re-delivers it after a consumer dies. Payloads are ``bytes`` (see ``brokers.message``), never
pickled objects. Calls are blocking; async callers use a thread.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from overhead.contract.topics import dead_letter_topic  # noqa: F401  (the brokers' DLQ naming)


class BrokerError(RuntimeError):
    """Base class for broker failures the gateway maps to HTTP errors."""


class BrokerFull(BrokerError):
    """The bounded queue/stream is at its limit: the caller should shed load (HTTP 503)."""


class BrokerUnavailable(BrokerError):
    """The broker server cannot be reached (HTTP 503, retry later)."""


MAX_REASON_CHARS = 1000


@dataclass(slots=True)
class Delivery:
    topic: str
    payload: bytes
    deliver_ns: int          # overhead.contract.clock.now_ns() when the consumer received it
    tag: object = None       # implementation's handle for ack (stream id, offset, ...)
    key: str | None = None


class Broker(ABC):
    name: str = "broker"

    @abstractmethod
    def publish(self, topic: str, payload: bytes, key: str | None = None,
                timeout_s: float = 1.0) -> None:
        """Append one message. Raises ``BrokerFull`` if still full after ``timeout_s``."""

    @abstractmethod
    def consume(self, topic: str, group: str, consumer: str, max_messages: int = 16,
                timeout_s: float = 0.1) -> list[Delivery]:
        """Up to ``max_messages`` deliveries for this consumer group; waits up to ``timeout_s``
        for the first one and returns ``[]`` if none came."""

    @abstractmethod
    def ack(self, topic: str, group: str, deliveries: list[Delivery]) -> None:
        """Mark deliveries processed; they will not be delivered to this group again."""

    def dead_letter(self, topic: str, payload: bytes, reason: str) -> None:
        """Park a message that cannot be processed in ``dead_letter_topic(topic)``
        (``<topic>.dlq``): the payload unchanged, the reason as the message key, so consuming the
        DLQ yields ``Delivery(payload=<original bytes>, key=<reason>)`` on every broker.
        Implementations may also store the reason in a native field/header and bound the DLQ."""
        self.publish(dead_letter_topic(topic), payload, key=str(reason)[:MAX_REASON_CHARS])

    def depth(self, topic: str) -> int:
        """Messages waiting in ``topic`` (for queue-depth sampling); -1 if unknown."""
        return -1

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
