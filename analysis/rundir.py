"""The run directory: paths, table schemas, and small read/write helpers.

A run is a directory (docs/architecture.md, "Run directory")::

    RUN_DIR/
      config.json        what ran
      steps.parquet      step, users, start_ns, measure_start_ns, end_ns
      requests.parquet   one row per request, from the load generator
      spans.parquet      all spans (merged from spans/ parts at the end of a sweep)
      locust/            Locust's CSVs, final_stats.json (exact final counters), stability.json
                         (live step verdicts), openloop.json (open-loop schedule counters)
      logs/              gateway.log, locust.log
      report.md, report.html, breakdown.csv, plots/

This module is imported by the locustfile (a gevent-patched process), so it imports nothing
heavy at module level: pyarrow and pandas are imported inside the functions that need them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# Column order and types of requests.parquet, as in docs/architecture.md.
REQUEST_COLUMNS = (
    ("request_id", "string"), ("user", "int64"), ("image", "string"), ("size_class", "string"),
    ("bytes", "int64"), ("intended_ns", "int64"), ("send_ns", "int64"), ("recv_ns", "int64"),
    ("status", "int64"), ("error", "string"), ("server_timing", "string"), ("k", "int64"),
)
STEP_COLUMNS = (
    ("step", "int64"), ("users", "int64"), ("start_ns", "int64"),
    ("measure_start_ns", "int64"), ("end_ns", "int64"),
)
SPAN_COLUMNS = (
    ("request_id", "string"), ("stage", "string"), ("component", "string"),
    ("start_ns", "int64"), ("end_ns", "int64"), ("attrs", "string"),
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
    cpu = property(lambda self: self.path / "cpu.parquet")
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


def _schema(columns):
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, typ)()) for name, typ in columns])


def table_from_rows(rows: list[tuple], columns) -> "pyarrow.Table":  # noqa: F821
    """Rows (tuples in column order) to an Arrow table with the contract's types."""
    import pyarrow as pa

    schema = _schema(columns)
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


def span_parts(run: RunDir) -> list[Path]:
    if not run.spans_parts.is_dir():
        return []
    return sorted(p for p in run.spans_parts.glob("*.parquet"))


def _read_tables(paths, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(columns)
    tables = [pq.read_table(p).select([n for n, _ in columns]).cast(schema) for p in paths]
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
    table = _read_tables(sources, SPAN_COLUMNS)
    write_parquet_atomic(table, run.spans)
    if pq.read_metadata(run.spans).num_rows != table.num_rows:
        raise RuntimeError(f"merging spans into {run.spans}: row count mismatch")
    if remove_parts:
        for p in parts:
            p.unlink()
    return table.num_rows


def read_spans(run_dir: str | os.PathLike):
    """All spans of a run as a DataFrame: spans.parquet plus any parts not merged yet."""
    run = RunDir(run_dir)
    sources = ([run.spans] if run.spans.exists() else []) + span_parts(run)
    return _read_tables(sources, SPAN_COLUMNS).to_pandas()


def read_requests(run_dir: str | os.PathLike):
    run = RunDir(run_dir)
    return _read_tables([run.requests] if run.requests.exists() else [], REQUEST_COLUMNS).to_pandas()


def read_steps(run_dir: str | os.PathLike):
    run = RunDir(run_dir)
    return _read_tables([run.steps] if run.steps.exists() else [], STEP_COLUMNS).to_pandas()


def read_config(run_dir: str | os.PathLike) -> dict:
    return read_json(RunDir(run_dir).config, {}) or {}


def write_config(run_dir: str | os.PathLike, config: dict) -> Path:
    return write_json_atomic(config, RunDir(run_dir).config)


def update_config(run_dir: str | os.PathLike, **fields) -> dict:
    config = read_config(run_dir)
    config.update(fields)
    write_config(run_dir, config)
    return config


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
