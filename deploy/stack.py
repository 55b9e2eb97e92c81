"""The one way Overhead brings up the pipeline: ``Stack(server, broker, gateway, workers)``.

    stack = Stack(server=TritonServer(...), broker=RedisServer(...),
                  gateway=GatewayProcess([...]), workers=[WorkerProcess(...), ...])
    with stack.start(timeout_s=180):       # server -> broker -> gateway -> workers, each ready
        stack.gateway.url, stack.pids()     # {name: pid} of what runs; cpu_pids(), describe()
        stack.kill("worker-0"); stack.restart("redis")      # fault tests
    # stopped in reverse order, every piece by PID (SIGTERM, then SIGKILL of its group)

Every piece is a ``deploy.processes.ManagedProcess`` (or anything with ``name``, ``pid``,
``alive()``, ``start(timeout_s)``, ``stop()``, ``log_path``): its ports are chosen when it is
built, so the URLs the next piece needs (the gateway's ``--broker``, ``--triton-url``) are known
before anything starts. ``None`` leaves a piece out (``embedded`` server, ``memory://`` broker,
workers as threads in the gateway). Used by ``overhead up`` (``deploy/local.py``), the sweep
(``loadtest/sweep.py``) and the test fixtures.
"""
from __future__ import annotations

import sys
from typing import Callable, Iterable


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Stack:
    """server -> broker -> gateway -> workers, started in order, stopped in reverse."""

    def __init__(self, server=None, broker=None, gateway=None, workers: Iterable = (),
                 say: Callable[[str], None] = _say):
        self.server, self.broker, self.gateway = server, broker, gateway
        self.workers = list(workers)
        self.say = say
        self.started: list = []
        self.exit_codes: dict[str, int | None] = {}
        self.failed: str | None = None     # the piece whose start failed

    @property
    def pieces(self) -> list:
        return [p for p in (self.server, self.broker, self.gateway, *self.workers) if p is not None]

    def piece(self, name: str):
        for p in self.pieces:
            if p.name == name:
                return p
        raise KeyError(f"no {name!r} in the stack ({[p.name for p in self.pieces]})")

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout_s: float = 180.0) -> "Stack":
        """Start every piece and wait for its readiness probe; on a failure stop what started
        and re-raise (the error carries the failing piece's log tail)."""
        try:
            for p in self.pieces:
                if p in self.started:
                    continue
                self.say(f"{p.name}: starting ...")
                self.started.append(p)
                self.failed = p.name
                p.start(timeout_s)
                self.failed = None
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> dict[str, int | None]:
        """Stop in reverse start order; a failing stop does not keep the others running.
        Returns (and keeps in ``exit_codes``) each piece's exit code."""
        for p in reversed(self.started):
            try:
                self.exit_codes[p.name] = p.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                self.say(f"{p.name}: stop failed: {exc}")
        self.started = []
        return self.exit_codes

    def stop_piece(self, name: str) -> int | None:
        p = self.piece(name)
        self.exit_codes[name] = p.stop()
        if p in self.started:
            self.started.remove(p)
        return self.exit_codes[name]

    def kill(self, name: str) -> int | None:
        """SIGKILL one piece (a crash, for fault tests); the others keep running."""
        return self.piece(name).kill()

    def restart(self, name: str, timeout_s: float = 60.0):
        """Stop one piece and start it again on the same ports."""
        p = self.piece(name)
        p.stop()
        p.start(timeout_s)
        if p not in self.started:
            self.started.append(p)
        return p

    def __enter__(self):
        return self if self.started else self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- what runs -------------------------------------------------------------------------------
    def dead(self) -> list:
        """Pieces that were started and are no longer running."""
        return [p for p in self.started if not p.alive()]

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.started if p.alive()}

    def cpu_pids(self) -> dict[str, int]:
        """The running pieces besides the gateway whose CPU a run records (``process_cpu``):
        ``broker-<name>`` for the broker server, the others by name."""
        return {("broker-" + p.name if p is self.broker else p.name): p.pid
                for p in (self.server, self.broker, *self.workers)
                if p is not None and p in self.started and p.alive()}

    def describe(self) -> list[dict]:
        """One row per piece: name, pid, pgid (= pid: its own session), port, url, log."""
        return [{"name": p.name, "pid": p.pid, "pgid": p.pid, "port": getattr(p, "port", None),
                 "url": getattr(p, "url", None), "log": str(p.log_path)} for p in self.pieces]
