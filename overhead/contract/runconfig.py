"""config.json, typed: what ran (``RunConfig``), with ONE reader and ONE writer.

Both writers of config.json (the sweep runner and the locustfile's web UI runs) go through
``write_config``; every reader goes through ``read_run_config`` (``read_config`` gives the same
content as a plain dict, for code that dumps or walks it). The file format is unchanged: a JSON
object whose sections are the fields below. ``run`` and ``load`` are typed; the other sections
are dumps of what their producers report (the gateway's ``GET /v1/config``, the machine, versions,
Locust's final counters, ...) and stay dicts. Keys this version does not know are kept in
``extra`` (per section for ``run`` and ``load``) and written back unchanged, so older and newer
run directories read and re-write without loss. ``None`` values and empty ``run`` / ``load``
sections are not written.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overhead.contract.rundir import RunDir, read_json, write_json_atomic


def _from_dict(cls, d: dict | None):
    """Known keys to fields, the rest to ``extra``."""
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: d.pop(k) for k in list(d) if k in names}
    return cls(**known, extra=d)


def _to_dict(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if hasattr(v, "to_dict"):
            v = v.to_dict() or None   # an empty section is not written
        if f.name != "extra" and v is not None:
            out[f.name] = v
    out.update(obj.extra)
    return out


@dataclass
class RunInfo:
    """How and when the run was made."""
    started: str | None = None            # local time, ISO 8601 with offset
    finished: str | None = None
    status: str | None = None             # running, complete, interrupted, failed, ...
    mode: str | None = None               # "locust web UI" for runs driven from Locust's UI
    command: list[str] | None = None
    cwd: str | None = None
    host: str | None = None               # the gateway's base URL
    managed_gateway: bool | None = None   # started (and stopped) by the sweep
    extra: dict[str, Any] = field(default_factory=dict)

    to_dict = _to_dict


@dataclass
class LoadConfig:
    """The load the generator was asked for."""
    tool: str | None = None                     # "locust"
    user_class: str | None = None
    closed_loop: bool | None = None
    schedule: list[dict] | None = None          # [{"users", "seconds"(, "rate", "spawn_rate")}]
    warmup_seconds: float | None = None
    sizes: list[str] | None = None
    stability: dict | None = None               # StabilityRule fields + extend_up_to_s
    arrivals: str | None = None                 # open loop: poisson | constant
    rates: list[float] | None = None            # open loop: requests/s per step
    max_in_flight: int | None = None
    seed: int | None = None
    locust_workers: int | None = None           # distributed sweep: Locust worker processes
    distributed_workers: int | None = None      # web UI run: workers that sent records
    slo_ms: float | None = None                 # goodput's latency objective (None: every success)
    drain_seconds: float | None = None          # wait for answers at the end, then "incomplete"
    extra: dict[str, Any] = field(default_factory=dict)

    to_dict = _to_dict


@dataclass
class RunConfig:
    """config.json. Sections other than ``run`` and ``load`` are what their producers report."""
    run: RunInfo = field(default_factory=RunInfo)
    load: LoadConfig = field(default_factory=LoadConfig)
    machine: dict | None = None
    versions: dict | None = None
    git: dict | None = None
    corpus: dict | None = None
    gateway_command: list[str] | None = None
    gateway_process: dict | None = None
    gateway: dict | None = None                 # the gateway's GET /v1/config, or {"error": ...}
    serving: dict | None = None                 # --server triton: the managed server, trace join
    broker: dict | None = None
    workers: dict | None = None
    locust_command: list[str] | None = None
    locust: dict | None = None
    swarms: list[dict] | None = None            # web UI run: one per POST /swarm
    steps: list[dict] | None = None             # as steps.parquet
    process_cpu: dict | None = None
    load_generator_cpu: list[dict] | None = None
    counts: dict | None = None                  # {"requests", "spans"}
    stability_live: dict | None = None          # locust/stability.json
    open_loop: dict | None = None               # locust/openloop.json
    faults: list[dict] | None = None            # --fault: [{"kind", "target", "at_s", "time_ns", ...}]
    spans_source: str | None = None
    spans_merged_ns: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    to_dict = _to_dict

    @classmethod
    def from_dict(cls, d: dict | None) -> "RunConfig":
        cfg = _from_dict(cls, d)
        cfg.run = cfg.run if isinstance(cfg.run, RunInfo) else _from_dict(RunInfo, cfg.run)
        cfg.load = cfg.load if isinstance(cfg.load, LoadConfig) else _from_dict(LoadConfig, cfg.load)
        return cfg


def read_run_config(run_dir: str | os.PathLike) -> RunConfig:
    """The run's config.json (an empty RunConfig when there is none)."""
    return RunConfig.from_dict(read_json(RunDir(run_dir).config, {}) or {})


def read_config(run_dir: str | os.PathLike) -> dict:
    """config.json as a plain dict (what ``read_run_config`` read, in file form)."""
    return read_run_config(run_dir).to_dict()


def write_config(run_dir: str | os.PathLike, config: RunConfig | dict) -> Path:
    """Write config.json atomically (a dict is read as a RunConfig first)."""
    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config)
    return write_json_atomic(config.to_dict(), RunDir(run_dir).config)


def update_config(run_dir: str | os.PathLike, **fields) -> RunConfig:
    """Set top-level sections of an existing config.json (unknown names go to ``extra``)."""
    cfg = read_run_config(run_dir).to_dict()
    cfg.update(fields)
    cfg = RunConfig.from_dict(cfg)
    write_config(run_dir, cfg)
    return cfg
