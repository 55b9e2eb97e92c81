"""The Locust web UI driven over its HTTP API, against the REAL gateway (seeded SSD + MobileNetV2,
built once and cached): POST /swarm twice (two steps), POST /stop, then the run directory the
locustfile writes for UI tests, Locust's own /stats/requests (totals that count only /v1/infer, no
component rows), and the breakdown report on the run directory."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from deploy.probes import http_ok
from deploy.processes import ManagedProcess, free_port

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"


def _post(url: str, form: dict | None = None) -> dict:
    data = urllib.parse.urlencode(form or {}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=30) as r:
        return json.loads(r.read())


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _wait(pred, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _manifest(tmp_path) -> Path:
    from pipelines.corpus import build_corpus

    imgs = build_corpus(sizes=("0.1MP",), photos=("china", "astronaut"))
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([{"name": i.name, "size_class": i.size_class,
                                 "path": str(Path(i.path).resolve())} for i in imgs]))
    return path


@pytest.mark.slow
def test_web_ui_run_against_the_real_gateway(tmp_path, real_gateway):
    gw, spans_dir = real_gateway
    run_dir = tmp_path / "ui-run"
    port = free_port()
    web = f"http://127.0.0.1:{port}"
    log = tmp_path / "locust.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
    proc = ManagedProcess(
        "locust-ui", [PY, "-m", "locust", "-f", str(LOCUSTFILE), "--host", gw.url, "--web-host", "127.0.0.1",
                      "--web-port", str(port), "--overhead-run-dir", str(run_dir),
                      "--overhead-manifest", str(_manifest(tmp_path)), "--overhead-spans-dir", str(spans_dir),
                      "--overhead-warmup-seconds", "0"],   # default 5 s, as in the sweep
        log, ready=lambda: http_ok(web + "/", 2.0), env=env, cwd=tmp_path, stop_timeout_s=20)
    proc.start(timeout_s=60)
    try:
        r = _post(web + "/swarm", {"user_count": 1, "spawn_rate": 10, "host": gw.url})
        assert r["success"] and "shape" not in r["message"], r     # the UI's numbers, not the shape
        time.sleep(2.5)
        assert _post(web + "/swarm", {"user_count": 2, "spawn_rate": 10, "host": gw.url})["success"]
        time.sleep(1.5)
        reset = urllib.request.Request(web + "/stats/reset", method="POST")   # the Reset button
        with urllib.request.urlopen(reset, timeout=10) as r:
            assert r.status == 200
        time.sleep(1.5)
        assert _post(web + "/stop")["success"]
        stats = _get(web + "/stats/requests")
        rows = stats["stats"]
        # no Server-Timing "component" rows (the Overhead tab has the breakdown)
        assert not [r for r in rows if r["method"] == "component"]
        infer = sum(r["num_requests"] for r in rows if r["name"].startswith("/v1/infer"))
        total = next(r for r in rows if r["name"] == "Aggregated")
        assert infer > 3 and total["num_requests"] == infer

        cfg_path = run_dir / "config.json"
        cfg = _wait(lambda: json.loads(cfg_path.read_text()).get("spans_merged_ns") and
                    json.loads(cfg_path.read_text()), 20, "the run directory and its spans", log)
        req = pd.read_parquet(run_dir / "requests.parquet")
        assert len(req) == infer + cfg["resets"][0]["records_before"] and req["request_id"].is_unique
        assert (req["status"] == 200).all()
        final = json.loads((run_dir / "locust" / "final_stats.json").read_text())
        resets = cfg["resets"]           # Reset: a new segment, Locust counts from it
        assert len(resets) == 1 and 0 < resets[0]["records_before"] < len(req)
        assert final["infer_requests"] == final["requests"] == len(req) - resets[0]["records_before"]
        assert cfg["load_generator_cpu"][0]["locust_cores"] > 0   # UI runs measure Locust's CPU
        steps = pd.read_parquet(run_dir / "steps.parquet")
        assert list(steps["users"]) == [1, 2]
        assert (steps["measure_start_ns"] == steps["start_ns"]).all()       # --overhead-warmup-seconds 0
        assert (steps["start_ns"].iloc[1] == steps["end_ns"].iloc[0])
        assert steps["start_ns"].iloc[0] <= req["send_ns"].min() and req["recv_ns"].max() <= steps["end_ns"].iloc[-1]
        assert cfg["run"]["host"] == gw.url and cfg["gateway"]["settings"]["k"] == 2
        assert [s["users"] for s in cfg["swarms"]] == [1, 2] and cfg["swarms"][0]["spawn_rate"] == 10
        spans = pd.read_parquet(run_dir / "spans.parquet")
        assert set(req["request_id"]) == set(spans["request_id"])           # all spans, incl. the last ones
        assert cfg["counts"]["spans"] == len(spans)
        procs = json.loads((run_dir / "processes.json").read_text())   # whose clocks: gateway, loadgen
        assert {p["role"] for p in procs} >= {"gateway", "loadgen"}
        assert set(spans["process"]) <= {p["process"] for p in procs}

        rep = subprocess.run([PY, "analysis/breakdown.py", str(run_dir)], capture_output=True,
                             text=True, timeout=120, cwd=REPO)
        assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
        md = (run_dir / "report.md").read_text()
        assert "reset 1× in the web UI" in md and "MISMATCH" not in md
        # quit on SIGTERM by itself (not killed), leaving nothing behind in its process group
        pid = proc.pid
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) is not None, "Locust did not stop on SIGTERM"
        time.sleep(0.2)
        assert not _group_alive(pid), "orphans left in Locust's process group"
    finally:
        proc.stop()
