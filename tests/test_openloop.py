"""Open-loop load: arrival statistics, and REAL headless Locust runs over REAL HTTP on loopback.

The HTTP server here is a STAND-IN ENDPOINT FOR TESTING THE LOAD GENERATOR, NOT THE GATEWAY:
a stdlib ``ThreadingHTTPServer`` answering ``POST /v1/infer`` like the gateway (JSON with the
request id and ``k``), one request at a time (a lock), ~10 ms each, that STALLS once for
``STALL_S`` seconds about a second after its first request. A closed loop of one user sees that
stall once (one slow request); open-loop arrivals keep coming during it, and their latency counted
from the intended send time shows the wait.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from overhead.contract.runconfig import write_config  # noqa: E402
from overhead.contract.rundir import RunDir  # noqa: E402
from loadtest.schedule import ArrivalProcess, parse_rates  # noqa: E402

PY = sys.executable
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
SERVICE_S, STALL_AFTER_S, STALL_S = 0.010, 1.0, 1.0


# --- arrival process (no Locust) -------------------------------------------------------------

def test_poisson_gaps_are_exponential_at_the_rate():
    from scipy import stats

    rate = 8.0
    gaps = np.diff([0] + ArrivalProcess("poisson", seed=42).times_ns(rate, 0, 4000)) / 1e9
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.06)        # CV of an exponential
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    # same seed, same schedule; another seed, another one
    assert ArrivalProcess("poisson", 42).times_ns(rate, 0, 50) == ArrivalProcess("poisson", 42).times_ns(rate, 0, 50)
    assert ArrivalProcess("poisson", 1).times_ns(rate, 0, 50) != ArrivalProcess("poisson", 42).times_ns(rate, 0, 50)


def test_constant_gaps_and_rate_parsing():
    t = ArrivalProcess("constant").times_ns(4.0, 1_000, 5)
    assert np.allclose(np.diff([1_000] + t), 250_000_000, atol=1)
    assert parse_rates("2, 4,8") == [2.0, 4.0, 8.0]
    for bad in ("", "0", "2,-1"):
        with pytest.raises(ValueError):
            parse_rates(bad)
    with pytest.raises(ValueError):
        ArrivalProcess("bursty")


# --- the stalling stand-in endpoint (not the gateway) ------------------------------------------

def make_stalling_standin():
    lock = threading.Lock()
    state = {"first": None, "stalled": False}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):
            rid = self.headers.get("X-Request-ID", "")
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:                                  # one request at a time
                now = time.monotonic()
                state["first"] = state["first"] or now
                if not state["stalled"] and now - state["first"] > STALL_AFTER_S:
                    state["stalled"] = True
                    time.sleep(STALL_S)                 # the hiccup
                time.sleep(SERVICE_S)
            body = json.dumps({"request_id": rid, "k": 0, "detections": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def stalling():
    """A factory: each call starts a fresh stand-in (each stalls once); all stopped at the end."""
    servers = []

    def start() -> str:
        servers.append(make_stalling_standin())
        return f"http://127.0.0.1:{servers[-1].server_address[1]}"
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def write_small_manifest(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    entries = []
    for i in range(3):
        p = images / f"img{i}.jpg"
        p.write_bytes(b"\xff\xd8" + os.urandom(2_000))
        entries.append(dict(name=f"img{i}", size_class="0.1MP", path=str(p), width=1, height=1, nbytes=2002))
    m = tmp_path / "corpus.json"
    m.write_text(json.dumps(entries))
    return m


def run_locust(tmp_path: Path, name: str, url: str, extra: list[str], seconds: float = 3.5) -> RunDir:
    run = RunDir(tmp_path / name).create()
    cmd = [PY, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url, "--only-summary",
           "--overhead-run-dir", str(run.path), "--overhead-manifest", str(write_small_manifest(tmp_path / name)),
           "--overhead-steps", f"1:{seconds}", "--overhead-warmup-seconds", "0",
           "--exit-code-on-error", "0", *extra]   # requests in flight at the end are "incomplete"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.mark.slow
def test_open_loop_sees_the_stall_that_closed_loop_hides(tmp_path, stalling):
    # closed loop, one user: the stall delays one request
    closed = pd.read_parquet(run_locust(tmp_path, "closed", stalling(), []).requests)
    closed = closed[closed["error"] != "incomplete"]    # the one in flight when the run ended
    assert (closed["intended_ns"] == closed["send_ns"]).all() and len(closed) > 50
    c_e2e = (closed["recv_ns"] - closed["send_ns"]) / 1e6
    assert c_e2e.max() > 0.8 * STALL_S * 1e3                  # it did see the stall ...
    assert (c_e2e > 200).mean() < 0.03                         # ... as one request in many

    # open loop, 25 req/s constant, one request in flight at a time (so the client queues)
    run = run_locust(tmp_path, "open", stalling(),
                     ["--overhead-arrivals", "constant", "--overhead-rates", "25",
                      "--overhead-max-in-flight", "1"])
    opened = pd.read_parquet(run.requests).sort_values("intended_ns")
    assert ((opened["status"] == 200) | (opened["error"] == "incomplete")).all() and len(opened) > 40
    from_intended = (opened["recv_ns"] - opened["intended_ns"]) / 1e6
    from_send = (opened["recv_ns"] - opened["send_ns"]) / 1e6
    lag = (opened["send_ns"] - opened["intended_ns"]) / 1e6
    assert (lag >= 0).all()
    # the requests due during the stall waited: a large share of slow requests from intended time
    assert (from_intended > 200).mean() > 0.15, from_intended.describe()
    assert (from_send > 200).mean() < 0.05                     # measured from the send, hidden
    assert lag.quantile(0.99) > 200
    # the arrivals kept to their schedule: constant gaps of 40 ms
    gaps = np.diff(opened["intended_ns"].to_numpy()) / 1e6
    assert np.allclose(gaps, 40.0, atol=0.01), gaps[:10]
    ol = json.loads(run.locust_openloop.read_text())
    assert ol["kind"] == "constant" and ol["steps"]["0"]["slot_waits"] > 0

    # the report: e2e from intended time, schedule lag shown, overload named
    write_config(run.path, {"load": {"arrivals": "constant", "rates": [25], "max_in_flight": 1,
                                     "schedule": [{"rate": 25, "seconds": 3.5}],
                                     "stability": {"window_s": 1.0, "min_requests": 10}}})
    from analysis.breakdown import report
    rep = report(run.path, quiet=True)
    md = run.report_md.read_text()
    assert "## Validity" in md.split("## What ran")[0]
    assert "schedule_lag" in md and "lag p99 ms" in md and "25 req/s" in md
    assert "in-flight slots were busy" in md
    main = rep.summary.main.iloc[0]
    assert main["e2e_p99_ms"] == pytest.approx(from_intended.quantile(0.99), rel=0.05)


@pytest.mark.slow
def test_poisson_open_loop_keeps_its_rate(tmp_path, stalling):
    rate = 40.0
    run = run_locust(tmp_path, "poisson", stalling(),
                     ["--overhead-arrivals", "poisson", "--overhead-rates", f"{rate:g}",
                      "--overhead-max-in-flight", "100", "--overhead-seed", "7"], seconds=3.0)
    req = pd.read_parquet(run.requests).sort_values("intended_ns")
    gaps = np.diff(req["intended_ns"].to_numpy()) / 1e9
    assert len(gaps) > 60
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.25)
    assert 0.7 < gaps.std() / gaps.mean() < 1.3                # exponential gaps: CV ~ 1
    lag = (req["send_ns"] - req["intended_ns"]) / 1e6
    # with free slots the scheduler itself keeps up (the stall holds answers, not sends)
    assert lag.quantile(0.5) < 5 and json.loads(run.locust_openloop.read_text())["steps"]["0"]["slot_waits"] == 0
    assert not math.isnan(lag.quantile(0.99))
