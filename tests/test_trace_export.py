"""analysis/trace_export.py: Chrome trace-event JSON of a (synthetic) run directory."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead.contract.records import RequestRecord  # noqa: E402
from overhead.contract.rundir import RunDir, write_records  # noqa: E402
from analysis.trace_export import _lanes, build_trace  # noqa: E402
from test_breakdown import make_run  # noqa: E402

EPS_US = 1e-3  # float rounding of µs values; spans are whole ns


def check_trace_format(trace: dict) -> None:
    """The trace-event format (JSON object form): what Perfetto / chrome://tracing need."""
    assert isinstance(trace["traceEvents"], list)
    json.dumps(trace)  # serialisable
    named_threads, used_threads = set(), set()
    for ev in trace["traceEvents"]:
        assert ev["ph"] in ("X", "M"), ev
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int)
        assert isinstance(ev["name"], str) and ev["name"]
        if ev["ph"] == "M":
            assert ev["name"] in ("process_name", "process_sort_index", "thread_name", "thread_sort_index")
            assert isinstance(ev["args"], dict)
            if ev["name"] == "thread_name":
                named_threads.add((ev["pid"], ev["tid"]))
        else:
            assert isinstance(ev["ts"], (int, float)) and isinstance(ev["dur"], (int, float))
            assert ev["ts"] >= -EPS_US and ev["dur"] >= 0
            assert isinstance(ev.get("args", {}), dict)
            used_threads.add((ev["pid"], ev["tid"]))
    assert used_threads <= named_threads                      # every track has a name
    # events of one track nest properly (or are disjoint): the viewer's requirement for "X"
    by_track = defaultdict(list)
    for ev in trace["traceEvents"]:
        if ev["ph"] == "X":
            by_track[(ev["pid"], ev["tid"])].append((ev["ts"], ev["ts"] + ev["dur"]))
    for track, ivs in by_track.items():
        stack = []
        for s, e in sorted(ivs, key=lambda x: (x[0], -x[1])):
            while stack and stack[-1] <= s + EPS_US:
                stack.pop()
            assert not stack or e <= stack[-1] + EPS_US, (track, s, e, stack)
            stack.append(e)


def test_lanes_nest_properly():
    root = (0, 100)
    ivs = [(0, 10), (2, 5), (20, 60), (30, 70), (30, 40), (90, 120), (-5, 3)]
    ivs.sort(key=lambda x: (x[0], -x[1]))
    lanes = _lanes(root, ivs)
    got = dict(zip(ivs, lanes))
    assert got[(0, 10)] == 0 and got[(2, 5)] == 0 and got[(20, 60)] == 0
    assert got[(30, 70)] == 1 and got[(30, 40)] == 0   # (30,40) nests inside (20,60)
    assert got[(90, 120)] != 0 and got[(-5, 3)] != 0   # stick out of e2e: off the e2e track


def test_trace_of_a_run_is_valid_and_spans_nest_in_their_request(tmp_path):
    run = make_run(tmp_path / "run", steps=((1, 3.0), (2, 3.0)), warmup=0.5)
    trace = build_trace(run.path)
    check_trace_format(trace)
    req = pd.read_parquet(run.requests)
    spans = pd.read_parquet(run.spans)
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    e2e = {e["args"]["request_id"]: e for e in xs if e["name"] == "e2e"}
    assert set(e2e) == set(req["request_id"]) and trace["otherData"]["requests"] == len(req)
    # µs: the e2e event's duration is recv - send in ns / 1000
    r0 = req.iloc[0]
    assert abs(e2e[r0.request_id]["dur"] - (r0.recv_ns - r0.send_ns) / 1000) < EPS_US
    span_evs = [e for e in xs if e["name"] != "e2e"]
    assert len(span_evs) == len(spans)
    assert {e["name"] for e in span_evs} == set(spans["stage"] + "-" + spans["component"])
    assert any(e["args"].get("crop") == 2 for e in span_evs)     # attrs become args
    send = req.set_index("request_id")
    for ev in span_evs:
        rid = ev["args"]["request_id"]
        outer = e2e[rid]
        assert outer["pid"] == ev["pid"]
        sp = spans[spans["request_id"] == rid]
        assert sp["start_ns"].min() >= send.loc[rid, "send_ns"] and sp["end_ns"].max() <= send.loc[rid, "recv_ns"]
        # these synthetic spans lie inside [send, recv]: their events lie inside the e2e event
        assert ev["ts"] >= outer["ts"] - EPS_US and ev["ts"] + ev["dur"] <= outer["ts"] + outer["dur"] + EPS_US
    # overlapping crops needed extra lanes, named after the request
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert any("lane 2" in n for n in names.values())
    procs = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert {"step 0: 1 users", "step 1: 2 users"} <= procs


def test_slowest_n_and_the_cli(tmp_path):
    run = make_run(tmp_path / "run", steps=((1, 2.0), (2, 2.0)), warmup=0.5)
    req = pd.read_parquet(run.requests)
    want = set(req.assign(e2e=req["recv_ns"] - req["send_ns"]).nlargest(5, "e2e")["request_id"])
    out = tmp_path / "t.json"
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "trace_export.py"), str(run.path),
                           "--slowest", "5", "--out", str(out), "--group", "size"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trace = json.loads(out.read_text())
    check_trace_format(trace)
    got = {e["args"]["request_id"] for e in trace["traceEvents"] if e["ph"] == "X" and e["name"] == "e2e"}
    assert got == want
    assert min(e["ts"] for e in trace["traceEvents"] if e["ph"] == "X") == 0


def test_open_loop_request_shows_schedule_lag(tmp_path):
    run = RunDir(tmp_path / "run").create()
    rec = RequestRecord(request_id="a" * 32, user=0, image="img", size_class="0.1MP", bytes=10,
                        intended_ns=1_000, send_ns=5_000, recv_ns=9_000, status=200, error=None,
                        server_timing="", k=1)
    write_records([rec], RequestRecord, run.requests)
    trace = build_trace(run.path)
    check_trace_format(trace)
    xs = {e["name"]: e for e in trace["traceEvents"] if e["ph"] == "X"}
    assert xs["e2e"]["ts"] == 0 and xs["e2e"]["dur"] == 8.0              # intended → recv, µs
    assert xs["client-schedule_lag"]["dur"] == 4.0 and xs["e2e"]["args"]["schedule_lag_ms"] == 0.004
