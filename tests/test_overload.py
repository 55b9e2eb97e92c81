"""Overload: the real gateway (uvicorn child process, real models) sheds load with 503 before it
reads a body, and comes back; the real Locust open loop leaves one row per request it sent."""
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from deploy.pipeline_processes import GatewayProcess


@pytest.fixture(scope="module")
def real_models():
    from pipelines.models import ensure_model

    return ensure_model("ssd_mobilenetv2"), ensure_model("mobilenetv2")


def gateway_args(real_models, *extra) -> list[str]:
    det, cls = real_models
    return ["--detector", det.name, "--classifier", cls.name,
            "--models-dir", str(Path(det.onnx_path).parent.parent), "--intra-op-threads", "1",
            "--k", "2", *extra]


@pytest.fixture(scope="module")
def small_gateway(real_models, tmp_path_factory):
    """One request thread, at most 2 requests admitted."""
    d = tmp_path_factory.mktemp("overload")
    gw = GatewayProcess(gateway_args(real_models, "--threads", "1", "--max-queued", "2",
                                     "--max-upload-mb", "8"), d / "gateway.log").start()
    yield gw
    gw.stop()


def _headers_only(port: int, rid: str, length: int = 5_000_000) -> socket.socket:
    """A POST whose headers announce ``length`` bytes of body, none of which is sent."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall((f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n"
               f"Content-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n").encode())
    return s


def _read_response(s: socket.socket) -> tuple[int, dict, dict]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    n = int(headers["content-length"])
    while len(body) < n:
        body += s.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body[:n])


def test_over_the_bound_503_at_once_without_reading_the_body(small_gateway):
    gw = small_gateway
    before = httpx.get(gw.url + "/v1/stats").json()["admission"]
    assert before["max_queued"] == 2 and before["in_progress"] == 0
    # two admitted requests whose bodies never come: they hold both places
    held = [_headers_only(gw.port, f"held-{i}") for i in range(2)]
    deadline = time.monotonic() + 5
    while httpx.get(gw.url + "/v1/stats").json()["admission"]["in_progress"] < 2:
        assert time.monotonic() < deadline, "the held requests were not admitted"
        time.sleep(0.02)
    try:
        t0 = time.perf_counter()
        s = _headers_only(gw.port, "over-the-bound")
        status, headers, body = _read_response(s)       # no body byte was ever sent
        elapsed = time.perf_counter() - t0
        s.close()
        assert status == 503 and body["error"] == "overloaded", body
        assert "--max-queued" in body["message"] and body["request_id"] == "over-the-bound"
        assert int(headers["retry-after"]) >= 1
        assert elapsed < 0.05, f"503 took {elapsed * 1e3:.1f} ms"
        assert httpx.get(gw.url + "/healthz").status_code == 200   # healthz is never shed
        stats = httpx.get(gw.url + "/v1/stats").json()
        assert stats["admission"]["rejected"] == before["rejected"] + 1
        assert stats["rss_bytes"] > 50e6
    finally:
        for s in held:
            s.close()
    # the held requests are released when their clients go away; then requests pass again
    deadline = time.monotonic() + 10
    while httpx.get(gw.url + "/v1/stats").json()["admission"]["in_progress"] > 0:
        assert time.monotonic() < deadline, "admission places were not released"
        time.sleep(0.05)
    from pipelines.corpus import build_corpus

    img = Path(build_corpus(sizes=("0.1MP",), photos=("china",))[0].path).read_bytes()
    r = httpx.post(gw.url + "/v1/infer", content=img, timeout=30)
    assert r.status_code == 200, r.text


def test_a_rejected_client_still_writing_its_body_gets_the_503(small_gateway):
    """The gateway answers without reading; the unread rest is discarded, the connection stays
    usable (no reset while the client is still uploading)."""
    gw = small_gateway
    held = [_headers_only(gw.port, f"hold-{i}") for i in range(2)]
    time.sleep(0.3)
    try:
        body = b"\xff\xd8" + b"x" * 2_000_000
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.post("/v1/infer", content=body)
            assert r.status_code == 503 and r.json()["error"] == "overloaded"
            assert c.get("/healthz").status_code == 200      # same pooled connection is fine
    finally:
        for s in held:
            s.close()


def test_no_spans_kept_in_memory_without_a_spans_dir(small_gateway):
    """Without --spans-dir the gateway has nowhere to write spans: it must not keep them (they
    grew its RSS by ~18 KB per request for the life of the process, bench_overload's 'RSS after')."""
    from pipelines.corpus import build_corpus

    data = Path(build_corpus(sizes=("0.1MP",), photos=("china",))[0].path).read_bytes()
    with httpx.Client(base_url=small_gateway.url, timeout=30) as c:
        for i in range(3):
            r = c.post("/v1/infer", content=data)
            assert r.status_code == 200 and "detect-decode" in r.headers["server-timing"]
        assert c.get("/v1/stats").json()["spans_buffered"] == 0


def _manifest(tmp_path: Path, size: str) -> Path:
    from pipelines.corpus import build_corpus

    entries = [dict(name=i.name, size_class=i.size_class, path=str(i.path))
               for i in build_corpus(sizes=(size,), photos=("china",))]
    m = tmp_path / "corpus.json"
    m.write_text(json.dumps(entries))
    return m


def _open_loop(gw, tmp_path: Path, steps: str, rates: str, drain_s: float, timeout: float):
    """Real Locust, open loop (Poisson) against ``gw``: (run dir, requests, final stats, sent)."""
    import os
    import subprocess
    import sys

    import pandas as pd

    from overhead.contract.rundir import RunDir

    run = RunDir(tmp_path / "run").create()
    cmd = [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
           "--host", gw.url, "--only-summary", "--overhead-run-dir", str(run.path),
           "--overhead-manifest", str(_manifest(tmp_path, "1MP")), "--overhead-steps", steps,
           "--overhead-warmup-seconds", "0", "--overhead-arrivals", "poisson",
           "--overhead-rates", rates, "--overhead-max-in-flight", "200",
           "--overhead-drain-seconds", str(drain_s), "--exit-code-on-error", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sent = sum(s["scheduled"] for s in json.loads(run.locust_openloop.read_text())["steps"].values())
    return (run, pd.read_parquet(run.requests), json.loads(run.locust_final.read_text()), sent)


@pytest.mark.slow
def test_open_loop_over_capacity_leaves_one_row_per_sent_request(small_gateway, tmp_path):
    import pandas as pd

    run, req, final, sent = _open_loop(small_gateway, tmp_path, "1:4", "60", 0, 60)
    # one row per request the scheduler made due, and Locust's own counter agrees
    assert len(req) == sent == final["infer_requests"], (len(req), sent, final)
    assert req["request_id"].is_unique
    assert set(req["status"]) <= {0, 200, 503}, req["status"].value_counts()
    over = req[req["status"] == 503]
    assert len(over) > 0.3 * len(req)                       # over capacity: most shed at once
    assert ((over["recv_ns"] - over["send_ns"]) / 1e6).median() < 50
    incomplete = req[req["status"] == 0]
    assert (incomplete["error"] == "incomplete").all()
    assert (incomplete["recv_ns"] >= incomplete["intended_ns"]).all()
    print(f"\nsent {sent}: {(req['status'] == 200).sum()} ok, {len(over)} rejected, "
          f"{len(incomplete)} incomplete")

    # the report counts them: errors include the incomplete and rejected, the step is saturated,
    # goodput counts only successes within the SLO
    from analysis.breakdown import report
    from overhead.contract.runconfig import write_config

    write_config(run.path, {"load": {"arrivals": "poisson", "rates": [60], "slo_ms": 1e9,
                                     "schedule": [{"rate": 60, "seconds": 4}]}})
    rep = report(run.path, quiet=True)
    md = run.report_md.read_text()
    assert "**saturated**" in md and "goodput req/s (e2e ≤ 1e+09 ms)" in md
    step = rep.steps.iloc[0]
    end = pd.read_parquet(run.steps)["end_ns"].iloc[0]
    done = req[req["recv_ns"] < end]            # answered within the step (some came after it)
    assert step["saturated"] and step["rejected"] == (done["status"] == 503).sum()
    assert step["incomplete"] == len(incomplete)         # counted in the step that sent them
    assert step["errors"] == (done["status"] != 200).sum() + len(incomplete)
    assert step["goodput_rps"] == pytest.approx(step["throughput_rps"])   # SLO of 1e9 ms
    tight = report(run.path, quiet=True, slo_ms=1.0).steps.iloc[0]         # nothing within 1 ms
    assert tight["goodput_rps"] == 0 and tight["throughput_rps"] > 0


@pytest.mark.slow
def test_requests_in_flight_when_a_step_ends_are_incomplete_in_that_step(small_gateway, tmp_path):
    """Open loop, two steps (60 req/s against a gateway that admits 2, then 2 req/s): what the
    first step made due and had no answer when it ended is recorded once, incomplete, at that
    step's end (waited until then) and counted in that step; an answer that comes later is not a
    second row, and Locust's own counter still equals the rows."""
    import pandas as pd

    from analysis.breakdown import report
    from overhead.contract.runconfig import write_config

    run, req, final, sent = _open_loop(small_gateway, tmp_path, "1:3,2:3", "60,2", 5, 90)
    assert len(req) == sent == final["infer_requests"] and req["request_id"].is_unique
    steps = pd.read_parquet(run.steps).sort_values("step")
    end0 = int(steps["end_ns"].iloc[0])
    first = req[req["intended_ns"] < end0]
    cut = first[first["error"] == "incomplete"]
    answered = first[first["error"] != "incomplete"]
    assert len(cut) > 0, "the gateway was busy at the step's end: something was in flight"
    assert (cut["status"] == 0).all() and (cut["recv_ns"] == end0).all()
    assert (answered["recv_ns"] <= end0).all()     # nothing of step 0 answered after its end
    print(f"\nstep 0: {len(first)} due, {len(cut)} in flight at its end (incomplete); "
          f"waited {((cut['recv_ns'] - cut['intended_ns']) / 1e6).round().tolist()} ms")

    write_config(run.path, {"load": {"arrivals": "poisson", "rates": [60, 2],
                                     "schedule": [{"rate": 60, "seconds": 3},
                                                  {"rate": 2, "seconds": 3}]}})
    rep = report(run.path, quiet=True)
    row0 = rep.steps.set_index("step").loc[0]
    assert row0["incomplete"] == len(cut) and row0["saturated"]


@pytest.mark.slow
def test_sweep_rides_through_a_killed_worker(real_models, tmp_path):
    """Real Redis (started by the sweep), two real worker processes; worker-0 is killed with
    SIGKILL 4 s into the load and started again. The run completes, every request has a row, and
    the report and the timeline mark the fault."""
    import subprocess
    import sys

    import pandas as pd

    from overhead.contract.rundir import RunDir

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "loadtest.sweep", "--out", str(out), "--users", "2",
           "--step-seconds", "14", "--warmup-seconds", "1", "--sizes", "0.1MP",
           "--broker", "redis://local", "--worker-processes", "2", "--fault", "kill-worker@4s",
           "--drain-seconds", "8", *gateway_args(real_models, "--result-timeout-s", "5")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = RunDir(out)
    config = json.loads(run.config.read_text())
    (fault,) = config["faults"]
    assert fault["kind"] == "kill-worker" and fault["target"] == "worker-0"
    assert fault["error"] is None and fault["recovered_ns"] > fault["time_ns"] > 0
    assert config["run"]["status"] == "complete"
    req = pd.read_parquet(run.requests)
    assert len(req) == config["locust"]["final"]["infer_requests"] > 10     # none lost
    assert req["request_id"].is_unique
    md = run.report_md.read_text()
    assert "## Faults" in md and "Fault injected" in md and "kill-worker worker-0" in md
    for window in ("before", "during", "after"):
        assert f"| {window} |" in md
    from analysis.trace_export import build_trace

    events = build_trace(run.path)["traceEvents"]
    marks = [e for e in events if e.get("name") == "fault: kill-worker worker-0"]
    assert {e["ph"] for e in marks} == {"i", "X"}


def test_queue_time_budget_turns_away_requests_that_waited_too_long(real_models, tmp_path):
    """One request thread, room for 8, but a 1 ms budget for waiting for the thread: of four
    requests sent at once, those that had to wait get 503 overloaded naming --max-queue-ms."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.corpus import build_corpus

    img = Path(build_corpus(sizes=("1MP",), photos=("china",))[0].path).read_bytes()
    gw = GatewayProcess(gateway_args(real_models, "--threads", "1", "--max-queued", "8",
                                     "--max-queue-ms", "1"), tmp_path / "gateway.log").start()
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: httpx.post(gw.url + "/v1/infer", content=img,
                                                         timeout=30), range(4)))
        codes = sorted(r.status_code for r in answers)
        assert codes[0] == 200 and 503 in codes, codes
        late = [r.json() for r in answers if r.status_code == 503]
        assert all(b["error"] == "overloaded" and "--max-queue-ms" in b["message"] for b in late)
        stats = httpx.get(gw.url + "/v1/stats").json()["admission"]
        assert stats["rejected_queue_time"] == len(late) and stats["rejected"] == 0
    finally:
        gw.stop()


def test_a_closed_loop_of_max_queued_clients_is_never_turned_away(small_gateway):
    """A place is free again before the client that held it can send its next request."""
    import threading

    from pipelines.corpus import build_corpus

    img = Path(build_corpus(sizes=("0.1MP",), photos=("china",))[0].path).read_bytes()
    codes: list[int] = []
    end = time.monotonic() + 3

    def client():
        with httpx.Client(base_url=small_gateway.url, timeout=30) as c:
            while time.monotonic() < end:
                codes.append(c.post("/v1/infer", content=img).status_code)
    threads = [threading.Thread(target=client) for _ in range(2)]   # = --max-queued 2
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(codes) > 4 and set(codes) == {200}, sorted(set(codes))


def test_fault_specs_parse_and_bad_ones_are_refused():
    from loadtest.faults import Fault

    f = Fault.parse("kill-worker@20s")
    assert (f.kind, f.at_s) == ("kill-worker", 20.0)
    assert Fault.parse("restart-broker@2.5").at_s == 2.5
    for bad in ("kill-gateway@5s", "kill-worker", "kill-worker@soon"):
        with pytest.raises(ValueError, match="KIND@SECONDS"):
            Fault.parse(bad)
