"""analysis/compare.py on small synthetic run directories (written with analysis/rundir.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analysis.compare import compare, compare_table, summarize_run  # noqa: E402
from analysis.rundir import (  # noqa: E402
    REQUEST_COLUMNS, SPAN_COLUMNS, STEP_COLUMNS, RunDir, table_from_rows, write_config,
    write_parquet_atomic,
)


def make_run(path: Path, broker_ms: float, broker: str, users=(1, 2), seconds=10.0, warmup=1.0):
    """Closed loop, 1MP only: detect inference 20 ms, then one crop: broker_ms + 5 ms inference."""
    run = RunDir(path).create()
    t = 1_700_000_000_000_000_000
    steps, reqs, spans = [], [], []
    n = 0
    for i, u_count in enumerate(users):
        start, end = t, t + int(seconds * 1e9)
        steps.append((i, u_count, start, start + int(warmup * 1e9), end))
        for u in range(u_count):
            clock = start + u * 1000
            while True:
                rid = f"r{n:06d}"
                n += 1
                send = clock
                c = send + 1_000_000
                spans.append((rid, "detect", "inference", c, c + 20_000_000, None))
                c += 20_000_000
                b = c + int(broker_ms * 1e6)
                spans.append((rid, "classify", "broker", c, b, '{"crop": 0}'))
                spans.append((rid, "classify", "inference", b, b + 5_000_000, '{"crop": 0}'))
                recv = b + 5_000_000 + 500_000
                if recv >= end:
                    break
                reqs.append((rid, u, "china", "1MP", 150_000, send, send, recv, 200, None, "", 1))
                clock = recv
        t = end
    write_parquet_atomic(table_from_rows(steps, STEP_COLUMNS), run.steps)
    write_parquet_atomic(table_from_rows(reqs, REQUEST_COLUMNS), run.requests)
    write_parquet_atomic(table_from_rows(spans, SPAN_COLUMNS), run.spans)
    write_config(run.path, {"run": {"status": "complete"}, "broker": {"requested": broker},
                            "workers": {"processes": 1},
                            "gateway": {"settings": {"broker": broker, "workers": 0}}})
    return run.path


def test_compare_side_by_side_highlights_broker(tmp_path):
    a = make_run(tmp_path / "mem", 0.2, "memory://")
    b = make_run(tmp_path / "redis", 10.0, "redis://local")
    ra, rb = summarize_run(a), summarize_run(b)
    head, rows, comps = compare_table([ra, rb])
    assert comps[0] == "broker" and comps[-1] == "other"
    assert head[:6] == ["users", "size", "run", "req/s", "p50 ms", "p99 ms"]
    assert [(r[0], r[1], r[2]) for r in rows] == [("1", "1MP", "mem"), ("1", "1MP", "redis"),
                                                  ("2", "1MP", "mem"), ("2", "1MP", "redis")]
    col = head.index("broker %")
    for mem_row, redis_row in (rows[0:2], rows[2:4]):
        assert float(redis_row[col]) > 5 * float(mem_row[col])
        assert float(redis_row[3]) < float(mem_row[3])          # throughput
        assert float(redis_row[4]) > float(mem_row[4]) + 9      # p50 ms
        shares = [float(v) for v in redis_row[6:]]
        assert abs(sum(shares) - 100) < 0.5                      # closure: shares + other = 100%
    out = compare([a, b])
    assert out == tmp_path / "compare.md"
    md = out.read_text()
    assert "**broker %**" in md and "`redis://local`" in md and "`memory://`" in md
    assert md.count("| 1 | 1MP |") == 2


def test_cli_writes_out_and_prints(tmp_path):
    a = make_run(tmp_path / "a", 1.0, "memory://", users=(1,))
    b = make_run(tmp_path / "b", 3.0, "kafka://local", users=(1,))
    out = tmp_path / "x" / "cmp.md"
    r = subprocess.run([sys.executable, str(REPO / "analysis" / "compare.py"), str(a), str(b),
                        "--out", str(out), "--label", "A", "--label", "B"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "broker %" in r.stdout and " A " in r.stdout and "kafka://local" in r.stdout
    assert out.exists() and "| A |" in out.read_text()
    r = subprocess.run([sys.executable, str(REPO / "analysis" / "compare.py"), str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not found" in r.stderr
