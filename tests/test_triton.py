"""Triton Inference Server support against the REAL ``tritonserver`` binary (CPU, Python backend
running ONNX Runtime): repository generation, server lifecycle, the ``triton`` client backend
over HTTP and gRPC (values equal to the embedded ORT backend), dynamic batching seen in Triton's
own statistics, fast clear errors, the trace join, and the gateway end to end with both models
in Triton. Missing installs FAIL with the hint to run ``scripts/ensure_triton.sh``."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from triton_server import (MAX_BATCH, require_triton, triton_models, triton_repo,  # noqa: F401
                           triton_server)

ROOT = Path(__file__).resolve().parents[1]


def _backend(info, url, **kw):
    from pipelines.inference import make_backend

    return make_backend("triton", info, url=url, timeout_s=30, **kw)


def _stats_after(tb, before: dict, n: int, timeout_s: float = 5.0) -> dict:
    """Triton updates a model's statistics just AFTER sending the responses: poll until the
    ``n`` inferences are counted."""
    from pipelines.inference.triton import stats_delta

    deadline = time.monotonic() + timeout_s
    while True:
        d = stats_delta(before, tb.model_stats())
        if d["inference_count"] >= n or time.monotonic() > deadline:
            return d
        time.sleep(0.02)


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


# -- repository generator (no server) ---------------------------------------------------------
def test_repository_flavours_from_one_description(tiny_detector, tmp_path):
    from deploy.triton.repository import config_pbtxt, spec_from_onnx, write_model

    spec = spec_from_onnx("det", tiny_detector.onnx_path, max_batch_size=4, queue_delay_us=250,
                          instances=2, intra_op_threads=1)
    assert [(t.name, t.data_type, t.dims) for t in spec.inputs] == [("images", "TYPE_FP32", [64, 64, 3])]
    assert [(t.name, t.dims) for t in spec.outputs] == [("boxes", [16, 4]), ("scores", [16])]
    py, ort = config_pbtxt(spec, "python"), config_pbtxt(spec, "onnxruntime")
    for text in (py, ort):
        assert 'name: "det"' in text and "max_batch_size: 4" in text
        assert "max_queue_delay_microseconds: 250" in text
        assert "count: 2" in text and "kind: KIND_CPU" in text
        assert 'name: "scores"' in text and "dims: [ 16 ]" in text
    assert 'backend: "python"' in py and "platform" not in py
    assert 'platform: "onnxruntime_onnx"' in ort and "backend:" not in ort
    assert '"intra_op_thread_count"' in ort
    d = write_model(tmp_path / "py", spec, "python")
    assert (d / "1" / "model.onnx").stat().st_size == Path(tiny_detector.onnx_path).stat().st_size
    assert "TritonPythonModel" in (d / "1" / "model.py").read_text()
    d = write_model(tmp_path / "ort", spec, "onnxruntime")
    assert (d / "1" / "model.onnx").is_file() and not (d / "1" / "model.py").exists()
    # the CLI, with a name=path model
    out = subprocess.run([sys.executable, "-m", "deploy.triton.repository", "--out",
                          str(tmp_path / "cli"), "--models", f"tiny={tiny_detector.onnx_path}",
                          "--max-batch", "2", "--queue-delay-us", "50", "--flavour", "onnxruntime"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "cli" / "tiny" / "config.pbtxt").read_text()
    assert "max_batch_size: 2" in text and "max_queue_delay_microseconds: 50" in text


# -- client backend vs the embedded backend ----------------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_outputs_equal_the_embedded_backend(triton_server, triton_models, protocol):
    from pipelines.inference import make_backend

    det, cls = triton_models
    url = (f"http://{triton_server.http_url}" if protocol == "http"
           else f"grpc://{triton_server.grpc_url}")
    rng = np.random.default_rng(7)
    for info, n in ((cls, 11), (det, 2)):          # 11 > max_batch 8: infer_batch splits
        h, w = info.input_hw
        xs = rng.uniform(-1, 1, (n, h, w, 3)).astype(np.float32)
        emb = make_backend("embedded", info, intra_op_threads=1)
        tb = _backend(info, url)
        try:
            assert tb.describe()["max_batch_size"] == MAX_BATCH
            ref = emb.infer_batch(xs).outputs
            r1 = tb.infer(xs[0], request_id=f"parity-{protocol}-{info.name}")
            assert r1.request_id == f"parity-{protocol}-{info.name}" and r1.batch_size == 1
            assert r1.enqueue_ns <= r1.start_ns < r1.end_ns
            assert [s[0] for s in r1.spans] == ["serialize"]
            rb = tb.infer_batch(xs)
            assert rb.batch_size == n
            for name in info.output_names:
                assert r1.outputs[name].shape == ref[name][0].shape
                np.testing.assert_allclose(r1.outputs[name], ref[name][0], rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(rb.outputs[name], ref[name], rtol=1e-5, atol=1e-6)
            # the values are not degenerate (an empty/constant answer would not pass this)
            first = ref[info.output_names[0]]
            assert np.ptp(first) > 1e-3
        finally:
            tb.close()
            emb.close()


def test_dynamic_batching_is_seen_in_triton_statistics(triton_server, triton_models):
    _, cls = triton_models
    tb = _backend(cls, f"grpc://{triton_server.grpc_url}")
    x = np.random.default_rng(1).uniform(-1, 1, (*cls.input_hw, 3)).astype(np.float32)
    try:
        before = tb.model_stats()
        with ThreadPoolExecutor(8) as ex:           # 8 in flight, one model instance
            results = list(ex.map(lambda i: tb.infer(x, request_id=f"dyn-{i}"), range(24)))
        d = _stats_after(tb, before, 24)
    finally:
        tb.close()
    assert all(np.array_equal(r.outputs["probs"], results[0].outputs["probs"]) for r in results)
    assert d["inference_count"] == 24 and d["success_count"] == 24 and d["fail_count"] == 0
    assert max(d["batches"]) > 1, d["batches"]                     # batches were formed
    assert d["execution_count"] < 24
    assert sum(b * c for b, c in d["batches"].items()) == 24
    assert d["queue_mean_ns"] > 0 and d["compute_infer_mean_ns"] > 0


# -- errors: clear and fast ----------------------------------------------------------------------
def test_server_down_and_model_missing_fail_fast_with_a_clear_message(triton_server, triton_models):
    from deploy.triton.server import free_port
    from pipelines.inference.triton import TritonUnavailable

    _, cls = triton_models
    port = free_port()                     # nothing listens there
    for url in (f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port}"):
        t0 = time.monotonic()
        with pytest.raises(TritonUnavailable, match=f"127.0.0.1:{port}.*mobilenetv2.*unreachable"):
            _backend(cls, url, connect_timeout_s=1.0)
        assert time.monotonic() - t0 < 5
    missing = type("Info", (), {"name": "no_such_model", "input_hw": (8, 8)})()
    for url in (f"http://{triton_server.http_url}", f"grpc://{triton_server.grpc_url}"):
        t0 = time.monotonic()
        with pytest.raises(TritonUnavailable, match="no_such_model.*not ready or not in the "
                                                    "repository.*mobilenetv2"):
            _backend(missing, url)
        assert time.monotonic() - t0 < 5
    with pytest.raises(ValueError, match="unknown inference backend"):
        from pipelines.inference import make_backend
        make_backend("trition", cls)


# -- server lifecycle + per-request trace join --------------------------------------------------
def test_server_lifecycle_no_orphans_and_trace_join(tiny_classifier, tmp_path):
    require_triton()
    from deploy.triton.repository import write_repository
    from deploy.triton.server import TritonServer, TritonServerError
    from pipelines.inference.triton import read_trace, server_spans

    repo = tmp_path / "repo"
    write_repository(repo, [tiny_classifier], max_batch=4, queue_delay_us=100)
    trace = tmp_path / "trace.json"
    srv = TritonServer(repo, trace_file=trace, log_path=tmp_path / "triton.log")
    srv.start(timeout_s=60)
    pid = srv.pid
    try:
        assert len(_group_pids(pid)) >= 2           # the server and its Python-backend stub
        tb = _backend(tiny_classifier, srv.http_url)
        x = np.random.default_rng(3).uniform(0, 1, (32, 32, 3)).astype(np.float32)
        results = [tb.infer(x, request_id=f"trace-{i}") for i in range(3)]
        tb.close()                                  # open connections delay the shutdown
    finally:
        srv.stop()
    assert _group_pids(pid) == [] and not srv.running()
    traces = read_trace(trace)
    for r in results:
        t = traces[r.request_id]
        assert t["model_name"] == "tiny_classifier"
        spans = server_spans(t, r.start_ns, r.end_ns)
        assert [s[0] for s in spans] == ["transfer", "queue", "inference", "transfer"]
        for _, s, e, _ in spans:                    # inside the client round trip, in order
            assert r.start_ns <= s <= e <= r.end_ns
        assert spans[2][2] > spans[2][1]            # compute took time
        assert sum(e - s for _, s, e, _ in spans) <= r.end_ns - r.start_ns
    # a broken repository: a clear error with the log tail, nothing left running
    bad = tmp_path / "bad"
    (bad / "broken" / "1").mkdir(parents=True)
    (bad / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 1\n')
    srv = TritonServer(bad, log_path=tmp_path / "bad.log")
    with pytest.raises(TritonServerError, match="broken"):
        srv.start(timeout_s=30)
    assert not srv.running()


# -- the gateway end to end with both models in Triton ---------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_gateway_with_the_triton_backend_serves_end_to_end(triton_server, triton_models, tmp_path,
                                                           protocol):
    import httpx

    from deploy.pipeline_processes import GatewayProcess
    from pipelines.inference import OrtSession
    from pipelines.postprocess import select_boxes, to_pixels
    from pipelines.preprocess import crop, get_preprocessor

    det, cls = triton_models
    stats = {m.name: _backend(m, triton_server.http_url) for m in (det, cls)}
    before = {n: b.model_stats() for n, b in stats.items()}
    from sklearn.datasets import load_sample_image
    import cv2
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(load_sample_image("china.jpg"), cv2.COLOR_RGB2BGR))
    data = buf.tobytes()
    url = (f"grpc://{triton_server.grpc_url}" if protocol == "grpc"
           else f"http://{triton_server.http_url}")
    gw = GatewayProcess(["--detector", det.name, "--classifier", cls.name,
                         "--models-dir", str(Path(det.onnx_path).parent.parent),
                         "--backend", "triton", "--triton-url", url,
                         "--k", "3", "--score-threshold", "0.3", "--no-spans"],
                        tmp_path / "gateway.log").start(timeout_s=120)
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            r = c.post("/v1/infer", content=data, headers={"X-Request-ID": "triton-e2e"})
            assert r.status_code == 200, r.text
            body = r.json()
            cfg = c.get("/v1/config").json()
    finally:
        gw.stop()
    assert cfg["pipeline"]["detector"]["backend"] == "triton"
    assert cfg["pipeline"]["classifier"]["url"] == url
    # both models ran in Triton (warm-up + this request)
    n_det = _stats_after(stats[det.name], before[det.name], 2)["inference_count"]
    n_cls = _stats_after(stats[cls.name], before[cls.name], 1 + 3)["inference_count"]
    for b in stats.values():
        b.close()
    assert n_det >= 2 and n_cls >= 1 + 3
    assert body["request_id"] == "triton-e2e" and body["k"] == len(body["detections"]) == 3
    assert "detect-inference;dur=" in r.headers["server-timing"]
    # and the answer equals running the ONNX models directly
    pre = get_preprocessor("opencv", reduced="auto")
    img, info = pre.decode(data, det.input_hw)
    x = pre.normalize(pre.resize(img, det.input_hw), det.normalization)
    out = OrtSession(det.onnx_path).run(x[None])
    boxes, scores = select_boxes(out["boxes"][0], out["scores"][0], 0.3, 0.5, 3)
    csess = OrtSession(cls.onnx_path)
    for d, b, s, p in zip(body["detections"], boxes, scores, to_pixels(boxes, info["src_hw"])):
        probs = csess.run(pre.normalize(pre.resize(crop(img, b), cls.input_hw),
                                        cls.normalization)[None])["probs"][0]
        assert d["box"] == p.tolist() and d["score"] == pytest.approx(float(s), abs=1e-5)
        assert d["class_id"] == int(np.argmax(probs))
        assert d["label_score"] == pytest.approx(float(probs.max()), abs=1e-5)


# -- the sweep with --server triton: Triton's own clocks in the run's spans -------------------
def test_sweep_server_triton_joins_the_trace_into_spans(tmp_path):
    """A short REAL sweep: the sweep writes the repository, starts tritonserver with tracing, the
    gateway calls it over gRPC; at the end each Triton call's round trip becomes transfer / queue /
    inference from Triton's trace (both stages), stats are cross-checked, the report names the
    server per stage, and nothing is left running."""
    import json

    import pandas as pd
    import psutil

    require_triton()
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "loadtest.sweep", "--out", str(out), "--users", "1",
           "--step-seconds", "3", "--warmup-seconds", "0.5", "--sizes", "0.1MP",
           "--min-requests", "1", "--server", "triton", "--k", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Triton trace vs /v2/models/*/stats" in proc.stderr
    cfg = json.loads((out / "config.json").read_text())
    sv = cfg["serving"]
    assert sv["server"] == "triton" and sv["stages"]["detect"]["server"] == "triton"
    assert sv["stages"]["classify"]["model"] == "mobilenetv2"
    assert cfg["gateway"]["pipeline"]["detector"]["backend"] == "triton"
    assert sv["join"]["detect"]["joined"] > 0 and sv["join"]["detect"]["missing"] == 0
    assert sv["join"]["classify"]["joined"] > 0 and sv["join"]["classify"]["missing"] == 0
    for m in ("ssd_mobilenetv2", "mobilenetv2"):
        cc = sv["cross_check"][m]
        assert cc["trace_requests"] == cc["stats_requests"] > 0
        assert cc["trace_compute_ms"] == pytest.approx(cc["stats_compute_ms"], rel=0.25, abs=1.0)
    assert (out / "triton" / "stats.json").exists() and (out / "logs" / "tritonserver.log").exists()
    spans = pd.read_parquet(out / "spans.parquet")
    tr = spans[spans["attrs"].fillna("").str.contains('"source":"triton-trace"')]
    for stage in ("detect", "classify"):
        comps = set(tr.loc[tr["stage"] == stage, "component"])
        assert {"transfer", "queue", "inference"} <= comps, (stage, comps)
        # no client round trip inference span is left for a joined call
        inf = spans[(spans["stage"] == stage) & (spans["component"] == "inference")]
        assert inf["attrs"].str.contains("triton-trace").all()
    assert (tr["end_ns"] >= tr["start_ns"]).all()
    report = (out / "report.md").read_text()
    assert "## Serving" in report and "| detect | triton | ssd_mobilenetv2 |" in report
    assert not psutil.pid_exists(sv["pid"]) or \
        psutil.Process(sv["pid"]).status() == psutil.STATUS_ZOMBIE
