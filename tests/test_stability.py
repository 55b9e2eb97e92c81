"""overhead/contract/stability.py on synthetic window series, and the live step extension of StepTracker."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overhead.contract.stability import StabilityRule, Window, assess, judge, run_validity, windows  # noqa: E402
from loadtest.schedule import StepSchedule, StepTracker  # noqa: E402

S = 1_000_000_000


def series(tput: list[float], p50: list[float]) -> list[Window]:
    return [Window(i * 5 * S, (i + 1) * 5 * S, int(t * 5), t, p) for i, (t, p) in enumerate(zip(tput, p50))]


def test_stable_series():
    v = judge(series([20, 50.0, 51.0, 49.5], [80, 20.0, 21.0, 20.5]), requests=800)
    assert v.stable and v.enough_requests and v.valid and v.reason == ""
    assert v.throughput_spread == pytest.approx(51 / 49.5 - 1)


def test_drifting_series_is_unstable():
    # throughput steady, latency creeping up 8% per window: 16.6% over the last three
    v = judge(series([50, 50, 50, 50], [20, 21.6, 23.3, 25.2]), requests=1000)
    assert not v.stable and v.enough_requests and "p50" in v.reason
    assert v.p50_spread > 0.10


def test_noisy_series_is_unstable():
    v = judge(series([50, 35, 62, 44], [20, 20, 20, 20]), requests=1000)
    assert not v.stable and v.throughput_spread > 0.10


def test_too_few_requests_or_windows():
    v = judge(series([2, 2, 2], [20, 20, 20]), requests=30)
    assert v.stable and not v.enough_requests and not v.valid and "30 requests < 100" in v.reason
    v = judge(series([50, 50], [20, 20]), requests=500)
    assert not v.stable and "only 2 full" in v.reason
    v = judge(series([50, 0, 50], [20, None, 20]), requests=500)
    assert not v.stable and "without successful" in v.reason


def test_windows_are_aligned_to_the_end_and_assess():
    rng = random.Random(1)
    # 17 s of steady 40 req/s, p50 ~ 25 ms: 3 full 5 s windows, the first 2 s dropped
    comps = [(int(t * S / 40), rng.gauss(25, 2)) for t in range(17 * 40)]
    ws = windows(comps, 0, 17 * S, 5.0)
    assert [w.start_ns for w in ws] == [2 * S, 7 * S, 12 * S] and all(w.requests == 200 for w in ws)
    assert all(abs(w.p50_ms - 25) < 1 for w in ws)
    v = assess(comps, 0, 17 * S, StabilityRule(window_s=5, min_requests=500))
    assert v.valid and v.requests == len(comps)
    v = assess(comps, 0, 17 * S, StabilityRule(window_s=5, min_requests=1000))
    assert v.stable and not v.valid


def test_run_validity_headline():
    ok = judge(series([50, 50, 50], [20, 20, 20]), 750)
    bad = judge(series([50, 30, 50], [20, 20, 20]), 650)
    few = judge(series([1, 1, 1], [20, 20, 20]), 15)
    assert run_validity({0: ok, 1: ok}).headline().startswith("VALID: all 2 steps")
    rv = run_validity({0: ok, 1: bad, 2: few})
    assert not rv.valid and rv.unstable == [1] and rv.too_few == [2]
    assert rv.headline() == "NOT VALID: unstable step(s) 1; too few requests in step(s) 2."


def test_tracker_extends_an_unstable_step_up_to_its_limit():
    sched = StepSchedule.parse("1,2", step_seconds=10, warmup_seconds=1)
    calls = []

    def check(row, now_ns):  # step 0 becomes stable at 13 s; step 1 never does
        calls.append((row["step"], now_ns // S))
        return judge(series([50] * 3, [20] * 3), 500) if (row["step"] == 0 and now_ns >= 13 * S) \
            else judge(series([50, 10, 50], [20] * 3), 500)

    tr = StepTracker(sched, check=check, max_seconds=15)
    seen = [tr.observe(t, int(t * S)) for t in (0, 9, 10, 11, 12, 13, 14, 20, 22.5, 24, 27, 28, 29)]
    assert seen == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, None, None]
    r0, r1 = tr.rows
    assert (r0["end_ns"], r1["start_ns"], r1["end_ns"]) == (13 * S, 13 * S, 28 * S)
    assert tr.verdicts[0]["valid"] and tr.verdicts[0]["extended_s"] == 3.0
    assert not tr.verdicts[1]["stable"] and tr.verdicts[1]["extended_s"] == 5.0  # hit the 15 s limit
    assert (1, 24) in calls and (1, 22) not in calls   # step 1 ran its 10 s from its real start
    assert tr.progress()["finished"]


def test_tracker_without_check_keeps_the_plan():
    tr = StepTracker(StepSchedule.parse("1,2", step_seconds=10))
    assert [tr.observe(t, int(t * S)) for t in (0, 10, 20)] == [0, 1, None]
    assert tr.verdicts == {}


# --- live: a real headless Locust run holds a step that never gets valid -----------------------

def test_real_locust_run_extends_an_invalid_step_up_to_the_limit(tmp_path):
    import json
    import os
    import subprocess
    import threading

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_loadtest import LOCUSTFILE, PY, make_standin_server, write_manifest

    server = make_standin_server("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = tmp_path / "run"
        cmd = [PY, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "--host", f"http://127.0.0.1:{server.server_address[1]}",
               "--overhead-run-dir", str(run), "--overhead-manifest", str(write_manifest(tmp_path)),
               "--overhead-sizes", "0.1MP", "--overhead-steps", "1:2", "--overhead-warmup-seconds", "0",
               "--overhead-stability-window", "0.5", "--overhead-min-requests", "1000000",
               "--overhead-stability-max-seconds", "5"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        server.shutdown()
        server.server_close()
    steps = pd.read_parquet(run / "steps.parquet")
    dur = (steps["end_ns"] - steps["start_ns"]).iloc[0] / 1e9
    assert 4.5 <= dur <= 6.5, dur                       # held past its 2 s, up to the 5 s limit
    live = json.loads((run / "locust" / "stability.json").read_text())
    v = live["live_verdicts"]["0"]
    assert live["rule"]["window_s"] == 0.5 and live["extend_up_to_s"] == 5
    assert not v["valid"] and not v["enough_requests"] and not v["held"] and v["extended_s"] >= 2.5
    assert "< 1000000" in v["reason"]
