"""The one way Overhead starts, watches and stops a child process.

    with ManagedProcess("gateway", argv, log_path, ready=lambda: http_ok(url + "/healthz")) as p:
        p.pid, p.alive()            # its own session: process group id == pid
    # stopped: SIGTERM to the process, SIGKILL after the timeout, then its whole group

* Start: ``argv`` in its own session (``start_new_session``), stdin closed, stdout and stderr
  appended to ``log_path`` (the command line first). ``start()`` polls ``ready()`` — a probe of
  the service (``deploy/probes.py``), never its log — until it is true; a process that exits
  first, or is not ready in time, raises ``ProcessFailed`` with the tail of its log. ``ready``
  may itself raise ``ProcessFailed`` (a service that says it will never be ready).
* Stop, by PID (``stop()``): ``stop_signal`` (SIGTERM; tansu wants SIGINT) to the process itself
  so it shuts down cleanly (the gateway flushes spans, Triton writes its trace, its stubs are
  still there to unload), ``psutil.wait_procs`` up to the timeout, then SIGKILL to the process and
  everything left in its process group and its descendants. ``stopped_by`` says which:
  ``"exited"`` (before we asked), the signal's name, or ``"SIGKILL"``.
* ``prefix``: argv run in front of the command, e.g. ``["ip", "netns", "exec", NS]`` to start it
  in a network namespace (a test host of its own); the wrappers must ``exec`` the command so the
  PID stays the service's (``ip netns exec``, ``unshare`` without ``--fork``, ``sh -c 'exec ...'``).
* ``kill()`` is a crash (SIGKILL, no clean shutdown: the kill -9 tests); ``restart()`` stops and
  starts the same argv (same ports). Every process still running at interpreter exit is stopped.
"""
from __future__ import annotations

import atexit
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil

REPO = Path(__file__).resolve().parents[1]
_USED_PORTS: set[int] = set()
_RUNNING: dict[int, "ManagedProcess"] = {}


class ProcessFailed(RuntimeError):
    """A process exited during start-up, or was not ready in time (message: with its log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host``, never handed out twice by this process (a server
    restarted on its port, or tansu keeping a port busy after a stop, cannot collide)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _USED_PORTS:
            _USED_PORTS.add(port)
            return port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def log_tail(path: str | os.PathLike, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no log at {path})"


class ManagedProcess:
    """One child process: own session, log file, readiness probe, stop by PID."""

    stop_signal = signal.SIGTERM

    def __init__(self, name: str, argv: list[str], log_path: str | os.PathLike,
                 ready: Callable[[], bool] | None = None, env: dict | None = None,
                 cwd: str | os.PathLike | None = None, stop_timeout_s: float = 10.0,
                 stop_signal: int | None = None, retry_early_exit: bool = False,
                 prefix: list[str] | None = None):
        self.name, self.argv = name, list(argv)
        self.prefix = list(prefix or [])
        self.log_path = Path(log_path)
        self._ready = ready
        self.env, self.cwd = env, cwd or REPO
        self.stop_timeout_s = stop_timeout_s
        if stop_signal is not None:
            self.stop_signal = stop_signal
        self.retry_early_exit = retry_early_exit   # restart on a port the OS still holds
        self.proc: psutil.Popen | None = None
        self.stopped_by: str | None = None
        self.returncode: int | None = None
        self.log_offset = 0

    # -- state ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    running = alive   # the older name

    @property
    def exit_code(self) -> int | None:
        """The exit code once it exited (``None`` while it runs or before it started)."""
        return self.proc.poll() if self.proc is not None else self.returncode

    def ready(self) -> bool:
        return self._ready() if self._ready is not None else True

    def log_tail(self, chars: int = 3000) -> str:
        return log_tail(self.log_path, chars)

    def log_since_start(self) -> str:
        """What the process wrote since its last start (logs are appended across restarts)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    # -- start ---------------------------------------------------------------------------------
    def argv_now(self) -> list[str]:
        """The command to run (subclasses build it late, e.g. after writing a repository)."""
        return self.argv

    def spawn(self) -> "ManagedProcess":
        """Start without waiting for readiness."""
        if self.alive():
            return self
        argv = [*self.prefix, *self.argv_now()]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.log_offset = log.tell()
            log.write(f"$ {shlex.join(map(str, argv))}\n".encode())
            log.flush()
            self.proc = psutil.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(self.cwd), env=self.env,
                                     start_new_session=True)
        self.stopped_by = self.returncode = None
        _RUNNING[self.proc.pid] = self
        return self

    def start(self, timeout_s: float = 60.0) -> "ManagedProcess":
        """Start and wait until ``ready()``; raise ``ProcessFailed`` (log tail) otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.spawn()
            try:
                if self._wait_ready(deadline):
                    return self
            except BaseException:   # ProcessFailed from ready(), Ctrl-C: nothing left running
                self.stop(2.0)
                raise
            hung = self.alive()
            rc = self.stop(2.0)
            if hung:
                raise ProcessFailed(f"{self.name} not ready after {timeout_s:g} s; log "
                                    f"{self.log_path}:\n{self.log_tail()}")
            if not self.retry_early_exit or time.monotonic() >= deadline:
                raise ProcessFailed(f"{self.name} exited (code {rc}) during start-up; log "
                                    f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(0.2)   # most likely its port is still held: try again

    def _wait_ready(self, deadline: float) -> bool:
        """True when ready; False when it exited or the deadline passed (still running)."""
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if self.ready():
                return True
            time.sleep(0.05)
        return False

    # -- stop ----------------------------------------------------------------------------------
    def stop(self, timeout_s: float | None = None) -> int | None:
        """Polite signal to the PID, wait, then SIGKILL it and its group. Returns the exit code
        (``None`` if it never started); negative = killed by that signal."""
        proc = self.proc
        if proc is None:
            return self.returncode
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        descendants = _descendants(proc)
        if proc.poll() is not None:
            self.stopped_by = self.stopped_by or "exited"
        else:
            _signal(proc, self.stop_signal)
            _, alive = psutil.wait_procs([proc], timeout=timeout_s)
            sig = signal.Signals(self.stop_signal).name
            self.stopped_by = "SIGKILL" if alive else sig
            if alive:
                print(f"{self.name} (pid {proc.pid}) did not stop within {timeout_s:g} s after "
                      f"{sig}; killing its process group", file=sys.stderr, flush=True)
        _kill_group(proc, descendants)
        _RUNNING.pop(proc.pid, None)
        self.returncode = _exit_code(proc)
        self.proc = None
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL at once (a crash: no clean shutdown), and the rest of its group."""
        proc = self.proc
        if proc is None:
            return self.returncode
        _kill_group(proc, _descendants(proc))
        _RUNNING.pop(proc.pid, None)
        self.returncode = _exit_code(proc)
        self.stopped_by, self.proc = "SIGKILL", None
        return self.returncode

    def restart(self, timeout_s: float = 30.0) -> "ManagedProcess":
        self.stop()
        return self.start(timeout_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _exit_code(proc: psutil.Popen, timeout_s: float = 10.0) -> int:
    """Wait for ``proc`` and return its exit code. psutil's ``wait`` returns None when another
    thread's ``poll()`` (a liveness check) reaped the child first; subprocess then holds the code."""
    rc = proc.wait(timeout_s)
    deadline = time.monotonic() + 1.0
    while rc is None and time.monotonic() < deadline:
        rc = proc.poll()
        if rc is None:
            time.sleep(0.01)
    return int(rc) if rc is not None else -signal.SIGKILL


def _signal(proc: psutil.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def _descendants(proc: psutil.Popen) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _kill_group(proc: psutil.Popen, descendants: list[psutil.Process]) -> None:
    """SIGKILL the process, its process group (= its PID: its own session) and the descendants
    seen before it stopped (a child that left the group), then reap them."""
    _signal(proc, signal.SIGKILL)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in descendants:
        _signal(p, signal.SIGKILL)
    psutil.wait_procs([proc, *descendants], timeout=5)


@atexit.register
def _stop_all() -> None:
    for p in list(_RUNNING.values()):
        try:
            p.stop(2.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
