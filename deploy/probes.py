"""Readiness probes: small functions that ask a service whether it serves, never its log.

Each returns ``True`` once the service answers as a ready one would, ``False`` otherwise (not
listening yet, loading, refusing); none raises for a service that is merely not up yet.

* ``http_ok(url)``                 GET -> 200 (gateway ``/healthz``, Triton ``/v2/health/ready``)
* ``redis_ping(host, port)``       ``PING`` -> ``+PONG`` (not ``-LOADING`` while the AOF replays)
* ``kafka_metadata(host, port)``   a Kafka Metadata request answered with at least one broker
* ``connected_to(pid, port)``      a process holds a connection to a port (a worker to its broker)
"""
from __future__ import annotations

import socket
import struct
import urllib.error
import urllib.request


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def redis_ping(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def kafka_metadata(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """A raw Metadata v1 request (all topics); ready when the answer names at least one broker."""
    client = b"overhead-probe"
    correlation = 7
    # header: api_key 3 (Metadata), api_version 1, correlation id, client id; body: topics null
    req = struct.pack(">hhih", 3, 1, correlation, len(client)) + client + struct.pack(">i", -1)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(struct.pack(">i", len(req)) + req)
            size = struct.unpack(">i", _recv_exact(s, 4))[0]
            body = _recv_exact(s, size)
    except (OSError, ConnectionError, struct.error):
        return False
    if len(body) < 8:
        return False
    got_correlation, n_brokers = struct.unpack(">ii", body[:8])
    return got_correlation == correlation and n_brokers >= 1


def connected_to(pid: int, port: int) -> bool:
    """Process ``pid`` has an established TCP connection to ``port`` (a classifier worker that
    opened its broker: it does so after loading its model, on its first consume). Also for a
    process in another network namespace (psutil reads only ours: then ``/proc/PID/net/tcp*``)."""
    import psutil

    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
               for c in conns) or _connected_in_own_netns(pid, port)


def _connected_in_own_netns(pid: int, port: int) -> bool:
    """The process's sockets (``/proc/PID/fd``) in the TCP tables of its own network namespace."""
    import os

    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        inodes = {ln[8:-1] for ln in links if ln.startswith("socket:[")}
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}") as f:
                for line in f.readlines()[1:]:
                    col = line.split()   # sl local rem st tx:rx tr:when retrnsmt uid timeout inode
                    if col[3] == "01" and int(col[2].rsplit(":", 1)[1], 16) == port \
                            and col[9] in inodes:
                        return True
    except (OSError, IndexError, ValueError):
        return False
    return False
