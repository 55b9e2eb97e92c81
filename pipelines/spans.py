"""Span recording: the measurement contract of DESIGN.md.

A span is ``overhead.contract.records.Span``: ``(request_id, stage, component, start_ns, end_ns,
attrs, process)``. The clock is ``overhead.contract.clock.now_ns``: wall clock at the process's
start advanced by the monotonic clock, so durations are monotonic and spans of different processes
(and the load generator's records) line up on the wall clock; ``process`` (``HOST:PID``) says
whose clock it was, and the report corrects each process's offset (analysis/report/clocks.py).
The recorder also keeps the ``ProcessRecord`` of every process whose spans it holds (itself, and
workers that sent theirs in result headers); the flusher writes them to ``_processes-<pid>.json``
next to the span parts. Recording is a clock read and a deque append (of a plain tuple in
the Span's field order, cheaper than an object per span); ``drain`` hands out ``Span`` records and
writing Parquet (the contract's span schema) happens on a background thread (``SpanFlusher``), off
the request path.
"""
from __future__ import annotations

import json
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from overhead.contract.clock import ProcessRecord, now_ns, process_id, this_process
from overhead.contract.records import Span, rows_to_table, to_table
from overhead.contract.rundir import write_processes

__all__ = ["ComponentTimes", "SpanFlusher", "SpanRecorder", "now_ns", "spans_to_table"]


class SpanRecorder:
    """Collects spans in memory. Thread-safe without a lock: ``deque.append``/``popleft`` are
    atomic. (Swapping a list out in ``drain`` lost spans: a recording thread may hold the old list
    across a GIL switch, e.g. while ``json.dumps`` builds the attrs, and append after the flush.)

    ``enabled=False`` makes ``record`` a no-op, for the span-overhead benchmark. ``process``
    stamps every span it records (default: this process, ``HOST:PID``); ``record(...,
    process=P)`` records another process's span (a worker's, from a result header).
    """

    def __init__(self, enabled: bool = True, process: str | None = None):
        self.enabled = enabled
        self.process = process or process_id()
        self._buf: deque[tuple] = deque()   # tuples in Span field order
        me = this_process()
        self.processes: dict[str, ProcessRecord] = {me.process: me}
        self.processes_changed = True

    def record(self, request_id: str, stage: str, component: str, start_ns: int, end_ns: int,
               attrs: dict | None = None, process: str | None = None) -> None:
        if self.enabled:
            self._buf.append((request_id, stage, component, start_ns, end_ns,
                              json.dumps(attrs, separators=(",", ":")) if attrs else None,
                              process or self.process))

    def extend(self, spans: Iterable[Span]) -> None:
        if self.enabled:
            self._buf.extend((s.request_id, s.stage, s.component, s.start_ns, s.end_ns, s.attrs,
                              s.process or self.process) for s in spans)

    def add_process(self, proc: ProcessRecord) -> None:
        """Remember a process whose spans this recorder holds (written by the flusher)."""
        if proc.process not in self.processes:
            self.processes[proc.process] = proc
            self.processes_changed = True

    def drain_table(self):
        """Take everything recorded so far as an Arrow table with the span schema; spans appended
        meanwhile stay for the next drain."""
        return rows_to_table(Span, self._take())

    def drain(self) -> list[Span]:
        """Take everything recorded so far as Span records."""
        return [Span(*row) for row in self._take()]

    def _take(self) -> list[tuple]:
        buf = self._buf
        pop = buf.popleft
        return [pop() for _ in range(len(buf))]

    def __len__(self) -> int:
        return len(self._buf)


def record_response_sent(recorder: SpanRecorder, scope: dict, sent_ns: int) -> None:
    """An answer's last byte went to the connection (``AdmissionMiddleware``'s ``on_sent``):
    ``gateway/serialize`` ``{"leg": "response"}`` from the event loop taking the answer back
    (``scope["state"]["respond"] = (request_id, resumed_ns)``, set by the endpoint) to now."""
    rid, resumed = scope.get("state", {}).get("respond") or (None, 0)
    if rid is not None:
        recorder.record(rid, "gateway", "serialize", resumed, sent_ns, {"leg": "response"})


def spans_to_table(spans: Iterable[Span]):
    """Span records to an Arrow table with the contract's span schema."""
    return to_table(spans, Span)


class SpanFlusher:
    """Writes a recorder's spans to ``DIR/spans-<pid>-<seq>.parquet`` every ``interval_s``
    and once more on ``stop()``. A run directory's ``spans/`` folder is read as one table."""

    def __init__(self, recorder: SpanRecorder, directory: str | os.PathLike, interval_s: float = 2.0):
        self.recorder = recorder
        self.directory = Path(directory)
        self.interval_s = interval_s
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="span-flusher", daemon=True)

    def start(self) -> "SpanFlusher":
        self.directory.mkdir(parents=True, exist_ok=True)
        # the first Arrow conversion imports pyarrow and pandas (~0.3 s of CPU, holding the GIL):
        # pay it now, not in the first flush under load (it stalled every request thread)
        import pyarrow.parquet  # noqa: F401

        rows_to_table(Span, [])
        self._thread.start()
        return self

    def flush(self) -> int:
        rec = self.recorder
        if rec.processes_changed:
            rec.processes_changed = False
            write_processes(list(rec.processes.values()), self.directory)
        table = rec.drain_table()
        if not table.num_rows:
            return 0
        import pyarrow.parquet as pq

        path = self.directory / f"spans-{os.getpid()}-{self._seq:06d}.parquet"
        self._seq += 1
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.rename(path)  # readers never see a half-written part
        return table.num_rows

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()


@dataclass(slots=True)
class ComponentTimes:
    """Per-request running sum of component durations, for the ``Server-Timing`` header."""
    totals: dict

    @classmethod
    def new(cls) -> "ComponentTimes":
        return cls({})

    def add(self, stage: str, component: str, dur_ns: int) -> None:
        key = f"{stage}-{component}"
        self.totals[key] = self.totals.get(key, 0) + dur_ns

    def server_timing(self) -> str:
        """RFC ``Server-Timing``: ``detect-decode;dur=1.234, ...`` in milliseconds."""
        return ", ".join(f"{k};dur={v / 1e6:.3f}" for k, v in self.totals.items())
