"""The gateway over real HTTP on loopback: uvicorn in a child process (stopped by PID), the real
seeded models (``ensure_model``: built once, ~1 min, then cached), real corpus photos."""
import io
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from deploy.pipeline_processes import GatewayProcess

MAX_UPLOAD_MB = 8
SERVER_TIMING_KEYS = ("gateway-transfer", "detect-decode", "detect-resize", "detect-normalize",
                      "detect-queue", "detect-inference", "detect-postprocess", "detect-serialize",
                      "classify-broker", "classify-serialize", "classify-resize",
                      "classify-normalize", "classify-queue", "classify-inference")
SPAN_COMPONENTS = {("gateway", "transfer"), ("gateway", "queue")} | {
    ("detect", c) for c in ("decode", "resize", "normalize", "queue", "inference", "postprocess",
                            "serialize")} | {
    ("classify", c) for c in ("broker", "serialize", "resize", "normalize", "queue", "inference")}


@pytest.fixture(scope="session")
def real_models():
    from pipelines.models import ensure_model

    return ensure_model("ssd_mobilenetv2"), ensure_model("mobilenetv2")


@pytest.fixture(scope="session")
def photos():
    from pipelines.corpus import build_corpus

    return {img.size_class: Path(img.path).read_bytes()
            for img in build_corpus(sizes=("1MP", "8MP"), photos=("china",))}


def _gateway_args(real_models, spans_dir, *extra):
    det, cls = real_models
    return ["--detector", det.name, "--classifier", cls.name,
            "--models-dir", str(Path(det.onnx_path).parent.parent), "--spans-dir", str(spans_dir),
            "--max-upload-mb", str(MAX_UPLOAD_MB), "--intra-op-threads", "1", "--k", "4",
            "--score-threshold", "0.3", *extra]


@pytest.fixture(scope="module")
def gateway(real_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("gateway")
    gw = GatewayProcess(_gateway_args(real_models, d / "spans", "--result-timeout-s", "20"),
                        d / "gateway.log").start()
    gw.spans_dir = d / "spans"
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def client(gateway):
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        yield c


def _bad_inputs(good: bytes) -> dict:
    from PIL import Image

    gif, webp, png = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.new("RGB", (20, 20)).save(gif, "GIF")
    Image.new("RGB", (20, 20)).save(webp, "WEBP")
    Image.new("L", (8, 8)).save(png, "PNG")
    bomb = bytearray(png.getvalue())                        # a real PNG whose IHDR claims 30000^2
    i = bomb.find(b"IHDR")
    bomb[i + 4:i + 12] = struct.pack(">II", 30000, 30000)
    bomb[i + 17:i + 21] = struct.pack(">I", zlib.crc32(bytes(bomb[i:i + 17])))
    sos = good.find(b"\xff\xda") + 2000
    return {
        "empty": (b"", 400, "empty_body"),
        "text": (b"this is not an image, it is text", 415, "not_an_image"),
        "truncated_jpeg": (good[:len(good) // 2], 422, "truncated_image"),
        "corrupt_jpeg": (good[:sos] + b"\xff\xd8" + good[sos + 2:], 422, "corrupt_image"),
        "gif": (gif.getvalue(), 415, "unsupported_format"),
        "webp": (webp.getvalue(), 415, "unsupported_format"),
        "png_bomb": (bytes(bomb), 413, "too_many_pixels"),
        "over_size_cap": (good + b"\0" * (MAX_UPLOAD_MB << 20), 413, "too_large"),
    }


def _check_good(resp, rid=None):
    assert resp.status_code == 200, resp.text
    body = resp.json()
    if rid is not None:
        assert body["request_id"] == rid == resp.headers["x-request-id"]
    return body


def test_healthz_and_config(client, real_models):
    r = client.get("/healthz")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["models"] == {"detector": "ssd_mobilenetv2",
                                                   "classifier": "mobilenetv2"}
    cfg = client.get("/v1/config").json()
    cores = len(os.sched_getaffinity(0))   # the default pools are sized from the cores
    assert cfg["settings"]["workers"] == max(1, min(cores - 1, 8))
    assert cfg["settings"]["threads"] == min(2 * cores, 16)
    assert h["broker"]["ok"] is True and h["workers"] == cfg["settings"]["workers"]
    assert cfg["pipeline"]["worker_batch"] == 4            # one image's crops (k) in one call
    assert cfg["settings"]["k"] == 4 and cfg["settings"]["intra_op_threads"] == 1
    assert cfg["versions"]["onnxruntime"] and cfg["models"]["detector"]["input_hw"] == [320, 320]
    assert cfg["pipeline"]["detector"]["intra_op_threads"] == 1
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_good_request_returns_labelled_detections_and_server_timing(client, photos):
    r = client.post("/v1/infer", content=photos["1MP"], headers={"X-Request-ID": "good-1"})
    body = _check_good(r, "good-1")
    assert body["k"] == len(body["detections"]) == 4
    assert body["width"] * body["height"] > 900_000
    for d in body["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= body["width"] and 0 <= y1 < y2 <= body["height"]
        assert isinstance(d["label"], str) and d["label"] and 0 <= d["class_id"] < 1000
        assert 0 < d["label_score"] <= 1 and 0.3 <= d["score"] <= 1
    scores = [d["score"] for d in body["detections"]]
    assert scores == sorted(scores, reverse=True)
    timing = r.headers["server-timing"]
    for key in SERVER_TIMING_KEYS:
        assert f"{key};dur=" in timing, key
    # an id is minted when the client sends none
    r = client.post("/v1/infer", content=photos["1MP"])
    rid = _check_good(r)["request_id"]
    assert len(rid) == 32 and r.headers["x-request-id"] == rid


def test_a_multipart_form_upload_is_accepted_like_the_raw_body(client, photos):
    """``curl -F file=@photo.jpg``: the form's file part is the image; a form without one is 400."""
    raw = _check_good(client.post("/v1/infer", content=photos["1MP"], headers={"X-Request-ID": "raw-1"}),
                      "raw-1")
    r = client.post("/v1/infer", files={"file": ("photo.jpg", photos["1MP"], "image/jpeg")},
                    data={"note": "a field too"}, headers={"X-Request-ID": "form-1"})
    form = _check_good(r, "form-1")
    assert (form["width"], form["height"], form["k"]) == (raw["width"], raw["height"], raw["k"])
    assert [d["box"] for d in form["detections"]] == [d["box"] for d in raw["detections"]]
    r = client.post("/v1/infer", data={"file": "not a file"}, files={"other": ("x.txt", b"")},
                    headers={"X-Request-ID": "form-2"})
    assert r.status_code in (400, 415), r.text    # an empty file part is not an image
    r = client.post("/v1/infer", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400 and r.json()["error"] == "bad_form", r.text
    _check_good(client.post("/v1/infer", content=photos["1MP"]))       # still serving


def test_every_bad_input_gets_its_4xx_json_and_the_service_keeps_serving(client, photos):
    for name, (data, status, code) in _bad_inputs(photos["1MP"]).items():
        r = client.post("/v1/infer", content=data, headers={"X-Request-ID": f"bad-{name}"})
        assert r.status_code == status, (name, r.text)
        body = r.json()
        assert body["error"] == code and body["message"], name
        assert r.headers["x-request-id"] == f"bad-{name}"
    r = client.post("/v1/infer", content=photos["1MP"], headers={"X-Request-ID": "bad id!"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request_id"
    _check_good(client.post("/v1/infer", content=photos["1MP"], headers={"X-Request-ID": "after"}),
                "after")


def _raw_http(port, head: bytes, body_chunks=(), timeout=10.0):
    """Send ``head`` then chunks (stopping as soon as the server answers); return the response."""
    import select

    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent = 0
    try:
        s.sendall(head)
        for chunk in body_chunks:
            if select.select([s], [], [], 0)[0]:
                break                                       # the server answered early
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break     # answered and closed (Connection: close) while we were still sending
            sent += len(chunk)
        resp = b""
        while b"\r\n\r\n" not in resp or len(resp.split(b"\r\n\r\n", 1)[1]) < _content_length(resp):
            part = s.recv(65536)
            if not part:
                break
            resp += part
    finally:
        s.close()
    return resp, sent


def _content_length(resp: bytes) -> int:
    for line in resp.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_upload_cap_is_enforced_before_reading_everything(gateway):
    cap = MAX_UPLOAD_MB << 20
    # Content-Length over the cap: 413 at once, without sending a byte of the body
    head = (b"POST /v1/infer HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: %d\r\n\r\n" % (cap * 4))
    t0 = time.monotonic()
    resp, _ = _raw_http(gateway.port, head)
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    assert b'"error":"too_large"' in resp and time.monotonic() - t0 < 5
    # no Content-Length (chunked): bytes are counted while reading, 413 soon after the cap
    head = (b"POST /v1/infer HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    mb = b"\xff" * (1 << 20)
    chunks = (b"%x\r\n%s\r\n" % (len(mb), mb) for _ in range(MAX_UPLOAD_MB * 8))
    resp, sent = _raw_http(gateway.port, head, chunks)
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    assert b'"error":"too_large"' in resp
    assert sent < cap * 4, f"the client had to send {sent} bytes before the 413"


def _span_rows(spans_dir: Path, rid: str):
    rows = []
    for part in sorted(spans_dir.glob("*.parquet")):
        t = pq.read_table(part).to_pylist()
        rows += [r for r in t if r["request_id"] == rid]
    return rows


def test_spans_are_flushed_with_every_component(client, gateway, photos):
    _check_good(client.post("/v1/infer", content=photos["1MP"], headers={"X-Request-ID": "spans-1"}),
                "spans-1")
    deadline, got = time.monotonic() + 10, set()
    while time.monotonic() < deadline:
        rows = _span_rows(gateway.spans_dir, "spans-1")
        got = {(r["stage"], r["component"]) for r in rows}
        if SPAN_COMPONENTS <= got:
            break
        time.sleep(0.25)
    assert SPAN_COMPONENTS <= got, SPAN_COMPONENTS - got
    assert all(r["start_ns"] <= r["end_ns"] for r in rows)
    crops = {r["attrs"] for r in rows if (r["stage"], r["component"]) == ("classify", "inference")}
    assert len(crops) == 4


def test_event_loop_answers_healthz_while_8mp_requests_are_in_flight(gateway, photos):
    latencies, done = [], threading.Event()
    results = []

    def heavy():
        with httpx.Client(base_url=gateway.url, timeout=60) as c:
            results.append(c.post("/v1/infer", content=photos["8MP"]).status_code)

    threads = [threading.Thread(target=heavy) for _ in range(4)]
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        c.get("/healthz")
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            t0 = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.005)
    for t in threads:
        t.join()
    assert results == [200] * 4
    assert len(latencies) >= 5, "the 8MP requests finished before /healthz was probed"
    print(f"/healthz during 4 x 8MP: n={len(latencies)} median {np.median(latencies) * 1e3:.1f} ms "
          f"max {max(latencies) * 1e3:.1f} ms")
    assert np.median(latencies) < 0.05 and max(latencies) < 0.5


def test_missing_results_504_full_broker_503_and_spans_flushed_at_shutdown(real_models, photos,
                                                                           tmp_path):
    """No workers, a crop queue of one: the first request's crop is never classified (504 after
    the result timeout), the second finds the queue full (503 + Retry-After)."""
    gw = GatewayProcess(_gateway_args(real_models, tmp_path / "spans", "--workers", "0", "--k", "1",
                                      "--result-timeout-s", "1", "--broker", "memory://?maxsize=1",
                                      "--publish-timeout-s", "0.05"),
                        tmp_path / "gateway.log").start()
    try:
        t0 = time.monotonic()
        r = httpx.post(gw.url + "/v1/infer", content=photos["1MP"],
                       headers={"X-Request-ID": "never"}, timeout=30)
        elapsed = time.monotonic() - t0
        assert r.status_code == 504, r.text
        body = r.json()
        assert body["error"] == "result_timeout" and "Crop(s) [0] of 1" in body["message"]
        assert 1.0 <= elapsed < 5
        r = httpx.post(gw.url + "/v1/infer", content=photos["1MP"], timeout=30)
        assert r.status_code == 503 and r.json()["error"] == "overloaded", r.text
        assert r.headers["retry-after"] == "1"
        assert httpx.get(gw.url + "/healthz").status_code == 200
    finally:
        assert gw.stop() in (0, -15)   # uvicorn re-raises the SIGTERM it handled gracefully
    got = {(r["stage"], r["component"]) for r in _span_rows(tmp_path / "spans", "never")}
    assert {("detect", "decode"), ("detect", "inference"), ("detect", "serialize"),
            ("gateway", "transfer")} <= got


def test_a_gateway_that_cannot_load_its_models_says_so(tmp_path):
    import uvicorn

    from pipelines.gateway import create_app
    from overhead.config import GatewaySettings

    app = create_app(GatewaySettings(detector="no_such_model", spans=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = c.get("/healthz")
            if r.json()["status"] != "loading":
                break
            time.sleep(0.05)
        assert r.status_code == 503 and r.json()["status"] == "error"
        assert "no_such_model" in r.json()["error"]
        r = c.post("/v1/infer", content=b"x")
        assert r.status_code == 503 and r.json()["error"] == "not_ready"
    server.should_exit = True
    th.join(10)
    with pytest.raises(RuntimeError, match="failed to start: .*no_such_model"):
        GatewayProcess(["--detector", "no_such_model"], tmp_path / "bad.log").start(timeout_s=60)


def test_parity_with_running_the_onnx_models_directly(client, real_models, photos):
    """Labels and scores through HTTP, the broker and the worker == ORT on the same crops."""
    from pipelines.inference import OrtSession
    from pipelines.postprocess import select_boxes, to_pixels
    from pipelines.preprocess import crop, get_preprocessor

    det, cls = real_models
    data = photos["1MP"]
    body = _check_good(client.post("/v1/infer", content=data, headers={"X-Request-ID": "parity"}),
                       "parity")
    pre = get_preprocessor("opencv", reduced="auto")
    img, info = pre.decode(data, det.input_hw)
    x = pre.normalize(pre.resize(img, det.input_hw), det.normalization)
    out = OrtSession(det.onnx_path).run(x[None])
    boxes, scores = select_boxes(out["boxes"][0], out["scores"][0], 0.3, 0.5, 4)
    px = to_pixels(boxes, info["src_hw"])
    csess = OrtSession(cls.onnx_path)
    assert len(body["detections"]) == len(boxes) == 4
    for d, b, s, p in zip(body["detections"], boxes, scores, px):
        c = pre.normalize(pre.resize(crop(img, b), cls.input_hw), cls.normalization)
        probs = csess.run(c[None])["probs"][0]
        cid = int(np.argmax(probs))
        assert d["box"] == p.tolist()
        assert d["score"] == pytest.approx(float(s), abs=1e-5)
        assert d["class_id"] == cid and d["label"] == cls.labels[cid]
        assert d["label_score"] == pytest.approx(float(probs[cid]), abs=1e-5)
