"""Brokers between the detection and the classification stage.

One small interface (``brokers.base.Broker``: publish / consume / ack) and one module per broker.
``open_broker(url)`` picks the implementation from the URL scheme.
"""
from brokers.base import Broker, BrokerError, BrokerFull, BrokerUnavailable, Delivery
from brokers.message import Message, MalformedMessage, decode_message, encode_message


def open_broker(url: str = "memory://", **options) -> Broker:
    """``memory://[?maxsize=N]`` now; ``redis://`` and ``kafka://`` come with their modules."""
    scheme = url.split("://", 1)[0] if "://" in url else url
    if scheme == "memory":
        from brokers.memory import MemoryBroker

        return MemoryBroker.from_url(url, **options)
    raise ValueError(f"unsupported broker URL {url!r}: use memory:// (redis:// and kafka:// are not built yet)")


__all__ = ["Broker", "BrokerError", "BrokerFull", "BrokerUnavailable", "Delivery", "Message",
           "MalformedMessage", "decode_message", "encode_message", "open_broker"]
