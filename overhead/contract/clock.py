"""This process's clock and identity: what every span is stamped with (DESIGN.md, "The measurement
contract").

    now_ns()          wall-clock nanoseconds, advanced by the MONOTONIC clock: the wall clock is
                      read once, at import, together with the monotonic clock; afterwards
                      ``now_ns() = wall_at_start + (monotonic_now - monotonic_at_start)``.
                      A span's duration is a monotonic difference (a wall-clock step mid-run, e.g.
                      NTP stepping the clock, does not bend it); its placement on the request's
                      timeline is the wall clock of the start, which the report corrects per
                      process (analysis/report/clocks.py: offset ± error, NTP-style).
    process_id()      compact id of this process, ``HOST:PID`` (the spans' ``process`` column)
    this_process()    its ``ProcessRecord``: host, pid, role, the (wall, monotonic) pair at start
    set_role(role)    "gateway", "worker", "loadgen", ... (the entry points set it)

Monotonic clocks of different hosts are unrelated (each counts from its own boot); only
differences within one process are used. Imported by the gevent-patched locustfile: stdlib only.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One process that recorded spans or requests (RUN_DIR/processes.json)."""
    process: str    # HOST:PID, as in the spans' ``process`` column
    host: str
    pid: int
    role: str
    wall_ns: int    # the wall clock at start ...
    mono_ns: int    # ... and the monotonic clock at the same instant

    def to_wire(self) -> list:
        """Compact form for a message header: ``[host, pid, role, wall_ns, mono_ns]``."""
        return [self.host, self.pid, self.role, self.wall_ns, self.mono_ns]

    @classmethod
    def from_wire(cls, w: list) -> "ProcessRecord":
        host, pid, role, wall, mono = w
        return cls(f"{host}:{int(pid)}", str(host), int(pid), str(role), int(wall), int(mono))

    def to_dict(self) -> dict:
        return asdict(self)


def _anchor() -> tuple[int, int]:
    """(wall, monotonic) read as close together as we can: the wall read between two monotonic
    reads, paired with their midpoint."""
    m0 = time.monotonic_ns()
    wall = time.time_ns()
    m1 = time.monotonic_ns()
    return wall, (m0 + m1) // 2


_WALL0, _MONO0 = _anchor()
_ROLE = "process"


def now_ns(_mono=time.monotonic_ns, _offset=_WALL0 - _MONO0) -> int:
    """Wall-clock nanoseconds of this process's clock (monotonic since start). The defaults bind
    the clock and the offset as locals: 0.15-0.3 µs a call here, against ~0.06 µs for
    ``time.time_ns`` (a Python call's own cost; a few dozen reads per request)."""
    return _mono() + _offset


def wall_minus_mono_ns() -> int:
    """``now_ns() - time.monotonic_ns()``: converts this host's monotonic stamps (a server's
    trace on the same host) to this process's clock."""
    return _WALL0 - _MONO0


def set_role(role: str) -> None:
    global _ROLE
    _ROLE = role


_ID: str | None = None


def process_id() -> str:
    global _ID
    if _ID is None:
        _ID = f"{socket.gethostname()}:{os.getpid()}"
    return _ID


def _forked() -> None:
    global _ID
    _ID = None


os.register_at_fork(after_in_child=_forked)


def this_process() -> ProcessRecord:
    host = socket.gethostname()
    return ProcessRecord(f"{host}:{os.getpid()}", host, os.getpid(), _ROLE, _WALL0, _MONO0)
