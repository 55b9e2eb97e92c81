"""The headline attribution (critical path) and the broker/backlog split, on hand-made span sets
with exact known answers."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from analysis.report.attribution import attribute, by_component
from analysis.report.backlog import backlog_fraction, busy_intervals, span_roles
from analysis.report.critical_path import critical_path
from overhead.contract.records import Span, field_names


def reqs(*rows):
    return pd.DataFrame(rows, columns=["request_id", "send_ns", "recv_ns"])


def frame(rows):
    """(request_id, 'stage-component', start, end, attrs dict | None) rows."""
    out = [(r, k.split("-")[0], k.split("-")[1], s, e, json.dumps(a) if a else None, None)
           for r, k, s, e, a in rows]
    return pd.DataFrame(out, columns=list(field_names(Span)))


def one_worker_request(rid="r", k=4, service=200, workers=("W",)):
    """detect decode/postprocess, k crops published 10 ns apart; workers take crops in turn
    (crop i to workers[i % n]), each busy ``service`` ns per crop, 4 ns of consume/ack between
    crops, results back after 8 ns."""
    rows = [(rid, "detect-decode", 0, 100, None), (rid, "detect-postprocess", 100, 150, None)]
    free = {w: 0 for w in workers}
    last = 0
    for i in range(k):
        w = workers[i % len(workers)]
        produce = 152 + 10 * i
        rows.append((rid, "detect-serialize", 150 + 10 * i, 155 + 10 * i, {"crop": i}))
        deliver = max(produce + 8, free[w] + 4)
        a = {"crop": i, "worker": w}
        rows += [(rid, "classify-broker", produce, deliver, a),
                 (rid, "classify-serialize", deliver + 1, deliver + 11, a),
                 (rid, "classify-inference", deliver + 11, deliver + 1 + service, a)]
        done = deliver + 1 + service
        free[w] = done
        rows.append((rid, "classify-broker", done + 1, done + 9, {"crop": i, "leg": "results"}))
        last = max(last, done + 9)
    return rows, last


def test_one_worker_four_crops_exact():
    rows, last = one_worker_request()
    assert last == 985
    sp = frame(rows)
    a = critical_path(reqs(("r", 0, 1000)), sp).loc["r"]
    # the path: decode, postprocess, the 4 serialize spans up to crop 3's publish, crop 3's chain
    assert a["detect-decode"] == 100 and a["detect-postprocess"] == 50
    assert a["detect-serialize"] == 2 + 5 + 5 + 5
    assert a["classify-backlog"] == (361 - 182) + 200 + 200      # worker busy with crops 0..2
    assert a["classify-broker"] == (775 - 182 - 579) + 8          # transit + results leg
    assert a["classify-serialize"] == 10 and a["classify-inference"] == 190
    assert a["other"] == 15 + 1 + 1 + 5 + 5 + 5
    assert a.drop("e2e").sum() == a["e2e"] == 1000


def test_closure_and_work_view_keeps_the_even_split_with_backlog():
    rows, _ = one_worker_request()
    sp = frame(rows)
    rq = reqs(("r", 0, 1000))
    roles = span_roles(sp)
    busy = busy_intervals(sp, roles)
    frac = backlog_fraction(sp, roles, busy)
    work = attribute(rq, sp, frac).loc["r"]
    plain = attribute(rq, sp).loc["r"]
    assert work.drop("e2e").sum() == pytest.approx(1000)
    assert work["classify-broker"] + work["classify-backlog"] == pytest.approx(plain["classify-broker"])
    # crop 3's wait [182, 775) is 579/593 backlog: in the work view too
    assert frac[(sp["component"] == "broker").to_numpy() & (roles["crop"] == 3).to_numpy()
                & roles["crops_leg"].to_numpy()][0] == pytest.approx(579 / 593)
    comp = by_component(critical_path(rq, sp))
    assert list(comp.columns).index("backlog") == list(comp.columns).index("broker") + 1


def test_path_follows_the_crop_that_finished_last():
    # crop 1 is slow (its worker is slow); crop 2 finishes first although published last
    rows = [("r", "detect-decode", 0, 100, None)]
    for i, (deliver, end) in enumerate([(110, 300), (112, 700), (114, 200)]):
        a = {"crop": i, "worker": f"W{i}"}
        rows += [("r", "classify-broker", 101 + i, deliver, a),
                 ("r", "classify-inference", deliver, end, a),
                 ("r", "classify-broker", end, end + 5, {"crop": i, "leg": "results"})]
    a = critical_path(reqs(("r", 0, 710)), frame(rows)).loc["r"]
    assert a["classify-inference"] == 700 - 112
    assert a["classify-broker"] == (112 - 102) + 5
    assert a["classify-backlog"] == 0
    assert a["detect-decode"] == 100 and a["other"] == 2 + 5
    assert a.drop("e2e").sum() == 710


def test_two_workers_cut_the_backlog():
    rows, last = one_worker_request(workers=("A", "B"))
    a = critical_path(reqs(("r", 0, last + 15)), frame(rows)).loc["r"]
    one, _ = one_worker_request()
    b = critical_path(reqs(("r", 0, 1000)), frame(one)).loc["r"]
    # crop 3 goes to B, which served crop 1 only: it waits for one crop, not three
    assert a["classify-backlog"] == pytest.approx((162 + 8 + 1 + 200) - 182)
    assert a["classify-backlog"] < b["classify-backlog"] / 2
    assert a.drop("e2e").sum() == pytest.approx(a["e2e"])


def test_nested_spans_keep_their_own_time_and_gaps_are_other():
    sp = frame([("r", "detect-inference", 10, 90, None), ("r", "detect-queue", 20, 40, None)])
    a = critical_path(reqs(("r", 0, 100)), sp).loc["r"]
    assert a["detect-queue"] == 20 and a["detect-inference"] == 60 and a["other"] == 20


def test_spans_without_worker_keep_their_wait_as_broker():
    rows, _ = one_worker_request()
    rows = [(r, k, s, e, ({x: v for x, v in a.items() if x != "worker"} if a else a))
            for r, k, s, e, a in rows]
    a = critical_path(reqs(("r", 0, 1000)), frame(rows)).loc["r"]
    assert a["classify-backlog"] == 0 and a["classify-broker"] == 593 + 8


def test_critical_path_is_fast_for_5000_requests():
    n = 5000
    rq, rows = [], []
    for i in range(n):
        r, last = one_worker_request(rid=f"r{i}")
        off = i * 2000
        rq.append((f"r{i}", off, off + last + 15))
        rows += [(rid, k, s + off, e + off, a) for rid, k, s, e, a in r]
    sp = frame(rows)
    t0 = time.perf_counter()
    a = critical_path(reqs(*rq), sp)
    elapsed = time.perf_counter() - t0
    print(f"critical path: {n} requests, {len(sp)} spans in {elapsed:.2f} s")
    assert elapsed < 10, elapsed
    assert (a.drop(columns="e2e").sum(axis=1) - a["e2e"]).abs().max() < 1e-6
    assert np.allclose(a["classify-backlog"], 579)


def test_pareto_front_and_best_under_a_budget():
    from analysis.pareto import best_under, pareto_mask

    df = pd.DataFrame({"run": ["a", "a", "b", "b", "c"], "users": [1, 4, 1, 4, 1],
                       "size_class": ["1MP"] * 5, "throughput_rps": [10.0, 12.0, 11.0, 20.0, 9.0],
                       "e2e_p99_ms": [100.0, 400.0, 90.0, 300.0, 95.0]})
    assert pareto_mask(df).tolist() == [False, False, True, True, False]
    best = best_under(df, 200.0)
    assert best[["run", "users"]].values.tolist() == [["b", 1]]
    assert len(best_under(df, 50.0)) == 0


def test_uncertainty_mean_ci_and_p99_bound():
    from analysis.report.uncertainty import mean_ci, min_samples, p99_upper_bound, repeat_table

    m, h, n = mean_ci([10.0, 12.0, 14.0])
    assert (m, n) == (12.0, 3) and h == pytest.approx(4.303 * 2 / 3 ** 0.5, rel=1e-3)
    assert np.isnan(mean_ci([5.0])[1])
    assert min_samples() == 459                       # 1 - 0.99^n >= 0.99
    assert np.isnan(p99_upper_bound(np.arange(1, 459)))
    assert p99_upper_bound(np.arange(1, 460)) == 459  # the maximum of 459 samples
    assert p99_upper_bound(np.arange(1, 1001)) == 998   # above the sample p99 (990)
    main = pd.DataFrame({"users": [1, 1], "size_class": ["1MP", "1MP"], "requests": [5, 5],
                         "throughput_rps": [10.0, 12.0], "e2e_mean_ms": [1.0, 3.0],
                         "e2e_p50_ms": [1.0, 1.0], "e2e_p99_ms": [2.0, 2.0], "broker_mean_ms": [0.5, 0.7]})
    t = repeat_table([main.iloc[[0]], main.iloc[[1]]], ["broker"])
    assert t.loc[0, "repeats"] == 2 and t.loc[0, "throughput_rps"] == 11.0
    assert t.loc[0, "broker_mean_ms"] == pytest.approx(0.6) and t.loc[0, "throughput_rps_ci"] > 0


def test_a_skewed_worker_clock_is_estimated_and_corrected():
    from analysis.report.clocks import correct_worker_clocks

    rows, _ = one_worker_request()
    skew = 500_000
    shifted = []
    for r, k, s, e, a in rows:        # the worker clock reads +0.5 ms: every stamp it takes
        if a and a.get("worker") and k == "classify-broker":
            shifted.append((r, k, s, e + skew, a))            # deliver is the worker's stamp
        elif a and a.get("worker"):
            shifted.append((r, k, s + skew, e + skew, a))
        elif a and a.get("leg") == "results":
            shifted.append((r, k, s + skew, e, a))            # result produce is the worker's
        else:
            shifted.append((r, k, s, e, a))
    rq = reqs(("r", 0, 1000))
    fixed, notes, _ = correct_worker_clocks(rq, frame(shifted))
    assert len(notes) == 1 and "Clock skew corrected" in notes[0] and "`W`" in notes[0]
    # the fastest round trip (crop 0: 8 ns there, 8 ns back) bounds the offset to +0.5 ms +- 8 ns
    assert "+0.50 ± 0.00 ms" in notes[0]
    back = frame(rows)
    assert (fixed[["start_ns", "end_ns"]].to_numpy() - back[["start_ns", "end_ns"]].to_numpy()).max() == 0
    # an in-process worker (same clock) is left alone
    same, none, _ = correct_worker_clocks(rq, back)
    assert none == [] and same.equals(back)


def test_spans_of_a_worker_without_round_trips_are_refused_with_a_warning():
    from analysis.report.clocks import correct_worker_clocks

    rows, _ = one_worker_request()
    rows = [(r, k, s + 5_000, e + 5_000, a) if a and a.get("worker") and k != "classify-broker"
            else (r, k, s, e, a) for r, k, s, e, a in rows if not (a and a.get("leg"))]
    kept, notes, roles = correct_worker_clocks(reqs(("r", 0, 1000)), frame(rows))
    assert len(roles) == len(kept)
    assert len(notes) == 1 and "spans refused" in notes[0]
    assert kept["end_ns"].max() <= 1000


def test_joined_server_spans_without_worker_still_count_as_busy():
    rows, _ = one_worker_request()
    # a server trace joined in place of the worker's inference span keeps the crop, not the worker
    rows = [(r, k, s, e, {"crop": a["crop"], "source": "triton-trace"})
            if k == "classify-inference" else (r, k, s, e, a) for r, k, s, e, a in rows]
    a = critical_path(reqs(("r", 0, 1000)), frame(rows)).loc["r"]
    assert a["classify-backlog"] == 579
