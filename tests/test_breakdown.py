"""analysis/report (python analysis/breakdown.py): the closure sweep on hand-built spans, the summary, the report files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analysis.report.attribution import attribute, by_component  # noqa: E402
from analysis.report.cli import report  # noqa: E402
from analysis.report.load import load_run  # noqa: E402
from analysis.report.summary import summarize  # noqa: E402
from overhead.contract.records import (  # noqa: E402
    RequestRecord, Span, StepRecord, field_names, rows_to_table,
)
from overhead.contract.runconfig import write_config  # noqa: E402
from overhead.contract.rundir import (  # noqa: E402
    RunDir, merge_span_parts, write_json_atomic, write_parquet_atomic,
)


def reqs(*rows):
    """(request_id, send_ns, recv_ns) rows."""
    return pd.DataFrame(rows, columns=["request_id", "send_ns", "recv_ns"])


def spans(*rows):
    """(request_id, 'stage-component', start_ns, end_ns) rows."""
    out = [(r, k.split("-")[0], k.split("-")[1], s, e, None, None) for r, k, s, e in rows]   # no process: as old runs
    return pd.DataFrame(out, columns=list(field_names(Span)))


def row(attr, rid):
    r = attr.loc[rid]
    return {k: v for k, v in r.items() if v != 0 or k in ("e2e", "other")}


def test_sequential_spans():
    a = attribute(reqs(("r", 0, 100)), spans(("r", "detect-decode", 0, 20), ("r", "detect-resize", 20, 30),
                                             ("r", "detect-inference", 30, 90)))
    assert row(a, "r") == {"e2e": 100, "other": 10, "detect-decode": 20, "detect-resize": 10,
                           "detect-inference": 60}


def test_nested_spans_share_the_overlap_evenly():
    a = attribute(reqs(("r", 0, 100)), spans(("r", "detect-inference", 10, 90),
                                             ("r", "detect-queue", 20, 40)))
    assert row(a, "r") == {"e2e": 100, "other": 20, "detect-queue": 10, "detect-inference": 70}


def test_overlapping_crops():
    # broker [0,40] alone for 20 ns, then with two crop inferences [20,60] for 20 ns (3 ways),
    # then the two crops for 20 ns; [60,100] uncovered
    a = attribute(reqs(("r", 0, 100)), spans(("r", "classify-broker", 0, 40),
                                             ("r", "classify-inference", 20, 60),
                                             ("r", "classify-inference", 20, 60)))
    r = row(a, "r")
    assert r["classify-broker"] == pytest.approx(20 + 20 / 3, abs=1e-9)
    assert r["classify-inference"] == pytest.approx(2 * 20 / 3 + 20, abs=1e-9)
    assert r["other"] == 40 and r["e2e"] == 100


def test_spans_partly_outside_the_request_are_clipped():
    a = attribute(reqs(("r", 100, 200)), spans(("r", "gateway-transfer", 50, 120),
                                               ("r", "detect-inference", 180, 260),
                                               ("r", "detect-decode", 300, 400),   # wholly after
                                               ("r", "detect-resize", 10, 90)))    # wholly before
    assert row(a, "r") == {"e2e": 100, "other": 60, "gateway-transfer": 20, "detect-inference": 20}


def test_request_without_spans_is_all_other_and_foreign_spans_are_ignored():
    a = attribute(reqs(("r", 0, 50), ("q", 10, 30)),
                  spans(("zzz", "detect-decode", 0, 50), ("q", "detect-decode", 15, 15)))  # zero length
    assert a.loc["r", "e2e"] == 50 and a.loc["r", "other"] == 50
    assert a.loc["q", "e2e"] == 20 and a.loc["q", "other"] == 20
    assert a.drop(columns=["e2e", "other"]).to_numpy().sum() == 0


def test_shared_boundaries_and_many_requests_at_once():
    a = attribute(reqs(("r1", 0, 40), ("r2", 1000, 1010)),
                  spans(("r1", "detect-decode", 10, 20), ("r1", "detect-resize", 20, 30),
                        ("r1", "gateway-transfer", 10, 30), ("r2", "detect-decode", 1000, 1010),
                        ("r2", "detect-decode", 1000, 1010)))
    assert row(a, "r1") == {"e2e": 40, "other": 20, "detect-decode": 5, "detect-resize": 5,
                            "gateway-transfer": 10}
    assert row(a, "r2") == {"e2e": 10, "other": 0, "detect-decode": 10}


def test_by_component_sums_stages():
    a = attribute(reqs(("r", 0, 100)), spans(("r", "detect-inference", 0, 30),
                                             ("r", "classify-inference", 40, 60),
                                             ("r", "gateway-other", 60, 70)))
    c = by_component(a)
    assert c.loc["r"].to_dict() == {"inference": 50, "other": 50, "e2e": 100}


def brute_force(send, recv, sp):
    """Every nanosecond, one at a time."""
    out, other = {}, 0.0
    for t in range(send, recv):
        cover = [k for k, s, e in sp if s <= t < e]
        if not cover:
            other += 1
        for k in cover:
            out[k] = out.get(k, 0.0) + 1 / len(cover)
    return out, other


def test_matches_brute_force_on_random_span_sets():
    rng = np.random.default_rng(7)
    keys = ["detect-decode", "detect-inference", "classify-inference", "classify-broker", "gateway-transfer"]
    rq, sp = [], []
    for i in range(60):
        send = int(rng.integers(0, 10_000))
        recv = send + int(rng.integers(0, 300))
        rq.append((f"r{i}", send, recv))
        for _ in range(int(rng.integers(0, 12))):
            s = send + int(rng.integers(-50, 320))
            sp.append((f"r{i}", keys[int(rng.integers(0, len(keys)))], s, s + int(rng.integers(0, 150))))
    a = attribute(reqs(*rq), spans(*sp))
    for rid, send, recv in rq:
        mine = [(k, max(s, send), min(e, recv)) for r, k, s, e in sp if r == rid]
        want, other = brute_force(send, recv, mine)
        got = a.loc[rid]
        assert got["other"] == pytest.approx(other, abs=1e-6)
        for k in keys:
            assert got.get(k, 0.0) == pytest.approx(want.get(k, 0.0), abs=1e-6), (rid, k)
        assert got.drop("e2e").sum() == pytest.approx(recv - send, abs=1e-6)


def test_attribution_is_fast_for_thousands_of_requests():
    n, per = 5000, 30
    rng = np.random.default_rng(1)
    send = np.arange(n, dtype=np.int64) * 10_000_000 + 1_700_000_000_000_000_000
    recv = send + rng.integers(1_000_000, 9_000_000, n)
    rid = np.repeat([f"{i:032x}" for i in range(n)], per)
    starts = np.repeat(send, per) + rng.integers(0, 8_000_000, n * per)
    sp = pd.DataFrame({"request_id": rid, "stage": "detect",
                       "component": rng.choice(["decode", "resize", "inference", "queue"], n * per),
                       "start_ns": starts, "end_ns": starts + rng.integers(0, 2_000_000, n * per),
                       "attrs": None})
    rq = pd.DataFrame({"request_id": [f"{i:032x}" for i in range(n)], "send_ns": send, "recv_ns": recv})
    t0 = time.perf_counter()
    a = attribute(rq, sp)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5, elapsed
    closure = a.drop(columns=["e2e"]).sum(axis=1) - a["e2e"]
    assert closure.abs().max() < 1e-3   # ns, with float64 sums of ~1e7 ns spans


# --- a synthetic but realistic run directory ---------------------------------------------------

SIZES = {"0.1MP": (8_000, 1.0), "1MP": (150_000, 3.0), "8MP": (1_200_000, 12.0)}  # bytes, ms decode


def make_run(path: Path, steps=((1, 10.0), (2, 10.0)), warmup=2.0, with_parts=False) -> RunDir:
    """Closed-loop users sending 0.1/1/8 MP images through a fake two-stage pipeline, k=3 crops."""
    rng = np.random.default_rng(3)
    run = RunDir(path).create()
    t0 = 1_700_000_000_000_000_000
    step_rows, req_rows, span_rows = [], [], []
    t = t0
    uid = 0
    for i, (users, seconds) in enumerate(steps):
        start, end = t, t + int(seconds * 1e9)
        step_rows.append((i, users, start, start + int(warmup * 1e9), end))
        for u in range(users):
            clock = start + u * 1_000_000
            j = u
            while True:
                size = list(SIZES)[j % 3]
                j += 1
                nbytes, dec = SIZES[size]
                rid = f"{uid:08x}{rng.integers(0, 2**62):024x}"[:32]
                uid += 1
                send = clock
                c = send + 200_000                                           # client->server
                sp = [(rid, "gateway", "transfer", send + 50_000, c, None)]
                for comp, ms in (("decode", dec), ("resize", dec / 3), ("normalize", 0.3),
                                 ("queue", 0.2 * users), ("inference", 16.0), ("postprocess", 0.8)):
                    d = int(ms * 1e6 * rng.uniform(0.9, 1.1))
                    sp.append((rid, "detect", comp, c, c + d, None))
                    c += d
                c0 = c
                for crop in range(3):                                          # overlapping crops
                    cs = c0 + crop * 300_000
                    b = cs + 400_000
                    sp.append((rid, "classify", "broker", cs, b, json.dumps({"crop": crop})))
                    sp.append((rid, "classify", "inference", b, b + 5_000_000, json.dumps({"crop": crop})))
                    c = max(c, b + 5_000_000)
                recv = c + 300_000
                if recv >= end:
                    break
                status, err = (500, "HTTP 500 internal: boom") if rng.random() < 0.02 else (200, None)
                req_rows.append((rid, u, f"img{j % 6}", size, nbytes, send, send, recv, status, err,
                                 "detect-decode;dur=1.000", 3 if status == 200 else -1))
                if status == 200:
                    span_rows.extend(sp)
                clock = recv + 100_000                                         # client time
        t = end
    write_parquet_atomic(rows_to_table(StepRecord, step_rows), run.steps)
    write_parquet_atomic(rows_to_table(RequestRecord, req_rows), run.requests)
    if with_parts:
        half = len(span_rows) // 2
        write_parquet_atomic(rows_to_table(Span, span_rows[:half]), run.spans_parts / "spans-1-000000.parquet")
        write_parquet_atomic(rows_to_table(Span, span_rows[half:]), run.spans_parts / "spans-1-000001.parquet")
    else:
        write_parquet_atomic(rows_to_table(Span, span_rows), run.spans)
    n = len(req_rows)
    n_err = sum(1 for r in req_rows if r[8] != 200)
    write_json_atomic({"requests": n, "failures": n_err, "records": n, "by_name": {}}, run.locust_final)
    (run.locust / "locust_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count\n,Aggregated,%d,%d\n" % (n - 3, n_err))
    write_config(run.path, {
        "run": {"started": "2025-01-01T00:00:00+0000", "command": ["python", "-m", "loadtest.sweep"],
                "host": "http://127.0.0.1:1", "managed_gateway": True, "status": "complete"},
        "load": {"tool": "locust", "user_class": "FastHttpUser",
                 "schedule": [{"users": u, "seconds": s} for u, s in steps],
                 "warmup_seconds": warmup, "sizes": list(SIZES)},
        "gateway": {"detector": "ssd_mobilenetv2", "classifier": "mobilenetv2", "k": 3},
        "machine": {"cpu_model": "test CPU", "cores": 2},
        "load_generator_cpu": [{"step": i, "users": u, "locust_cores": 0.3 + 0.6 * i, "gateway_cores": 1.1}
                               for i, (u, _) in enumerate(steps)],
    })
    return run


def test_summarize_counts_only_the_measured_windows(tmp_path):
    run = make_run(tmp_path / "run")
    r = load_run(run.path)
    attr = attribute(r.requests, r.spans)
    s = summarize(r.requests, attr, r.steps)
    req = r.requests
    for st in r.steps.itertuples():
        inside = req[(req["recv_ns"] >= st.measure_start_ns) & (req["recv_ns"] < st.end_ns)]
        ok = inside[inside["status"] == 200]
        rows = s.main[s.main["step"] == st.step]
        assert rows["requests"].sum() == len(ok)
        assert rows["errors"].sum() == len(inside) - len(ok)
        w = (st.end_ns - st.measure_start_ns) / 1e9
        for sz, g in ok.groupby("size_class"):
            m = rows[rows["size_class"] == sz].iloc[0]
            e2e = (g["recv_ns"] - g["send_ns"]) / 1e6
            assert m["throughput_rps"] == pytest.approx(len(g) / w)
            assert m["e2e_p50_ms"] == pytest.approx(e2e.quantile(0.5))
            assert m["e2e_p99_ms"] == pytest.approx(e2e.quantile(0.99))
            assert m["e2e_mean_ms"] == pytest.approx(e2e.mean())
    shares = s.main[[f"{c}_share" for c in s.components]].sum(axis=1)
    assert np.allclose(shares, 1.0)                                  # components + other = e2e
    assert s.components[-1] == "other" and "decode" in s.components and "broker" in s.components
    # closed loop: Little's law holds up to the 0.1 ms client time per request
    assert s.steps["littles_ratio"].between(0.97, 1.0).all()


def test_report_files_and_findings(tmp_path):
    run = make_run(tmp_path / "run")
    rep = report(run.path, quiet=True)
    for f in (run.report_md, run.report_html, run.breakdown_csv, run.plots / "latency_throughput.png",
              *(run.plots / f"stacked_{s}.png" for s in SIZES)):
        assert f.exists() and f.stat().st_size > 0, f
    md = run.report_md.read_text()
    assert "ssd_mobilenetv2" in md and "What this says" in md and "Per stage" in md
    assert "detect-decode" in md and "classify-inference" in md
    html = run.report_html.read_text()
    assert "data:image/png;base64," in html and "<img" in html and "src=\"plots/" not in html
    notes = "\n".join(rep.findings)
    assert "decode+resize take" in notes and "at 0.1MP" in notes and "at 8MP" in notes
    assert "Little's law" in notes and "Unexplained `other`" in notes
    assert "WARNING" in notes and "0.90" in notes             # the load generator above 0.8 core
    assert f"Locust's final count: {len(rep.run.requests)}" in notes and "_stats.csv" in notes
    csv = pd.read_csv(run.breakdown_csv)
    assert {"users", "size_class", "requests", "e2e_p99_ms", "decode_mean_ms", "decode_p50_ms",
            "decode_share", "other_share", "detect-decode_mean_ms"} <= set(csv.columns)
    # decode+resize grows with image size in this synthetic pipeline, and the report says so
    low = csv[csv["users"] == 1].set_index("size_class")
    assert (low.loc["8MP", "decode_share"] + low.loc["8MP", "resize_share"]
            > low.loc["0.1MP", "decode_share"] + low.loc["0.1MP", "resize_share"])


def test_span_parts_are_read_and_merged(tmp_path):
    run = make_run(tmp_path / "run", with_parts=True)
    before = load_run(run.path)
    assert len(before.spans) > 0 and not run.spans.exists()
    assert merge_span_parts(run.path) == len(before.spans)
    assert run.spans.exists() and not list(run.spans_parts.glob("*.parquet"))
    assert len(load_run(run.path).spans) == len(before.spans)


def test_script_runs_from_another_cwd_on_a_copied_run(tmp_path):
    run = make_run(tmp_path / "orig")
    copy = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(run.path, copy)
    shutil.rmtree(run.path)
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "breakdown.py"), str(copy)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200",  # the editable install finds the code;
                               **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})  # a worktree's too
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Where the time goes" in proc.stdout and "report:" in proc.stdout
    assert (copy / "report.md").exists() and (copy / "plots" / "stacked_8MP.png").exists()


def test_missing_run_dir_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "breakdown.py"), str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "requests.parquet not found" in proc.stderr


def test_validity_leaves_the_summary_alone_and_marks_invalid_steps(tmp_path):
    run = make_run(tmp_path / "run")
    rep = report(run.path, quiet=True)
    assert "valid" not in rep.summary.steps.columns                   # validity returns, never mutates
    assert {"stable", "valid", "stability"} <= set(rep.steps.columns)
    assert list(rep.steps["step"]) == list(rep.summary.steps["step"])
    assert rep.validity[0].startswith("**") and any("Rule: a step is stable" in v for v in rep.validity)


SERVING = {"protocol": "grpc",
           "stages": {"detect": {"server": "triton", "model": "ssd_mobilenetv2"},
                      "classify": {"server": "triton", "model": "mobilenetv2"}},
           "join": {"joined": 12, "unmatched": 0},
           "cross_check": {"ssd_mobilenetv2": {"trace_requests": 100, "stats_requests": 100,
                                               "trace_queue_ms": 1.25, "stats_queue_ms": 1.3,
                                               "trace_compute_ms": 12.5, "stats_compute_ms": 12.4,
                                               "batches": 90}}}


def test_serving_section_comes_from_config_json_without_deploy(tmp_path):
    run = make_run(tmp_path / "run")
    cfg = json.loads(run.config.read_text())
    cfg["serving"] = SERVING
    cfg["gateway"]["note"] = "<script>alert(1)</script>"
    write_config(run.path, cfg)
    code = ("import sys; from analysis.breakdown import report; report(sys.argv[1], quiet=True); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('deploy', 'pipelines', 'loadtest', 'brokers')); "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code, str(run.path)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = run.report_md.read_text()
    assert "## Serving" in md and "| detect | triton | ssd_mobilenetv2 | grpc |" in md
    assert "Triton trace joined into spans (transfer / queue / inference per call): {'joined': 12" in md
    assert "  ssd_mobilenetv2      100 /   100     1.25 /   1.30      12.50 /  12.40  90" in md
    html = run.report_html.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # autoescaped
    assert "<script>alert(1)</script>" in md                                 # Markdown is not HTML
