"""Known-answer checks: a real mechanism adds a known amount of time somewhere, a real sweep
measures it, and the report must recover it within 10%.

- backlog: the worker sleeps a fixed time per crop (``--calibration-crop-sleep-ms``, a test knob
  of overhead/config.py); with one user, k crops and w workers the crop that finishes last waits
  ``(ceil(k / w) - 1)`` crop periods for its worker (the time between its crops: the
  preparation with the sleep, which overlaps the previous crop's inference);
- network: gateway and load generator in a network namespace whose loopback is throttled with
  ``tbf`` (50 Mbit/s): ``transfer`` grows by ``bytes * 8 / rate`` (root only);
- clock: one worker process under ``faketime`` (+50 ms): the report detects the skew, estimates it
  NTP-style and says so (never a silent wrong number).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from analysis.report.backlog import busy_intervals, span_roles  # noqa: E402
from analysis.report.cli import report  # noqa: E402
from servers import redis_server  # noqa: E402,F401  (fixture)

PY = sys.executable
pytestmark = pytest.mark.slow
SLEEP_MS = 40.0


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def sweep(out: Path, *extra: str, prefix=(), sizes="0.1MP", step=10.0, warmup=3.0, timeout=300):
    """One closed-loop step of 1 user; returns the report (``analysis.report.cli.Report``)."""
    cmd = [*prefix, PY, "-m", "loadtest.sweep", "--out", str(out), "--users", "1",
           "--step-seconds", str(step), "--warmup-seconds", str(warmup), "--sizes", sizes,
           "--min-requests", "1", "--overwrite", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return report(out, quiet=True)


def measured(rep) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(successful requests of the measured window, their critical-path attribution in ms)."""
    req = rep.run.requests
    steps = rep.run.steps
    s = steps.iloc[0]
    ok = req[(req["status"] == 200) & req["error"].isna() & (req["recv_ns"] >= s["measure_start_ns"])
             & (req["recv_ns"] < s["end_ns"])]
    assert len(ok) >= 10, len(ok)
    return ok, rep.attr.loc[ok["request_id"].astype(str)] / 1e6


def crop_period_ms(rep) -> float:
    """Mean time between a worker's consecutive crops of one request (their inference ends).
    The worker prepares the next crop during the current one's inference, so this is the longer
    of the two (here the preparation with its fixed sleep), not their sum."""
    sp = rep.run.spans
    roles = span_roles(sp)
    assert busy_intervals(sp, roles).known
    inf = (sp["component"] == "inference").to_numpy() & (roles["worker"] != "").to_numpy()
    d = sp[inf].assign(worker=roles["worker"][inf])
    gaps = d.sort_values("end_ns").groupby(["worker", "request_id"])["end_ns"].diff().dropna()
    assert len(gaps) >= 10, len(gaps)
    return float(gaps.mean() / 1e6)


@pytest.mark.parametrize("workers", [1, 2])
def test_backlog_from_a_fixed_sleep_per_crop(tmp_path, workers):
    # one crop per classifier call (the default batches an image's crops): the known answer
    # below is the backlog of crops served one at a time
    rep = sweep(tmp_path / "run", "--gateway-arg=--k=4", f"--gateway-arg=--workers={workers}",
                "--gateway-arg=--worker-batch=1",
                f"--gateway-arg=--calibration-crop-sleep-ms={SLEEP_MS}")
    ok, a = measured(rep)
    period = crop_period_ms(rep)
    assert period >= SLEEP_MS                      # the sleep paces the worker's crops
    rounds = np.ceil(ok["k"].clip(lower=1).to_numpy() / workers) - 1
    expected = float(np.mean(rounds) * period)
    got = float(a["classify-backlog"].mean())
    print(f"backlog, {workers} worker(s), k={ok['k'].median():.0f}: expected {expected:.1f} ms "
          f"({np.mean(rounds):.2f} x {period:.1f} ms per crop), reported {got:.1f} ms; "
          f"broker {a['classify-broker'].mean():.2f} ms")
    assert got == pytest.approx(expected, rel=0.10)
    # the broker's own transit stays small (median: a shared machine's scheduling stalls land in
    # the mean of whatever the worker was not busy with)
    assert a["classify-broker"].median() < 0.1 * max(expected, SLEEP_MS)
    closure = a.drop(columns="e2e").sum(axis=1) - a["e2e"]
    assert closure.abs().max() < 1e-6


def _root_with_tc() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None


@pytest.fixture
def netns():
    """A network namespace of our own (loopback up, MTU 1500); deleted by name afterwards."""
    if not _root_with_tc():
        pytest.fail("the network known answer needs root with ip and tc (iproute2): run the tests "
                    "as root, as CI does", pytrace=False)
    name = f"ovh-kat-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "lo", "mtu", "1500"]):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_network_throttle_shows_as_transfer(tmp_path, netns):
    rate_bps = 50e6
    prefix = ["ip", "netns", "exec", netns]
    base = sweep(tmp_path / "plain", prefix=prefix, sizes="8MP", step=12.0)
    subprocess.run([*prefix, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "50mbit",
                    "burst", "32kb", "latency", "400ms"], check=True)
    slow = sweep(tmp_path / "tbf", prefix=prefix, sizes="8MP", step=12.0)
    _, a0 = measured(base)
    ok1, a1 = measured(slow)
    expected = float(ok1["bytes"].mean()) * 8 / rate_bps * 1e3
    added = float(a1["gateway-transfer"].mean() - a0["gateway-transfer"].mean())
    print(f"network: {ok1['bytes'].mean() / 1e3:.0f} kB at 50 Mbit/s: expected +{expected:.1f} ms "
          f"transfer, reported +{added:.1f} ms ({a0['gateway-transfer'].mean():.2f} -> "
          f"{a1['gateway-transfer'].mean():.2f} ms)")
    assert added == pytest.approx(expected, rel=0.10)


def test_clock_skew_of_a_worker_is_detected_and_corrected(tmp_path, redis_server):
    assert shutil.which("faketime"), "faketime missing: scripts/ensure_servers.sh installs it"
    offset_ms = 50.0
    env = {**_env(), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    name = f"skewed-{uuid.uuid4().hex[:6]}"
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below, after the worker
    worker = subprocess.Popen(
        ["faketime", "-f", f"+{offset_ms / 1e3:g}", PY, "-m", "pipelines.worker",
         "--broker", redis_server.url, "--name", name, "--group", "classifiers"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        time.sleep(1.0)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
        rep = sweep(tmp_path / "run", "--broker", redis_server.url, "--gateway-arg=--workers=0",
                    "--gateway-arg=--k=4", step=10.0, warmup=4.0)
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
    notes = [n for n in rep.clock_notes if name in n]
    print("\n".join(rep.clock_notes))
    assert notes and "Clock skew corrected" in notes[0], rep.clock_notes
    assert any(name in v for v in rep.validity)       # shown with the report's validity notes
    theta = float(notes[0].split("clock is ")[1].split(" ms")[0].split(" ±")[0])
    assert theta == pytest.approx(offset_ms, rel=0.10)
    _, a = measured(rep)
    # corrected: the classifier's time is on the path and nothing is left hanging as `other`
    assert a["classify-inference"].mean() > 0
    assert (a["other"] / a["e2e"]).mean() < 0.2
    text = rep.files["md"].read_text()
    assert "Clock skew corrected" in text
