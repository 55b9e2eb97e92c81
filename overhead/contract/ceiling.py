"""The inference-only ceiling of a run (RUN_DIR/ceiling.json): what the same models, on the same
backend with the same threads, batch settings and instance counts, deliver on their own.

Measured before a sweep's steps (``loadtest/ceiling.py``) on pre-decoded, pre-resized tensors at
saturating concurrency, over a fixed window after a short warm-up:

    StageCeiling   one model alone: the detector in req/s, the classifier in crops/s
    MixCeiling     the pipeline's mix, per size class: one detection + that class's crops
                   (k = mean crops per request of the class's images) -> req/s
    CeilingRecord  the whole measurement (or why it was not measured: ``status`` "skipped")

``cpu_s`` is the measuring process's CPU over the window (psutil): the models' own CPU, so
``cpu_s / requests`` is the inference CPU a request needs. ``data_cpu_ms``: the CPU of the same
decode, resize, normalize, postprocess and crop (de)serialization calls the pipeline makes,
measured one at a time on the class's images (process CPU time: unaffected by other processes). Written and read as JSON here.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from overhead.contract.rundir import RunDir, read_json, write_json_atomic


@dataclass(frozen=True)
class StageCeiling:
    stage: str          # "detect" | "classify"
    model: str
    unit: str           # "req/s" | "crops/s"
    rate: float         # units per second over the window
    units: int          # images (detect) or crops (classify) finished in the window
    calls: int          # callers' calls finished in the window (a classifier call carries a
                        # batch; the detector's micro-batcher may merge several calls into one)
    seconds: float      # the window
    callers: int        # concurrent callers
    instances: int      # model instances (sessions or server clients) used
    batch: int          # most items per call
    cpu_s: float | None = None


@dataclass(frozen=True)
class MixCeiling:
    size_class: str
    k: float            # mean crops per request of this class's images
    rps: float          # requests (one detection + its crops) finished per second
    requests: int
    seconds: float
    images: int         # distinct pre-decoded images of the class cycled through
    cpu_s: float | None = None
    # CPU ms per request of the data handling the pipeline does around the models (decode, resize,
    # normalize, postprocess, serialize; crops summed), measured alone while preparing the inputs
    data_cpu_ms: dict = field(default_factory=dict)

    @property
    def cpu_ms_per_request(self) -> float | None:
        return None if self.cpu_s is None or not self.requests else self.cpu_s / self.requests * 1e3


@dataclass(frozen=True)
class CeilingRecord:
    status: str                     # "measured" | "skipped" | "failed"
    reason: str | None = None       # why it was skipped or failed
    backend: str = ""
    settings: dict = field(default_factory=dict)   # threads, batch, instances, url ...
    warmup_s: float = 0.0
    seconds: float = 0.0            # window per measurement
    stages: tuple[StageCeiling, ...] = ()
    mixes: tuple[MixCeiling, ...] = ()
    started_ns: int = 0
    ended_ns: int = 0

    @property
    def measured(self) -> bool:
        return self.status == "measured" and bool(self.mixes)

    def stage(self, name: str) -> StageCeiling | None:
        return next((s for s in self.stages if s.stage == name), None)

    def mix(self, size_class: str) -> MixCeiling | None:
        return next((m for m in self.mixes if m.size_class == size_class), None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CeilingRecord":
        d = dict(d)
        d["stages"] = tuple(StageCeiling(**s) for s in d.get("stages") or ())
        d["mixes"] = tuple(MixCeiling(**m) for m in d.get("mixes") or ())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def write_ceiling(run_dir: str | os.PathLike, record: CeilingRecord):
    return write_json_atomic(record.to_dict(), RunDir(run_dir).ceiling)


def read_ceiling(run_dir: str | os.PathLike) -> CeilingRecord | None:
    """The run's ceiling, or None for a run without one (older run directories)."""
    d = read_json(RunDir(run_dir).ceiling)
    return CeilingRecord.from_dict(d) if d else None
