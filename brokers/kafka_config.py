"""Kafka broker configuration: the URL, its options, credentials and the client settings.

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
"""
from __future__ import annotations

import os
from urllib.parse import parse_qsl, unquote, urlsplit

from brokers.urls import convert_option, redact_url

OPTIONS = {  # name: (type, default)
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


def check_options(cfg: dict) -> None:
    unknown = set(cfg) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown Kafka broker option(s): {sorted(unknown)}")


def defaults() -> dict:
    return {name: default for name, (_t, default) in OPTIONS.items()}


def parse_url(url: str, options: dict) -> tuple[list[str], dict, dict]:
    """``(bootstrap servers, typed options, security settings)`` of a ``kafka://`` URL; keyword
    ``options`` override the query string."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ValueError(f"not a Kafka URL: {redact_url(url)!r}")
    netloc = parts.netloc.rsplit("@", 1)[-1]
    servers = [s.strip() for s in netloc.split(",") if s.strip()] or ["127.0.0.1:9092"]
    ours = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k not in OPTIONS:
            raise ValueError(f"unknown Kafka broker option {k!r} in {redact_url(url)!r}")
        ours[k] = v
    check_options(options)
    ours.update(options)
    cfg = {name: convert_option(name, typ, ours[name]) for name, (typ, _d) in OPTIONS.items()
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
    return servers, cfg, security


def client_settings(bootstrap: list[str], cfg: dict, security: dict) -> dict:
    """Settings every kafka-python client of the broker shares (timeouts, backoff, security)."""
    return dict(bootstrap_servers=bootstrap, client_id=cfg["client_id"],
                request_timeout_ms=cfg["request_timeout_ms"],
                bootstrap_timeout_ms=cfg["connect_timeout_ms"],
                reconnect_backoff_ms=50, reconnect_backoff_max_ms=1000, **security)


def producer_settings(cfg: dict) -> dict:
    acks = cfg["acks"].strip().lower()
    return dict(acks="all" if acks in ("all", "-1") else int(acks), linger_ms=cfg["linger_ms"],
                batch_size=cfg["batch_size"], max_request_size=cfg["max_request_size"],
                compression_type=cfg["compression"] or None,
                max_block_ms=cfg["request_timeout_ms"],
                delivery_timeout_ms=cfg["request_timeout_ms"] + cfg["linger_ms"] + 100,
                allow_auto_create_topics=False)


def consumer_settings(cfg: dict) -> dict:
    return dict(enable_auto_commit=False, auto_offset_reset=cfg["offset_reset"],
                session_timeout_ms=cfg["session_timeout_ms"],
                heartbeat_interval_ms=cfg["heartbeat_interval_ms"],
                max_poll_interval_ms=cfg["max_poll_interval_ms"],
                fetch_max_wait_ms=cfg["fetch_max_wait_ms"],
                max_partition_fetch_bytes=max(1048576, cfg["max_request_size"]),
                fetch_max_bytes=max(52428800, cfg["max_request_size"]),
                allow_auto_create_topics=False)


def is_unavailable(exc: Exception) -> bool:
    """Whether a kafka-python error means the broker cannot be reached (``BrokerUnavailable``)."""
    import kafka.errors as E

    # RetriableError covers connection, timeout, metadata and coordinator errors.
    # UnknownError (-1) is what tansu answers a produce to a topic it lost in a restart.
    return isinstance(exc, (E.RetriableError, E.BrokerNotAvailableError,
                            E.UnknownTopicOrPartitionError, E.CoordinatorNotAvailableError,
                            E.NotCoordinatorError, E.UnknownError, OSError))
