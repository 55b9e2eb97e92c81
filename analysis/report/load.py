"""Read a run directory (its own files only) and, for open loop, the view the report attributes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from overhead.contract.ceiling import CeilingRecord, read_ceiling
from overhead.contract.runconfig import read_config
from overhead.contract.rundir import (
    RunDir, read_json, read_locust_stats_csv, read_processes, read_requests, read_spans, read_steps,
)

LAG_STAGE, LAG_COMPONENT = "client", "schedule_lag"  # the synthetic span of open-loop lag


@dataclass
class Run:
    path: Path
    config: dict
    steps: pd.DataFrame
    requests: pd.DataFrame
    spans: pd.DataFrame
    cpu: pd.DataFrame | None = None
    locust_final: dict | None = None
    locust_stats_csv: dict | None = None
    stability_live: dict | None = None
    open_loop: dict | None = None      # locust/openloop.json (or config load) when open loop
    ceiling: CeilingRecord | None = None   # ceiling.json (None: a run from before it existed)
    processes: dict | None = None      # processes.json by HOST:PID ({} for older runs)

    @property
    def is_open_loop(self) -> bool:
        return bool(self.open_loop) or bool(self.load.get("arrivals"))

    @property
    def load(self) -> dict:
        """config.json's ``load`` section ({} when absent)."""
        return self.config.get("load") or {}

    @property
    def rates(self) -> list:
        """Open loop: the target req/s of each step."""
        return self.load.get("rates") or (self.open_loop or {}).get("rates") or []

    @property
    def generator_cpu(self) -> list[dict]:
        """Per step: the load generator's (and the gateway's) CPU cores, as config.json says."""
        return list(self.config.get("load_generator_cpu") or [])


def load_run(run_dir) -> Run:
    """Read a run directory (only its own files)."""
    run = RunDir(run_dir)
    if not run.requests.exists():
        raise FileNotFoundError(f"{run.requests} not found: is {run.path} a run directory?")
    cpu = pd.read_parquet(run.cpu) if run.cpu.exists() else None
    return Run(path=run.path, config=read_config(run.path), steps=read_steps(run.path),
               requests=read_requests(run.path), spans=read_spans(run.path), cpu=cpu,
               locust_final=read_json(run.locust_final), locust_stats_csv=read_locust_stats_csv(run.path),
               stability_live=read_json(run.locust_stability), open_loop=read_json(run.locust_openloop),
               ceiling=read_ceiling(run.path), processes=read_processes(run.path))


def open_loop_view(requests_df: pd.DataFrame, spans_df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Requests and spans for an open-loop run: ``send_ns`` becomes the intended send time (so
    e2e = intended → recv) and a ``client-schedule_lag`` span covers intended → real send."""
    req = requests_df.copy()
    real_send = req["send_ns"].astype(np.int64)
    intended = req["intended_ns"].fillna(real_send).astype(np.int64).clip(upper=real_send)
    req["send_ns"] = intended
    lag = req.loc[real_send > intended, ["request_id"]].copy()
    lag["stage"], lag["component"] = LAG_STAGE, LAG_COMPONENT
    lag["start_ns"], lag["end_ns"] = intended[real_send > intended], real_send[real_send > intended]
    lag["attrs"] = lag["process"] = None   # the load generator's clock (stage "client")
    return req, pd.concat([spans_df, lag[list(spans_df.columns)]], ignore_index=True) if len(lag) else spans_df


def count_check(run: Run) -> dict:
    """Our records against Locust's own counts. After a web UI Reset (config.json ``resets``)
    Locust counts from the last Reset on: ``comparable`` is then our records after it."""
    final = run.locust_final or {}
    resets = run.config.get("resets") or []
    before = int(resets[-1]["records_before"]) if resets else 0
    return dict(records=len(run.requests), resets=len(resets), comparable=len(run.requests) - before,
                locust_final=final.get("requests"),
                locust_final_failures=final.get("failures"),
                locust_stats_csv=(run.locust_stats_csv or {}).get("requests"),
                record_errors=int(((run.requests["status"] != 200) | run.requests["error"].notna()).sum()))
