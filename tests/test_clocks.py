"""analysis/report/clocks.py on hand-made spans with exact known answers: the gateway's offset
against the load generator from HTTP round trips, the per-process table and its note."""
from __future__ import annotations

import json

import pandas as pd

from analysis.report.clocks import check_clocks, clocks_note, gateway_offset
from analysis.report.backlog import span_roles
from overhead.contract.records import Span, field_names

GW, WK = "gw-host:10", "wk-host:20"


def frame(rows):
    """(request_id, 'stage-component', start, end, attrs | None, process) rows."""
    out = [(r, k.split("-")[0], k.split("-")[1], s, e, json.dumps(a) if a else None, p)
           for r, k, s, e, a, p in rows]
    return pd.DataFrame(out, columns=list(field_names(Span)))


def request(rid, t0, skew=0, worker_skew=0):
    """Sent at t0 (load generator clock), 1000 ns on the wire each way; the gateway's spans on
    its clock (+skew), one crop through a worker (+skew+worker_skew), answered at t0 + 10000."""
    g, w = skew, skew + worker_skew
    rows = [(rid, "gateway-transfer", t0 + 1000 + g, t0 + 1500 + g, None, GW),
            (rid, "detect-inference", t0 + 1500 + g, t0 + 4000 + g, None, GW),
            (rid, "classify-broker", t0 + 4000 + g, t0 + 4500 + w, {"crop": 0, "worker": "W"}, WK),
            (rid, "classify-inference", t0 + 4500 + w, t0 + 8000 + w, {"crop": 0, "worker": "W"}, WK),
            (rid, "classify-broker", t0 + 8000 + w, t0 + 8500 + g, {"crop": 0, "leg": "results"}, GW),
            (rid, "detect-postprocess", t0 + 8500 + g, t0 + 9000 + g, None, GW)]
    return rows, (rid, t0, t0 + 10_000, 200, None)


def run(n=3, **skews):
    rows, reqs = [], []
    for i in range(n):
        r, q = request(f"r{i}", i * 100_000, **skews)
        rows += r
        reqs.append(q)
    return (pd.DataFrame(reqs, columns=["request_id", "send_ns", "recv_ns", "status", "error"]),
            frame(rows))


def test_gateway_offset_from_http_round_trips_is_the_ntp_interval():
    req, sp = run(skew=0)
    theta, err, n = gateway_offset(req, sp, span_roles(sp))
    # t2 - t1 = 1000, t4 - t3 = 1000: centred on 0, half of what the gateway did not cover
    assert (theta, err, n) == (0.0, 1000.0, 3)


def test_a_skewed_gateway_is_corrected_against_the_load_generator():
    skew = 3_000_000
    req, sp = run(skew=skew)
    c = check_clocks(req, sp, processes={GW: {"host": "gw-host", "role": "gateway"}})
    gw = c.table.set_index("name").loc["gateway"]
    assert gw["theta_ns"] == skew and gw["err_ns"] == 1000 and gw["corrected"]
    assert gw["process"] == GW and gw["host"] == "gw-host" and gw["reference"] == "load generator"
    back = run(skew=0)[1]
    assert (c.spans[["start_ns", "end_ns"]].to_numpy() == back[["start_ns", "end_ns"]].to_numpy()).all()
    assert any("gateway's clock is +3.00 ± 0.00 ms" in n for n in c.notes)


def test_worker_then_gateway_both_corrected_and_every_process_in_the_table():
    req, sp = run(skew=2_000_000, worker_skew=-5_000_000)
    c = check_clocks(req, sp)
    t = c.table.set_index("name")
    assert t.loc["W", "theta_ns"] == -5_000_000 and t.loc["W", "process"] == WK
    assert t.loc["W", "host"] == "wk-host" and t.loc["W", "corrected"]
    assert t.loc["gateway", "theta_ns"] == 2_000_000 and t.loc["gateway", "corrected"]
    back = run()[1]
    assert (c.spans[["start_ns", "end_ns"]].to_numpy() == back[["start_ns", "end_ns"]].to_numpy()).all()
    note = clocks_note(c.table)[0]
    assert "worker `W` (`wk-host:20`) vs the gateway: -5.00 ± 0.00 ms" in note
    assert "gateway (`gw-host:10`) vs the load generator: +2.00" in note


def test_clocks_that_agree_are_left_alone_and_old_runs_without_processes_still_work():
    req, sp = run()
    c = check_clocks(req, sp)
    assert c.notes == [] and not c.table["corrected"].any() and c.spans.equals(sp)
    old = sp.drop(columns="process")
    c = check_clocks(req, old)
    assert c.notes == [] and set(c.table["process"]) == {""} and len(c.table) == 2
