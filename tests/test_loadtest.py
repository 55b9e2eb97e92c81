"""Load generator tests: schedule math, and REAL headless Locust runs over REAL HTTP on loopback.

The HTTP server here is a STAND-IN ENDPOINT FOR TESTING THE LOAD GENERATOR, NOT THE GATEWAY:
a stdlib ``ThreadingHTTPServer`` that implements the gateway's documented HTTP contract
(``GET /healthz``, ``GET /v1/config``, ``POST /v1/infer`` with ``X-Request-ID`` → JSON
``{request_id, width, height, detections, k}`` plus ``Server-Timing``; a JSON 500 for bodies that
start with ``FAIL``) and records spans with ``pipelines.spans`` into a spans dir. It makes the
Locust side testable without models; the gateway itself is tested with the pipeline.

Run as a script it is the same stand-in as a process, with the gateway's CLI
(``--host --port --spans-dir``), so ``loadtest.sweep --gateway-command`` can start and stop it.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from overhead.contract.records import Span  # noqa: E402
from pipelines.spans import ComponentTimes, SpanFlusher, SpanRecorder, now_ns  # noqa: E402

PY = sys.executable
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"


# --- the stand-in endpoint (not the gateway) ---------------------------------------------------

def make_standin_server(host: str, port: int, recorder: SpanRecorder | None = None):
    class StandInInfer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes

        def log_message(self, *args):
            pass

        def _send(self, code: int, obj: dict, timing: str | None = None):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if timing:
                self.send_header("Server-Timing", timing)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/healthz":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/config":
                self._send(200, {"server": "stand-in for load generator tests", "k": 2})
            else:
                self._send(404, {"error": "not_found", "message": self.path})

        def do_POST(self):
            rid = self.headers.get("X-Request-ID", "")
            t0 = now_ns()
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            t1 = now_ns()
            if self.path != "/v1/infer":
                return self._send(404, {"error": "not_found", "message": self.path})
            if body.startswith(b"FAIL"):
                return self._send(500, {"error": "stand_in_failure", "message": "asked to fail"})
            spans = [Span(rid, "gateway", "transfer", t0, t1, None)]
            # "work": proportional to the body size, so size classes differ
            t = t1
            for comp, dur_s in (("decode", 0.0004 + len(body) / 4e8), ("resize", 0.0002),
                                ("inference", 0.001)):
                time.sleep(dur_s)
                spans.append(Span(rid, "detect", comp, t, now_ns(), None))
                t = spans[-1].end_ns
            time.sleep(0.001)
            t2 = now_ns()  # two crops classified "at once": overlapping spans
            spans += [Span(rid, "classify", "inference", t, t2, json.dumps({"crop": i})) for i in range(2)]
            timing = ComponentTimes.new()
            for s in spans:
                timing.add(s.stage, s.component, s.end_ns - s.start_ns)
            if recorder is not None:
                recorder.extend(spans)
            self._send(200, {"request_id": rid, "width": 10, "height": 10, "k": 2,
                             "detections": [{"box": [0, 0, 1, 1], "label": "x", "score": 0.9}] * 2},
                       timing.server_timing())

    server = ThreadingHTTPServer((host, port), StandInInfer)
    server.daemon_threads = True
    return server


def serve_standin_main(argv: list[str]) -> int:
    """The stand-in as a process, with the gateway's CLI; SIGTERM → final span flush, exit 0."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--spans-dir", required=True)
    args, _ = ap.parse_known_args(argv)
    rec = SpanRecorder()
    flusher = SpanFlusher(rec, args.spans_dir, interval_s=0.5).start()
    server = make_standin_server(args.host, args.port, rec)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"stand-in ready on http://{args.host}:{args.port}", flush=True)
    stop.wait()
    server.shutdown()
    flusher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(serve_standin_main(sys.argv[1:]))


# --- tests ------------------------------------------------------------------------------------

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from overhead.contract.rundir import RunDir, read_locust_stats_csv  # noqa: E402
# loadtest.schedule, not loadtest.shapes: importing Locust would gevent-patch the pytest process
from loadtest.schedule import StepSchedule, StepTracker, schedule_from_options  # noqa: E402


def write_manifest(tmp_path: Path, fail: bool = False) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for size, nbytes in (("0.1MP", 8_000), ("1MP", 60_000), ("8MP", 400_000)):
        for i in range(2):
            p = images / f"img{i}_{size}.jpg"
            p.write_bytes(b"\xff\xd8" + os.urandom(nbytes))
            entries.append(dict(name=f"img{i}", size_class=size, path=str(p), width=1, height=1,
                                nbytes=nbytes + 2))
    if fail:
        p = images / "fail.jpg"
        p.write_bytes(b"FAIL" + os.urandom(100))
        entries.append(dict(name="fail", size_class="0.1MP", path=str(p), width=1, height=1, nbytes=104))
    m = tmp_path / "corpus.json"
    m.write_text(json.dumps(entries))
    return m


def test_schedule_parse_and_boundaries():
    s = StepSchedule.parse("1,2,4,8", step_seconds=20, warmup_seconds=5)
    assert s.users == [1, 2, 4, 8]
    assert s.total_seconds == 80
    assert s.boundaries() == [0, 20, 40, 60, 80]
    assert [s.step_at(t) for t in (0, 19.999, 20, 59.9, 60, 79.99)] == [0, 0, 1, 2, 3, 3]
    assert s.step_at(80) is None and s.step_at(1e9) is None
    plan = s.planned(start_ns=1_000)
    assert plan[1] == dict(step=1, users=2, start_ns=1_000 + 20 * 10**9,
                           measure_start_ns=1_000 + 25 * 10**9, end_ns=1_000 + 40 * 10**9)
    per_step = StepSchedule.parse("1:10, 3:30", step_seconds=99, warmup_seconds=2)
    assert per_step.steps == ((1, 10.0), (3, 30.0)) and per_step.total_seconds == 40
    for bad in (lambda: StepSchedule.parse("", 10), lambda: StepSchedule.parse("0,1", 10),
                lambda: StepSchedule.parse("1,2", 5, warmup_seconds=5)):
        with pytest.raises(ValueError):
            bad()


def test_schedule_from_options_and_env(monkeypatch):
    class Opts:
        overhead_steps = "2,4"
        overhead_step_seconds = 3.0
        overhead_warmup_seconds = 1.0
    s = schedule_from_options(Opts())
    assert s.steps == ((2, 3.0), (4, 3.0)) and s.warmup_seconds == 1.0
    monkeypatch.setenv("OVERHEAD_STEPS", "5")
    monkeypatch.setenv("OVERHEAD_STEP_SECONDS", "7")
    assert schedule_from_options(None).steps == ((5, 7.0),)


def test_step_tracker_records_real_boundaries():
    """StepShape.tick() is StepTracker.observe(run time): boundaries are stamped when seen."""
    tr = StepTracker(StepSchedule.parse("1,3", step_seconds=10, warmup_seconds=2))
    base = 5_000_000_000
    seen = [tr.observe(t, base + int(t * 1e9)) for t in (0.0, 9.0, 10.4, 20.7, 21.7)]
    assert seen == [0, 0, 1, None, None]   # 10.4: polled late, the step starts when it was seen
    assert tr.rows == [
        dict(step=0, users=1, start_ns=5_000_000_000, measure_start_ns=7_000_000_000,
             end_ns=15_400_000_000),
        dict(step=1, users=3, start_ns=15_400_000_000, measure_start_ns=17_400_000_000,
             end_ns=25_700_000_000),
    ]
    assert tr.progress()["finished"] is True


def test_step_tracker_closes_a_step_stopped_early():
    tr = StepTracker(StepSchedule.parse("2,4", step_seconds=10, warmup_seconds=5))
    tr.observe(0.0, 100)
    tr.observe(10.0, 1_000)
    rows = tr.finish(now_ns=2_000)          # stopped 1 us into a 5 s warm-up
    assert rows[-1] == dict(step=1, users=4, start_ns=1_000, measure_start_ns=2_000, end_ns=2_000)
    assert tr.observe(30.0, 3_000) is None


@pytest.fixture
def standin(tmp_path):
    """The stand-in endpoint (not the gateway) on a free loopback port, in a thread."""
    rec = SpanRecorder()
    server = make_standin_server("127.0.0.1", 0, rec)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", rec
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_real_locust_run_keeps_one_record_per_request(tmp_path, standin):
    url, _ = standin
    manifest = write_manifest(tmp_path, fail=True)
    run = RunDir(tmp_path / "run").create()
    cmd = [PY, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
           "--csv", str(run.locust_csv_prefix), "--csv-full-history", "--only-summary",
           "--overhead-run-dir", str(run.path), "--overhead-manifest", str(manifest),
           "--overhead-steps", "1,3", "--overhead-step-seconds", "2.5",
           "--overhead-warmup-seconds", "0.5"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
    t0 = time.time_ns()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    t1 = time.time_ns()
    assert proc.returncode == 1, proc.stderr[-3000:]  # 1: the FAIL image failed, as it should

    req = pd.read_parquet(run.requests)
    final = json.loads(run.locust_final.read_text())
    # one exact record per request Locust counted, failures included
    assert len(req) == final["requests"] == final["records"] > 50
    failed = req[(req["status"] != 200) | req["error"].notna()]
    assert len(failed) == final["failures"] > 0
    assert set(failed["status"]) == {500} and set(failed["image"]) == {"fail"}
    assert failed["error"].str.contains("stand_in_failure: asked to fail").all()
    csv_agg = read_locust_stats_csv(run.path)  # may lag the final counters, never exceed them
    assert csv_agg is not None and csv_agg["requests"] <= final["requests"]
    assert set(final["by_name"]) >= {"POST /v1/infer [0.1MP]", "POST /v1/infer [1MP]",
                                     "POST /v1/infer [8MP]"}

    assert list(req.columns) == ["request_id", "user", "image", "size_class", "bytes", "intended_ns",
                                 "send_ns", "recv_ns", "status", "error", "server_timing", "k"]
    assert req["request_id"].is_unique and req["request_id"].str.fullmatch("[0-9a-f]{32}").all()
    assert (req["intended_ns"] == req["send_ns"]).all() and (req["recv_ns"] > req["send_ns"]).all()
    assert req["send_ns"].min() > t0 and req["recv_ns"].max() < t1
    ok = req[req["status"] == 200]
    assert (ok["k"] == 2).all() and ok["server_timing"].str.contains("detect-decode;dur=").all()
    assert set(req["size_class"]) == {"0.1MP", "1MP", "8MP"}
    assert set(req["user"]) == {0, 1, 2}
    assert (req.groupby("size_class")["bytes"].min().sort_values().index.tolist()
            == ["0.1MP", "1MP", "8MP"])

    steps = pd.read_parquet(run.steps)
    assert list(steps.columns) == ["step", "users", "start_ns", "measure_start_ns", "end_ns"]
    assert steps["step"].tolist() == [0, 1] and steps["users"].tolist() == [1, 3]
    assert (steps["measure_start_ns"] - steps["start_ns"] == 500_000_000).all()
    assert steps["end_ns"].iloc[0] == steps["start_ns"].iloc[1]
    dur = (steps["end_ns"] - steps["start_ns"]) / 1e9
    assert ((dur >= 1.4) & (dur <= 3.6)).all(), dur.tolist()   # Locust polls shapes once a second
    # concurrency really stepped: step 0 requests from one user, step 1 from three
    def users_in(i):
        s = steps.iloc[i]
        sel = req[(req["send_ns"] >= s["measure_start_ns"]) & (req["recv_ns"] < s["end_ns"])]
        return sel["user"].nunique()
    assert users_in(0) == 1 and users_in(1) == 3
    # users start at different places of the corpus
    first = req.sort_values("send_ns").groupby("user").first()
    assert first.loc[[1, 2], "image"].tolist() != [first.loc[0, "image"]] * 2 or \
        first["size_class"].nunique() > 1


@pytest.mark.slow
def test_sweep_end_to_end_with_standin_gateway(tmp_path):
    """The sweep starts the stand-in as its 'gateway', runs Locust, stops it, merges spans, reports."""
    manifest = write_manifest(tmp_path)
    out = tmp_path / "run"
    cmd = [PY, "-m", "loadtest.sweep", "--out", str(out), "--users", "1,2", "--step-seconds", "2.5",
           "--warmup-seconds", "0.5", "--manifest", str(manifest),
           "--gateway-command", f"{shlex.quote(PY)} {shlex.quote(__file__)}", "--some-gateway-flag", "x"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report:" in proc.stdout and "Where the time goes" in proc.stdout

    run = RunDir(out)
    config = json.loads(run.config.read_text())
    assert config["run"]["status"] == "complete" and config["run"]["managed_gateway"]
    assert config["gateway"]["server"].startswith("stand-in")
    assert config["gateway_command"][-2:] == ["--some-gateway-flag", "x"]
    assert [s["users"] for s in config["steps"]] == [1, 2]
    cpu = config["load_generator_cpu"]
    assert [c["users"] for c in cpu] == [1, 2]
    assert all(0 < c["locust_cores"] < 2.5 and c["gateway_cores"] > 0 for c in cpu)
    assert config["locust"]["final"]["requests"] == config["counts"]["requests"]
    assert config["gateway_process"]["exit_code"] == 0            # stopped by SIGTERM, cleanly
    assert config["gateway_process"]["stopped_by"] == "SIGTERM"
    import psutil
    for pid in (config["gateway_process"]["pid"], config["locust"]["pid"]):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    spans = pd.read_parquet(run.spans)
    assert not list(run.spans_parts.glob("*.parquet"))             # parts merged and removed
    req = pd.read_parquet(run.requests)
    ok_ids = set(req.loc[req["status"] == 200, "request_id"])
    assert ok_ids and ok_ids <= set(spans["request_id"])          # every answered request has spans
    for f in (run.report_md, run.report_html, run.breakdown_csv, run.plots / "latency_throughput.png",
              run.plots / "stacked_8MP.png", run.logs / "gateway.log", run.logs / "locust.log"):
        assert f.exists(), f
    bd = pd.read_csv(run.breakdown_csv)
    assert set(bd["users"]) == {1, 2} and (bd["requests"] > 0).all()


def test_sweep_reports_a_gateway_that_dies_at_startup(tmp_path):
    manifest = write_manifest(tmp_path)
    dying = f"{shlex.quote(PY)} -c 'import sys; print(\"boom: no models\"); sys.exit(3)'"
    proc = subprocess.run([PY, "-m", "loadtest.sweep", "--out", str(tmp_path / "run"), "--users", "1",
                           "--step-seconds", "2", "--warmup-seconds", "0", "--manifest", str(manifest),
                           "--gateway-command", dying], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 1
    assert "exited (code 3)" in proc.stderr and "boom: no models" in proc.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["run"]["status"] == "failed"


@pytest.mark.slow
def test_interrupted_sweep_leaves_no_processes_and_keeps_the_records(tmp_path):
    manifest = write_manifest(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.Popen([PY, "-m", "loadtest.sweep", "--out", str(out), "--users", "1,2",
                             "--step-seconds", "30", "--warmup-seconds", "1", "--manifest", str(manifest),
                             "--gateway-command", f"{shlex.quote(PY)} {shlex.quote(__file__)}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        progress = out / "locust" / "progress.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if progress.exists() and json.loads(progress.read_text()).get("requests", 0) > 20:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the sweep never got going")
        proc.send_signal(signal.SIGINT)                 # Ctrl-C
        _, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["status"] == "interrupted"
    import psutil
    for pid in (config["gateway_process"]["pid"], config["locust"]["pid"]):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # Locust was stopped gracefully: its records and the spans are there for a partial report
    req = pd.read_parquet(out / "requests.parquet")
    assert len(req) == config["locust"]["final"]["requests"] > 20
    assert (out / "spans.parquet").exists() and (out / "steps.parquet").exists()


@pytest.mark.slow
def test_sweep_against_the_real_gateway(tmp_path):
    """The whole chain for real: the gateway with the seeded SSD + MobileNetV2 (built once and
    cached, as in test_gateway.py), the real corpus photos, Locust, spans, closure, report."""
    from pipelines.models import ensure_model

    det, cls = ensure_model("ssd_mobilenetv2"), ensure_model("mobilenetv2")
    out = tmp_path / "run"
    cmd = [PY, "-m", "loadtest.sweep", "--out", str(out), "--users", "1,2", "--step-seconds", "5",
           "--warmup-seconds", "1", "--sizes", "0.1MP,8MP",
           "--detector", det.name, "--classifier", cls.name,
           "--models-dir", str(Path(det.onnx_path).parent.parent), "--intra-op-threads", "1", "--k", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = RunDir(out)
    config = json.loads(run.config.read_text())
    assert config["gateway"]["settings"]["k"] == 2
    assert config["gateway_process"]["stopped_by"] == "SIGTERM"         # not killed
    req = pd.read_parquet(run.requests)
    assert len(req) == config["locust"]["final"]["requests"] > 4
    assert (req["status"] == 200).all() and req["error"].isna().all() and (req["k"] >= 0).all()
    assert req["server_timing"].str.contains("detect-inference;dur=").all()
    from analysis.report.attribution import attribute, by_component
    spans = pd.read_parquet(run.spans)
    assert set(req["request_id"]) <= set(spans["request_id"])
    # whose clocks: every span names its process, processes.json has them and the load generator
    procs = json.loads(run.processes.read_text())
    assert {p["role"] for p in procs} == {"gateway", "loadgen"}
    assert set(spans["process"]) == {p["process"] for p in procs if p["role"] == "gateway"}
    comp = by_component(attribute(req, spans))
    assert (comp.drop(columns="e2e").sum(axis=1) - comp["e2e"]).abs().max() < 1e-3
    assert (comp["inference"] > 0).all() and (comp["decode"] > 0).all()
    dec = comp["decode"].groupby(req.set_index("request_id")["size_class"]).median()
    assert dec["8MP"] > 3 * dec["0.1MP"]                # decoding 8 MP costs more than 0.1 MP
    bd = pd.read_csv(run.breakdown_csv)
    assert set(bd["size_class"]) == {"0.1MP", "8MP"} and set(bd["users"]) == {1, 2}
    # Little's law for a closed loop with no think time: completions/s x mean latency = users.
    # Tolerance 20%: steps are 4 s long, so the requests in flight at the window's edges and the
    # generator's own time between a response and the next send weigh in.
    steps = pd.read_parquet(run.steps)
    for st in steps.itertuples():
        done = req[(req["recv_ns"] >= st.measure_start_ns) & (req["recv_ns"] < st.end_ns)]
        throughput = len(done) / ((st.end_ns - st.measure_start_ns) / 1e9)
        mean_latency = ((done["recv_ns"] - done["send_ns"]) / 1e9).mean()
        assert throughput * mean_latency == pytest.approx(st.users, rel=0.20), (st, len(done))


@pytest.mark.slow
def test_open_loop_sweep_with_standin_gateway(tmp_path):
    """--arrivals/--rates: one scheduler user, intended times from the arrival process, the report
    measures from the intended time and states validity and the generator check at the top."""
    manifest = write_manifest(tmp_path)
    out = tmp_path / "run"
    cmd = [PY, "-m", "loadtest.sweep", "--out", str(out), "--arrivals", "constant", "--rates", "10,30",
           "--step-seconds", "2.5", "--warmup-seconds", "0.5", "--manifest", str(manifest),
           "--stability-window", "0.5", "--min-requests", "5",
           "--gateway-command", f"{shlex.quote(PY)} {shlex.quote(__file__)}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = RunDir(out)
    config = json.loads(run.config.read_text())
    load = config["load"]
    assert load["closed_loop"] is False and load["arrivals"] == "constant" and load["rates"] == [10, 30]
    assert config["open_loop"]["steps"]["1"]["rate"] == 30
    req = pd.read_parquet(run.requests)
    assert (req["send_ns"] >= req["intended_ns"]).all() and (req["intended_ns"] < req["send_ns"]).any()
    steps = pd.read_parquet(run.steps)
    for st in steps.itertuples():    # constant arrivals: 100 ms, then 33.3 ms apart
        sel = req[(req["intended_ns"] >= st.start_ns + 100_000_000) & (req["intended_ns"] < st.end_ns)]
        gaps = sel["intended_ns"].sort_values().diff().dropna() / 1e6
        assert gaps.median() == pytest.approx(1000 / load["rates"][st.step], rel=0.02)
    md = run.report_md.read_text()
    top = md.split("## What ran")[0]
    assert "## Validity" in top and ("VALID" in top) and "Load generator" in top
    assert "lag p99 ms" in md and "10 req/s" in md and "30 req/s" in md
