"""Lab benchmarks at smoke size against the REAL tritonserver: ``analysis/bench_triton.py`` (our
client spans joined with Triton's own trace) and ``analysis/bench_transfer.py`` (HTTP / gRPC /
system shared memory). They measure, so the tests check what must hold whatever the timings:
every request answered and joined, the parts inside their whole, the server doing the work."""
from __future__ import annotations

import json

import pytest

from triton_server import require_triton


@pytest.mark.slow
def test_bench_triton_smoke_joins_every_request_with_the_trace(tmp_path):
    require_triton()
    from analysis import bench_triton

    out = tmp_path / "bt.json"
    assert bench_triton.main(["--model", "custom_cnn", "--protocols", "http,grpc", "--concurrency",
                              "1,2", "--requests", "8", "--max-batch", "4", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    ours = res["ours"]
    assert {(r["protocol"], r["concurrency"]) for r in ours} == {("http", 1), ("http", 2),
                                                                  ("grpc", 1), ("grpc", 2)}
    for r in ours:
        assert r["n"] == 8 and r["joined"] == 8, r          # every request found in Triton's trace
        assert r["inference_p50_ms"] > 0 and r["server_infer_mean_ms"] > 0, r
        assert 0 <= r["transfer_p50_ms"] < r["round_trip_p50_ms"], r
        assert r["inference_p50_ms"] < r["round_trip_p50_ms"], r
        assert r["batches"] and sum(int(k) * v for k, v in r["batches"].items()) >= 8, r
        if r["concurrency"] == 1:      # one request in flight: Triton never forms a bigger batch
            assert set(r["batches"]) == {"1"}, r
    assert res["cpu_s"]["tritonserver"] > 0 and res["cpu_s"]["bench"] > 0


@pytest.mark.slow
def test_bench_transfer_smoke_all_modes(tmp_path):
    require_triton()
    from analysis import bench_transfer

    out = tmp_path / "tr.json"
    assert bench_transfer.main(["--requests", "6", "--megapixels", "0.25", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["shape"] == [500, 500] and res["bytes"] == 500 * 500 * 4
    rows = {r["mode"]: r for r in res["rows"]}
    assert set(rows) == {"http", "grpc", "http-shm", "grpc-shm"}
    for m, r in rows.items():
        # the server's own time (Triton statistics) lies inside the client's round trip
        assert 0 < r["server_ms"] < r["mean_ms"], (m, r)
        assert r["transfer_ms"] == pytest.approx(r["mean_ms"] - r["server_ms"])
        assert r["p50_ms"] > 0 and r["MB_s"] > 0, (m, r)
