"""The scale-out study (analysis/studies/scale_workers.py): its shape checks on synthetic tables
(they can fail), and its --smoke run on the real stack (redis-server, gateway, N worker processes,
Locust) writing the report, the table and one run directory per N."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from analysis.studies.scale_workers import plateau, shape_failures


def _table(backlog, depth, tput, offered=6.0):
    n = len(tput)
    return pd.DataFrame({"workers": list(range(1, n + 1)), "offered_rps": [offered] * n,
                         "requests": [50] * n, "throughput_rps": tput,
                         "classify_backlog_ms": backlog, "crops_depth_mean": depth})


def test_shape_checks_pass_on_decoupling_and_fail_without_it():
    assert shape_failures(_table([2000.0, 120.0], [28.0, 3.0], [4.4, 6.0])) == []
    # one worker consuming, the other idle (e.g. not in the consumer group): nothing improves
    bad = shape_failures(_table([2000.0, 1900.0], [28.0, 29.0], [4.4, 4.5]))
    assert len(bad) == 3, bad
    assert any("backlog" in b for b in bad) and any("throughput" in b for b in bad)
    assert shape_failures(_table([50.0, 10.0], [3.0, 1.0], [6.0, 6.0]))  # N=1 was not overloaded


def test_plateau_is_where_throughput_stops_growing():
    assert plateau(_table([0] * 4, [0] * 4, [3.0, 5.5, 5.7, 5.6])) == 2
    assert plateau(_table([0] * 4, [0] * 4, [3.0, 5.5, 7.0, 7.1])) == 3
    assert plateau(_table([0] * 4, [0] * 4, [3.0, 3.1, 3.0, 3.1])) == 1
    assert plateau(_table([0] * 3, [0] * 3, [1.0, 2.0, 3.0])) == 3


def test_scale_workers_smoke(tmp_path):
    assert shutil.which("redis-server"), "redis-server missing: run scripts/ensure_servers.sh"
    from analysis.studies import scale_workers
    out = tmp_path / "sw"
    assert scale_workers.main(["--smoke", "--out", str(out)]) == 0   # N=1,2; its shape checks pass
    df = pd.read_csv(out / "scale_workers.csv")
    assert list(df.workers) == [1, 2]
    assert (df.errors == 0).all(), df
    assert (df.workers_cores > 0).all() and (df.gateway_cores > 0).all(), df
    assert (df.classify_broker_ms > 0).all() and (df.classify_inference_ms > 0).all(), df
    for n in (1, 2):
        run = out / f"n{n}"
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["workers"]["processes"] == n
        assert sorted(k for k in cfg["process_cpu"] if k.startswith("worker-")) == \
            [f"worker-{i}" for i in range(n)]
        assert (run / "report.md").exists() and (run / "broker_depth.parquet").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["calibration"]["crop_ms"] >= 100.0           # the 100 ms sleep plus inference
    assert cfg["calibration"]["rate_rps"] == pytest.approx(df.offered_rps[0], rel=1e-3)
    assert (out / "plots" / "scale_workers.png").exists()
    report = (out / "report.md").read_text()
    assert "classify-backlog" in report and "Smoke checks FAILED" not in report
