"""Spans across hosts that really are separate: redis-server, the gateway and two classifier workers
each on a host of its own (a network namespace with its own 10.x address and hostname, all on one
switch: ``tests/netns_lan.py``), the load generator (Locust, ``loadtest.sweep --host``) in the
root namespace. Worker A's host runs ``FAKETIME=+2`` (libfaketime: its wall clock, and by
default its monotonic clock, read 2 s ahead; a real host's monotonic clock is unrelated to
ours anyway, and only differences within one process are ever used). libfaketime 0.9.10 with
Python 3.11 here: with the monotonic clock faked, lock and Event timeouts (``sem_clockwait``) hang;
with ``FAKETIME_DONT_FAKE_MONOTONIC=1``, ``time.sleep`` fails with EINVAL. The worker's path
uses neither (blocking broker reads, no timed waits), so both clocks are faked.

A control run first (no shift), then the same hosts with worker A shifted. The report must:
- name every process with its host (processes.json, the spans' ``process`` column);
- estimate worker A's offset as 2 s within its stated ± error, and worker B's and the gateway's
  (against the load generator) as 0 within theirs;
- give a breakdown whose per-component means are within worker A's stated error of the known
  answer (the same spans with worker A's stamps moved back by exactly 2 s). The control run's
  means are printed next to them (a different run: load noise, not clock error, separates them).

Needs root with iproute2 and libfaketime: a FAILURE otherwise, never a skip.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from analysis.report.backlog import span_roles  # noqa: E402
from analysis.report.cli import report  # noqa: E402
from analysis.report.clocks import _shift  # noqa: E402
from analysis.report.views import attribute_both  # noqa: E402
from deploy.local_servers import RedisServer  # noqa: E402
from deploy.pipeline_processes import GatewayProcess, WorkerProcess  # noqa: E402
from netns_lan import NetnsLan  # noqa: E402

PY = sys.executable
pytestmark = pytest.mark.slow
SHIFT_NS = 2_000_000_000
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
REDIS_PORT, GATEWAY_PORT = 6379, 8000
TOLERANCE_NS = 100_000   # clock anchoring of separate processes (µs) and span rounding


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _require_hosts() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("root (ip netns)")
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        problems.append("`ip netns` (iproute2)")
    if not Path(FAKETIME_LIB).exists():
        problems.append(f"libfaketime ({FAKETIME_LIB}: apt-get install faketime)")
    if problems:
        pytest.fail("separate test hosts need " + ", ".join(problems), pytrace=False)


def _models() -> tuple[str, str]:
    from pipelines.models import ensure_model

    det = ensure_model("ssd_mobilenetv2")
    ensure_model("mobilenetv2")   # the workers load it from the same cache
    return det.name, str(Path(det.onnx_path).parent.parent)


def one_run(lan: NetnsLan, out: Path, shifted: bool) -> None:
    """Broker, gateway, workers A and B on their hosts (A under FAKETIME when ``shifted``), one
    closed-loop step of 1 user from the root namespace; everything stopped by PID afterwards."""
    det, models = _models()
    broker = f"redis://{lan.addr('broker')}:{REDIS_PORT}/0"
    common = ["--models-dir", models, "--intra-op-threads", "1"]
    skew = dict(LD_PRELOAD=FAKETIME_LIB, FAKETIME=f"+{SHIFT_NS / 1e9:g}") if shifted else {}
    with contextlib.ExitStack() as stack:
        # protected mode refuses every non-loopback client without a password: this LAN is
        # private to the test (namespaces on this machine), the other hosts are its clients
        redis = RedisServer(out / "redis", port=REDIS_PORT, host=lan.addr("broker"),
                            prefix=lan.prefix("broker"), extra_args=["--protected-mode", "no"]).start()
        stack.callback(redis.stop)
        for w in ("worker-a", "worker-b"):
            proc = WorkerProcess(broker, ["--classifier", "mobilenetv2", *common],
                                 out / "logs" / f"{w}.log", name=w, prefix=lan.prefix(w),
                                 env=_env(**(skew if w == "worker-a" else {})))
            stack.callback(proc.stop)
            proc.start()
        gw = GatewayProcess(["--detector", det, "--classifier", "mobilenetv2", "--broker", broker,
                             "--workers", "0", "--k", "4", "--spans-dir", str(out / "spans"),
                             *common], out / "logs" / "gateway-host.log",
                            host=lan.addr("gateway"), port=GATEWAY_PORT,
                            prefix=lan.prefix("gateway"), env=_env())
        stack.callback(gw.stop)
        gw.start(timeout_s=180)
        cmd = [PY, "-m", "loadtest.sweep", "--out", str(out), "--host", gw.url, "--users", "1",
               "--step-seconds", "12", "--warmup-seconds", "3", "--sizes", "0.1MP",
               "--min-requests", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=_env())
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # (the gateway flushed its last spans when it stopped: the report reads the parts too)


def measured_means(rep, attr: pd.DataFrame) -> pd.Series:
    """Per-component mean (ms) over the successful requests of the measured window."""
    req, s = rep.run.requests, rep.run.steps.iloc[0]
    ok = req[(req["status"] == 200) & req["error"].isna() & (req["recv_ns"] >= s["measure_start_ns"])
             & (req["recv_ns"] < s["end_ns"])]
    assert len(ok) >= 10, len(ok)
    return attr.loc[ok["request_id"].astype(str)].mean() / 1e6


def row(rep, name: str) -> pd.Series:
    t = rep.clocks
    got = t[t["name"] == name]
    assert len(got) == 1, t.to_string()
    return got.iloc[0]


def test_a_worker_on_a_skewed_host_is_found_and_placed_within_its_stated_error(tmp_path):
    _require_hosts()
    with NetnsLan(["broker", "gateway", "worker-a", "worker-b"]) as lan:
        one_run(lan, tmp_path / "control", shifted=False)
        one_run(lan, tmp_path / "skewed", shifted=True)
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ovh{lan.tag}" not in leftover               # the fixture cleaned up

    control, rep = report(tmp_path / "control", quiet=True), report(tmp_path / "skewed", quiet=True)
    print(rep.clocks.to_string())
    # every process is named with its own host
    procs = rep.run.processes
    print(pd.DataFrame(list(procs.values())).to_string())   # wall/mono at start, per host
    hosts = {p["role"]: set() for p in procs.values()}
    for p in procs.values():
        hosts[p["role"]].add(p["host"])
    assert hosts["gateway"] == {lan.hostname("gateway")}
    assert hosts["worker"] == {lan.hostname("worker-a"), lan.hostname("worker-b")}
    assert "loadgen" in hosts and not hosts["loadgen"] & set(map(lan.hostname, lan.hosts))
    sp = rep.run.spans
    assert sp["process"].notna().all() and set(sp["process"]) <= set(procs)

    a, b, gw = row(rep, "worker-a"), row(rep, "worker-b"), row(rep, "gateway")
    assert a["host"] == lan.hostname("worker-a") and a["corrected"]
    print(f"worker A: offset {a['theta_ns'] / 1e6:+.3f} ± {a['err_ns'] / 1e6:.3f} ms "
          f"(injected {SHIFT_NS / 1e6:+.0f} ms, {a['exchanges']} crop round trips); worker B "
          f"{b['theta_ns'] / 1e6:+.3f} ± {b['err_ns'] / 1e6:.3f} ms; gateway vs load generator "
          f"{gw['theta_ns'] / 1e6:+.3f} ± {gw['err_ns'] / 1e6:.3f} ms")
    assert abs(a["theta_ns"] - SHIFT_NS) <= a["err_ns"] + TOLERANCE_NS
    assert a["err_ns"] < 5e6                              # a useful bound: a few ms at most
    assert abs(b["theta_ns"]) <= b["err_ns"] + TOLERANCE_NS and not b["corrected"]
    assert abs(gw["theta_ns"]) <= gw["err_ns"] + TOLERANCE_NS and not gw["corrected"]
    assert any("Clocks" in v and "worker-a" in v for v in rep.validity)
    assert "Clock skew corrected" in rep.files["md"].read_text()

    # the known answer: the same spans with worker A's stamps moved back by exactly the shift
    spans = rep.run.spans.copy()
    roles = span_roles(spans)
    _shift(spans, roles, "worker-a", SHIFT_NS)
    known = attribute_both(rep.run.requests, spans.assign(process=None)).path
    got, want = measured_means(rep, rep.attr), measured_means(rep, known)
    ctl = measured_means(control, control.attr)
    table = pd.DataFrame({"corrected": got, "known answer": want, "control run": ctl}).round(3)
    print(table.to_string())
    diff = (got - want).abs()
    assert (diff <= a["err_ns"] / 1e6 + 1e-3).all(), (diff, a["err_ns"])
    assert got["classify-inference"] > 0
    print(next(v for v in rep.validity if v.startswith("**Clocks**")))
