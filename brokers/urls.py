"""Broker URL helpers shared by the Redis and Kafka adapters: option parsing and redaction."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def to_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def convert_option(name: str, typ: type, value):
    """``value`` from a URL query string as ``typ``; a clear error names the option."""
    try:
        return to_bool(value) if typ is bool else typ(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"broker option {name}={value!r} is not a valid {typ.__name__}") from exc


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for error messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
