"""Distributed load: ``loadtest.sweep --locust-workers 2`` runs a Locust master (headless, the
stepped shape) plus two worker processes against the REAL gateway (seeded SSD + MobileNetV2,
cached); each worker sends its records to the master, which writes the one run directory."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


@pytest.mark.slow
def test_sweep_with_two_locust_workers(tmp_path):
    from pipelines.models import ensure_model

    det, cls = ensure_model("ssd_mobilenetv2"), ensure_model("mobilenetv2")
    out = tmp_path / "run"
    cmd = [PY, "-m", "loadtest.sweep", "--out", str(out), "--users", "2,4", "--step-seconds", "4",
           "--warmup-seconds", "1", "--sizes", "0.1MP", "--locust-workers", "2",
           "--detector", det.name, "--classifier", cls.name,
           "--models-dir", str(Path(det.onnx_path).parent.parent), "--intra-op-threads", "1", "--k", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    final = config["locust"]["final"]
    req = pd.read_parquet(out / "requests.parquet")
    # the master's final counters == merged records
    assert len(req) == final["requests"] == final["infer_requests"] > 10
    assert len(final["records_by_worker"]) == 2 and all(v > 0 for v in final["records_by_worker"].values())
    assert sum(final["records_by_worker"].values()) == len(req)
    assert req["request_id"].is_unique and (req["status"] == 200).all()
    assert req["user"].nunique() >= 4                      # users of both workers, ids distinct
    assert not any(k.startswith("component ") for k in final["by_name"])   # no component rows (issue 15)
    assert config["locust"]["worker_exit_codes"] == [0, 0]
    steps = pd.read_parquet(out / "steps.parquet")
    assert list(steps["users"]) == [2, 4]
    spans = pd.read_parquet(out / "spans.parquet")
    assert set(req["request_id"]) <= set(spans["request_id"])
    assert (out / "report.md").exists() and (out / "breakdown.csv").exists()
    assert all(c["locust_cores"] > 0 for c in config["load_generator_cpu"])   # measured, per step
