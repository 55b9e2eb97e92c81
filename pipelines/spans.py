"""Span recording: the measurement contract of DESIGN.md.

A span is ``(request_id, stage, component, start_ns, end_ns, attrs)``. Clocks are
``time.time_ns()`` so spans from different processes on one host (and the load generator's
records) line up. Recording is a clock read and a list append; writing Parquet happens on a
background thread (``SpanFlusher``), off the request path.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

now_ns = time.time_ns

STAGES = ("detect", "classify", "gateway")
COMPONENTS = (
    "decode", "resize", "normalize", "serialize", "transfer", "queue",
    "inference", "postprocess", "broker", "other",
)
SPAN_COLUMNS = ("request_id", "stage", "component", "start_ns", "end_ns", "attrs")

# A span as stored: a plain tuple in SPAN_COLUMNS order (cheaper than an object per span).
SpanTuple = tuple  # (str, str, str, int, int, str|None)


class SpanRecorder:
    """Collects spans in memory. Thread-safe without a lock: ``deque.append``/``popleft`` are
    atomic. (Swapping a list out in ``drain`` lost spans: a recording thread may hold the old list
    across a GIL switch, e.g. while ``json.dumps`` builds the attrs, and append after the flush.)

    ``enabled=False`` makes ``record`` a no-op, for the span-overhead benchmark.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._buf: deque[SpanTuple] = deque()

    def record(self, request_id: str, stage: str, component: str, start_ns: int, end_ns: int,
               attrs: dict | None = None) -> None:
        if self.enabled:
            self._buf.append((request_id, stage, component, start_ns, end_ns,
                              json.dumps(attrs, separators=(",", ":")) if attrs else None))

    def extend(self, spans: Iterable[SpanTuple]) -> None:
        if self.enabled:
            self._buf.extend(spans)

    def drain(self) -> list[SpanTuple]:
        """Take everything recorded so far; spans appended meanwhile stay for the next drain."""
        buf = self._buf
        pop = buf.popleft
        return [pop() for _ in range(len(buf))]

    def __len__(self) -> int:
        return len(self._buf)


def spans_to_table(spans: list[SpanTuple]):
    import pyarrow as pa

    cols = list(zip(*spans)) if spans else [[] for _ in SPAN_COLUMNS]
    return pa.table({
        "request_id": pa.array(cols[0], pa.string()),
        "stage": pa.array(cols[1], pa.string()),
        "component": pa.array(cols[2], pa.string()),
        "start_ns": pa.array(cols[3], pa.int64()),
        "end_ns": pa.array(cols[4], pa.int64()),
        "attrs": pa.array(cols[5], pa.string()),
    })


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
        self._thread.start()
        return self

    def flush(self) -> int:
        spans = self.recorder.drain()
        if not spans:
            return 0
        import pyarrow.parquet as pq

        path = self.directory / f"spans-{os.getpid()}-{self._seq:06d}.parquet"
        self._seq += 1
        tmp = path.with_suffix(".tmp")
        pq.write_table(spans_to_table(spans), tmp)
        tmp.rename(path)  # readers never see a half-written part
        return len(spans)

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
