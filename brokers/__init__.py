"""Brokers between the detection and the classification stage.

One small interface (``brokers.base.Broker``: publish / consume / ack) and one module per broker.
``open_broker(url)`` picks the implementation from the URL scheme.
"""
from brokers.base import Broker, BrokerError, BrokerFull, BrokerUnavailable, Delivery
from brokers.message import Message, MalformedMessage, decode_message, encode_message


def open_broker(url: str = "memory://", **options) -> Broker:
    """``memory://[?maxsize=N]``, ``redis[s]://host:port/db?maxlen=..`` (``brokers.redis_streams``)
    or ``kafka://host:port?partitions=..`` (``brokers.kafka``); options override the query."""
    scheme = url.split("://", 1)[0] if "://" in url else url
    if scheme == "memory":
        from brokers.memory import MemoryBroker

        return MemoryBroker.from_url(url, **options)
    if scheme in ("redis", "rediss"):
        from brokers.redis_streams import RedisStreamsBroker

        return RedisStreamsBroker.from_url(url, **options)
    if scheme == "kafka":
        from brokers.kafka import KafkaBroker

        return KafkaBroker.from_url(url, **options)
    from brokers.urls import redact_url

    raise ValueError(f"unsupported broker URL {redact_url(url)!r}: use memory://, redis://, "
                     f"rediss:// or kafka://")


__all__ = ["Broker", "BrokerError", "BrokerFull", "BrokerUnavailable", "Delivery", "Message",
           "MalformedMessage", "decode_message", "encode_message", "open_broker"]
