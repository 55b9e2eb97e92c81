"""Faults inside a measurement: ``--fault KIND@SECONDS`` (repeatable) on the sweep's stack.

    kill-worker@20s       SIGKILL worker-0 (a crash) 20 s after the load started; then, as a
                          supervisor would, start it again (same options) and wait until it is
                          ready: "during" is from the kill to the worker being back.
    restart-broker@30s    stop the local broker server (--broker redis://local) and start it on
                          the same port: "during" is from the stop to the broker being ready.

A fault runs in its own thread, so the sweep keeps sampling; while it is in progress its piece
may be dead without stopping the run. Any other death (or a piece that does not come back) still
stops the sweep. Each fault is recorded in config.json ``faults``: ``kind``, ``target``, ``at_s``
(planned, from the load start), ``time_ns`` (when it struck), ``recovered_ns`` (when its piece
was ready again; None if never) and ``error``.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass

KINDS = ("kill-worker", "restart-broker")
_SPEC = re.compile(r"^(?P<kind>[a-z-]+)@(?P<at>[0-9.]+)s?$")


@dataclass
class Fault:
    kind: str
    at_s: float
    target: str | None = None
    time_ns: int | None = None
    recovered_ns: int | None = None
    error: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        m = _SPEC.match(spec.strip())
        if not m or m["kind"] not in KINDS:
            raise ValueError(f"bad --fault {spec!r}: KIND@SECONDS with KIND one of {KINDS}, "
                             "e.g. kill-worker@20s")
        return cls(m["kind"], float(m["at"]))

    def to_dict(self) -> dict:
        return asdict(self)


class FaultInjector:
    """Fires the faults on a ``deploy.stack.Stack`` as the load's elapsed time passes them."""

    def __init__(self, faults: list[Fault], stack, say=print):
        self.faults, self.stack, self.say = faults, stack, say
        self.start_ns: int | None = None
        self._busy: set[str] = set()      # pieces a fault is taking down / bringing back
        self._threads: list[threading.Thread] = []
        for f in faults:
            f.target = self._target(f)

    def _target(self, f: Fault) -> str:
        if f.kind == "kill-worker":
            if not self.stack or not self.stack.workers:
                raise ValueError("--fault kill-worker needs worker processes (--worker-processes)")
            return self.stack.workers[0].name
        if not self.stack or self.stack.broker is None:
            raise ValueError("--fault restart-broker needs a local broker (--broker redis://local)")
        return self.stack.broker.name

    def tick(self, now_ns: int) -> None:
        """Start every fault whose time has come (call it from the sweep's sampling loop)."""
        if self.start_ns is None:
            self.start_ns = now_ns
        for f in self.faults:
            if f.time_ns is None and (now_ns - self.start_ns) / 1e9 >= f.at_s:
                f.time_ns = time.time_ns()
                self._busy.add(f.target)
                t = threading.Thread(target=self._run, args=(f,), name=f"fault-{f.kind}", daemon=True)
                self._threads.append(t)
                t.start()

    def _run(self, f: Fault) -> None:
        try:
            if f.kind == "kill-worker":
                self.say(f"sweep: fault: kill -9 {f.target}")
                self.stack.kill(f.target)
                self.stack.restart(f.target, timeout_s=120)
            else:
                self.say(f"sweep: fault: restarting {f.target}")
                self.stack.restart(f.target, timeout_s=60)
            f.recovered_ns = time.time_ns()
            self.say(f"sweep: fault: {f.target} is back after {(f.recovered_ns - f.time_ns) / 1e9:.1f} s")
        except Exception as exc:  # noqa: BLE001 - recorded; the piece stays dead: the sweep stops
            f.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._busy.discard(f.target)

    def expected_dead(self) -> set[str]:
        """Pieces that may be down right now (a fault is in progress on them)."""
        return set(self._busy)

    def join(self, timeout_s: float = 130.0) -> None:
        for t in self._threads:
            t.join(timeout_s)

    def records(self) -> list[dict]:
        return [f.to_dict() for f in self.faults]
