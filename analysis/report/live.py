"""The headline breakdown of a run in progress, for the Locust web UI's "Overhead" tab.

``python -m analysis.report.live REQUESTS.parquet SPANS...`` prints one JSON list, one object per
size class::

    {"size_class": "1MP", "requests": 412, "e2e_mean_ms": 88.4,
     "components": {"detect-decode": 3.1, ..., "classify-backlog": 12.0, "other": 0.4}}

The attribution is the report's headline one (``analysis.report.views.attribute_both``: the
workers' clock check, then the critical path with ``backlog``), so per request the components plus
``other`` equal the end-to-end time and the means add up to ``e2e_mean_ms`` exactly. Only
successful requests whose spans are already on disk count (the gateway flushes its span parts every
~2 s, so the newest requests join at the next refresh). SPANS are parquet files or directories of
parts (the gateway's ``--spans-dir``, RUN_DIR/spans, RUN_DIR/spans.parquet).

It runs in its own process (the Locust process is gevent-patched and must not stall its users on
pandas), started by ``loadtest/overhead_tab.py``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analysis.report.attribution import E2E, UNCOVERED
from analysis.report.summary import size_sort_key
from analysis.report.views import attribute_both
from overhead.contract.records import Span, arrow_schema, field_names, select_columns


_PARTS: dict[str, tuple[float, pa.Table]] = {}   # path -> (mtime, table): a part is read once


def _read_part(part: Path) -> pa.Table | None:
    try:
        mtime = part.stat().st_mtime
        hit = _PARTS.get(str(part))
        if hit is not None and hit[0] == mtime:
            return hit[1]
        t = select_columns(pq.read_table(part), Span)
    except Exception:
        return None
    _PARTS[str(part)] = (mtime, t)
    return t


def read_live_spans(sources: list[str], request_ids: list[str]) -> pd.DataFrame:
    """The spans of ``request_ids`` found in ``sources`` (files or directories of parts); a part
    being written right now is skipped (it is read at the next refresh)."""
    ids = pa.array(request_ids, pa.string())
    tables = []
    for src in sources:
        p = Path(src)
        parts = sorted(p.glob("*.parquet")) if p.is_dir() else [p] if p.is_file() else []
        for part in parts:
            t = _read_part(part)
            if t is None:
                continue
            t = t.filter(pc.is_in(t["request_id"], value_set=ids))
            if t.num_rows:
                tables.append(t.cast(arrow_schema(Span)))
    if not tables:
        return pd.DataFrame({n: pd.Series(dtype=object) for n in field_names(Span)})
    # the same part read twice adds nothing; a batch's spans of different crops differ in attrs only
    return pa.concat_tables(tables).to_pandas().drop_duplicates(
        ["request_id", "stage", "component", "start_ns", "end_ns", "attrs"]).reset_index(drop=True)


def breakdown(requests: pd.DataFrame, spans: pd.DataFrame) -> list[dict]:
    """Per size class: requests, mean e2e and mean critical-path components (ms, with ``other``)."""
    ok = requests[(requests["status"] == 200) & requests["error"].isna()]
    ok = ok[ok["request_id"].isin(set(spans["request_id"]))] if len(spans) else ok.iloc[:0]
    if not len(ok):
        return []
    path = attribute_both(ok, spans).path
    size = ok.drop_duplicates("request_id").set_index("request_id")["size_class"]
    path = path.join(size)
    out = []
    for sc, g in sorted(path.groupby("size_class"), key=lambda kv: size_sort_key(str(kv[0]))):
        means = g.drop(columns="size_class").mean() / 1e6
        comps = {str(c): round(float(v), 4) for c, v in means.items()
                 if c not in (E2E, UNCOVERED) and v > 0}
        comps[UNCOVERED] = round(float(means[UNCOVERED]), 4)
        out.append({"size_class": str(sc), "requests": int(len(g)),
                    "e2e_mean_ms": round(float(means[E2E]), 4), "components": comps})
    return out


def compute(argv: list[str]) -> list[dict]:
    requests = pd.read_parquet(argv[0])
    spans = read_live_spans(argv[1:], requests["request_id"].astype(str).tolist())
    return breakdown(requests, spans)


def main(argv: list[str] | None = None) -> int:
    """``REQUESTS SPANS...``: print the breakdown once; ``--serve``: one JSON list of such
    arguments per stdin line, one JSON answer per stdout line (``{"ok": [...]}`` or
    ``{"error": "..."}``), so the Locust process pays pandas' start-up once."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        for line in sys.stdin:
            try:
                t0 = time.perf_counter()
                answer = {"ok": compute(json.loads(line))}
                answer["seconds"] = round(time.perf_counter() - t0, 3)
            except Exception as exc:   # a bad snapshot must not end the server
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        return 0
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(compute(argv), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
