"""The Overhead tab's numbers (analysis/report/live.py) are the report's critical path: per size
class the component means (with ``other``) add up to the mean request time, and equal the means of
``attribute_both(...).path``; requests without spans yet and failed requests are left out."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.report import live
from analysis.report.views import attribute_both
from overhead.contract.records import RequestRecord
from overhead.contract.rundir import write_records
from tests.test_critical_path import frame, one_worker_request


def _record(rid, size, send, recv, status=200):
    return RequestRecord(request_id=rid, user=0, image="x", size_class=size, bytes=1, intended_ns=send,
                         send_ns=send, recv_ns=recv, status=status, error=None if status == 200 else "boom",
                         server_timing="", k=4)


def test_live_breakdown_is_the_reports_critical_path(tmp_path):
    rows = []
    for i, rid in enumerate(["a", "b", "c"]):
        rows += [(rid, k, s + 10_000 * i, e + 10_000 * i, a) for _, k, s, e, a in one_worker_request(rid)[0]]
    spans = frame(rows)
    recs = [_record("a", "1MP", 0, 1_300), _record("b", "1MP", 10_000, 11_250),
            _record("c", "8MP", 20_000, 21_400), _record("d", "8MP", 30_000, 31_000),   # no spans yet
            _record("e", "8MP", 40_000, 40_100, status=500)]
    write_records(recs, RequestRecord, tmp_path / "requests.parquet")
    (tmp_path / "spans").mkdir()
    spans.iloc[:40].to_parquet(tmp_path / "spans" / "part-0.parquet")
    spans.iloc[40:].to_parquet(tmp_path / "spans" / "part-1.parquet")
    (tmp_path / "spans" / "part-2.parquet").write_bytes(b"being written")   # skipped, not fatal

    out = live.compute([str(tmp_path / "requests.parquet"), str(tmp_path / "spans")])
    assert [(b["size_class"], b["requests"]) for b in out] == [("1MP", 2), ("8MP", 1)]
    req = pd.read_parquet(tmp_path / "requests.parquet")
    path = attribute_both(req[req["request_id"].isin(["a", "b", "c"])], spans).path
    for b, ids in zip(out, (["a", "b"], ["c"])):
        assert sum(b["components"].values()) == pytest.approx(b["e2e_mean_ms"], abs=1e-3)
        want = path.loc[ids].mean() / 1e6
        assert b["e2e_mean_ms"] == pytest.approx(want["e2e"], abs=1e-4)
        assert "classify-backlog" in b["components"]
        for name, ms in b["components"].items():
            assert ms == pytest.approx(want[name], abs=1e-4), name
    json.dumps(out)   # what GET /overhead/breakdown.json serves


def test_live_breakdown_keeps_a_batchs_identical_spans_of_different_crops(tmp_path):
    """A worker classifying a request's crops in one batch records one inference span per crop
    with the same start and end; only ``attrs`` (the crop) tells them apart. The tab keeps them
    all (it once de-duplicated them away and the last crop's inference became ``other``)."""
    def batched(rid, t0):
        rows = [(rid, "detect-decode", t0, t0 + 100, None), (rid, "detect-postprocess", t0 + 100, t0 + 150, None)]
        start, end = t0 + 200, t0 + 600                # one batch of 2 crops, one call
        for i in range(2):
            a = {"crop": i, "worker": "W"}
            rows += [(rid, "detect-serialize", t0 + 150 + 5 * i, t0 + 155 + 5 * i, {"crop": i}),
                     (rid, "classify-broker", t0 + 155 + 5 * i, t0 + 190, a),
                     (rid, "classify-normalize", t0 + 190 + 5 * i, t0 + 195 + 5 * i, a),
                     (rid, "classify-inference", start, end, a),
                     (rid, "classify-broker", end + 10 * i, end + 20 + 10 * i, {"crop": i, "leg": "results"})]
        return rows
    us = 1000   # the tab rounds to 0.1 us: times in microseconds
    rows = [(rid, c, s * us, e * us, a) for rid, c, s, e, a in batched("a", 0) + batched("b", 10_000)]
    spans = frame(rows)
    write_records([_record("a", "1MP", 0, 700 * us), _record("b", "1MP", 10_000 * us, 10_700 * us)], RequestRecord,
                  tmp_path / "requests.parquet")
    (tmp_path / "spans").mkdir()
    spans.to_parquet(tmp_path / "spans" / "part-0.parquet")
    (b,) = live.compute([str(tmp_path / "requests.parquet"), str(tmp_path / "spans")])
    path = attribute_both(pd.read_parquet(tmp_path / "requests.parquet"), spans).path
    want = path.mean() / 1e6
    assert b["components"]["classify-inference"] == pytest.approx(want["classify-inference"], abs=1e-4)
    assert want["classify-inference"] == pytest.approx(0.4)      # the batch's 400 us
    for name, ms in b["components"].items():
        assert ms == pytest.approx(want[name], abs=1e-4), name
