"""The run directory: paths and small read/write helpers.

A run is a directory (docs/architecture.md, "Run directory")::

    RUN_DIR/
      config.json        what ran
      ceiling.json       the inference-only ceiling measured before the steps (contract/ceiling.py)
      steps.parquet      step, users, start_ns, measure_start_ns, end_ns
      requests.parquet   one row per request, from the load generator
      spans.parquet      all spans (merged from spans/ parts at the end of a sweep)
      processes.json     every process that stamped spans: host, pid, role, (wall, monotonic) at
                         start (merged from spans/_processes-*.json, written by the span flushers)
      locust/            Locust's CSVs, final_stats.json (exact final counters), stability.json
                         (live step verdicts), openloop.json (open-loop schedule counters)
      logs/              gateway.log, locust.log
      report.md, report.html, breakdown.csv, plots/

The tables' columns and types are the record classes of ``overhead.contract.records``.

This module is imported by the locustfile (a gevent-patched process), so it imports nothing
heavy at module level: pyarrow and pandas are imported inside the functions that need them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from overhead.contract.records import (
    RequestRecord, Span, StepRecord, arrow_schema, select_columns,
)


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""
    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    config = property(lambda self: self.path / "config.json")
    steps = property(lambda self: self.path / "steps.parquet")
    requests = property(lambda self: self.path / "requests.parquet")
    spans = property(lambda self: self.path / "spans.parquet")
    spans_parts = property(lambda self: self.path / "spans")
    processes = property(lambda self: self.path / "processes.json")
    cpu = property(lambda self: self.path / "cpu.parquet")
    ceiling = property(lambda self: self.path / "ceiling.json")   # overhead.contract.ceiling
    corpus = property(lambda self: self.path / "corpus.json")
    locust = property(lambda self: self.path / "locust")
    locust_csv_prefix = property(lambda self: self.path / "locust" / "locust")
    locust_final = property(lambda self: self.path / "locust" / "final_stats.json")
    locust_progress = property(lambda self: self.path / "locust" / "progress.json")
    locust_stability = property(lambda self: self.path / "locust" / "stability.json")
    locust_openloop = property(lambda self: self.path / "locust" / "openloop.json")
    logs = property(lambda self: self.path / "logs")
    plots = property(lambda self: self.path / "plots")
    report_md = property(lambda self: self.path / "report.md")
    report_html = property(lambda self: self.path / "report.html")
    breakdown_csv = property(lambda self: self.path / "breakdown.csv")

    def create(self) -> "RunDir":
        for d in (self.path, self.spans_parts, self.locust, self.logs, self.plots):
            d.mkdir(parents=True, exist_ok=True)
        return self


def table_from_rows(rows: list[tuple], columns) -> "pyarrow.Table":  # noqa: F821
    """Side tables that are not records of the contract (CPU samples, broker depth): rows (tuples
    in column order) and ``((name, arrow type name), ...)`` to an Arrow table."""
    import pyarrow as pa

    schema = pa.schema([(name, getattr(pa, typ)()) for name, typ in columns])
    cols = list(zip(*rows)) if rows else [[] for _ in columns]
    return pa.table([pa.array(c, f.type) for c, f in zip(cols, schema)], schema=schema)


def write_parquet_atomic(table, path: str | os.PathLike) -> Path:
    """Write a table so readers never see half a file (write to .tmp, then rename)."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def write_json_atomic(obj, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike, default=None):
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())


def write_records(records, cls: type, path: str | os.PathLike) -> Path:
    """Records of one class to a Parquet file with the class's schema (atomically)."""
    from overhead.contract.records import to_table

    return write_parquet_atomic(to_table(records, cls), path)


def span_parts(run: RunDir) -> list[Path]:
    if not run.spans_parts.is_dir():
        return []
    return sorted(p for p in run.spans_parts.glob("*.parquet"))


def read_table(paths, cls: type):
    """Parquet files of one record class as one Arrow table with the class's schema (columns
    selected by name and cast, so a file with extra columns or wider types still reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(cls)
    tables = [select_columns(pq.read_table(p), cls) for p in paths]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def merge_span_parts(run_dir: str | os.PathLike, remove_parts: bool = True) -> int:
    """Merge ``spans/*.parquet`` (and an existing spans.parquet) into one spans.parquet.

    The parts are removed only after the merged file has been written and read back with the
    right row count. Returns the number of spans in spans.parquet.
    """
    import pyarrow.parquet as pq

    run = RunDir(run_dir)
    parts = span_parts(run)
    sources = ([run.spans] if run.spans.exists() else []) + parts
    table = read_table(sources, Span)
    write_parquet_atomic(table, run.spans)
    if pq.read_metadata(run.spans).num_rows != table.num_rows:
        raise RuntimeError(f"merging spans into {run.spans}: row count mismatch")
    procs = process_parts(run)
    if procs:
        write_json_atomic(list(read_processes(run.path).values()), run.processes)
    if remove_parts:
        for p in parts + procs:
            p.unlink()
    return table.num_rows


def process_parts(run: RunDir) -> list[Path]:
    return process_files(run.spans_parts)


def process_files(directory: str | os.PathLike) -> list[Path]:
    """The ``_processes-<pid>.json`` files a span flusher wrote into ``directory``."""
    d = Path(directory)
    return sorted(d.glob("_processes-*.json")) if d.is_dir() else []


def write_processes(processes, directory: str | os.PathLike) -> Path:
    """This process's view of the processes it knows (``ProcessRecord``s: itself and the workers
    whose spans it recorded) as ``DIR/_processes-<pid>.json``."""
    return write_json_atomic([p.to_dict() for p in processes],
                             Path(directory) / f"_processes-{os.getpid()}.json")


def read_processes(run_dir: str | os.PathLike) -> dict[str, dict]:
    """``{HOST:PID: {process, host, pid, role, wall_ns, mono_ns}}`` of a run (processes.json plus
    parts not merged yet; {} for runs from before processes were recorded)."""
    run = RunDir(run_dir)
    return read_process_files([run.processes, *process_parts(run)])


def read_process_files(paths) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in paths:
        for rec in read_json(path, default=[]) or []:
            out.setdefault(rec["process"], rec)
    return out


def read_spans(run_dir: str | os.PathLike):
    """All spans of a run as a DataFrame: spans.parquet plus any parts not merged yet."""
    run = RunDir(run_dir)
    sources = ([run.spans] if run.spans.exists() else []) + span_parts(run)
    return read_table(sources, Span).to_pandas()


def read_requests(run_dir: str | os.PathLike):
    run = RunDir(run_dir)
    return read_table([run.requests] if run.requests.exists() else [], RequestRecord).to_pandas()


def read_steps(run_dir: str | os.PathLike):
    run = RunDir(run_dir)
    return read_table([run.steps] if run.steps.exists() else [], StepRecord).to_pandas()


def read_locust_stats_csv(run_dir: str | os.PathLike) -> dict | None:
    """The ``Aggregated`` row of Locust's ``_stats.csv`` (may lag the final counters a little)."""
    import csv

    path = Path(str(RunDir(run_dir).locust_csv_prefix) + "_stats.csv")
    if not path.exists():
        return None
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") == "Aggregated":
                return {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"])}
    return None
