"""The HTTP gateway (FastAPI + uvicorn): upload -> validate -> two-stage pipeline -> JSON.

Endpoints
  ``POST /v1/infer``  image bytes (JPEG or PNG) as the body or a multipart form's file part
                      (``curl -F file=@photo.jpg``); optional ``X-Request-ID`` (minted if absent,
                      echoed). 200 ``{request_id, width, height, k, detections}`` + ``Server-Timing``;
                      errors are JSON ``{"error": code, "message": ...}``: 400/413/415/422 bad upload,
                      503 not ready / overloaded / broker full (``Retry-After``), 504 crops not
                      classified in time, 502 classifier failed, 500 unexpected.
  ``GET /healthz``    200 ``{"status": "ok", models, broker}`` once the models are loaded, else 503.
  ``GET /v1/config``  effective settings, versions, models, machine (for a run's config.json).
  ``GET /v1/stats``   in-flight requests, late/duplicate results, worker counters, broker depth per
                      topic (-1 unknown), admission (in progress, admitted, rejected), process RSS.

Admission (``pipelines/admission.py``): at most ``--max-queued`` (default 2 x ``--threads``)
requests are admitted but not answered; the next gets 503 ``overloaded`` with ``Retry-After`` at
once, before its body is read; ``--max-queue-ms`` also turns away one that waited longer for a
request thread. When the last request is answered, freed heap goes back to the OS (``malloc_trim``).

The body is read as a stream and capped, as a ``gateway/transfer`` span (from admission);
validation reads headers only (``inspect_image``) before anything is decoded. Decode and detection
run on a bounded pool (``--threads``; the wait is ``gateway/queue``); the crops' results are
awaited on the event loop, so the thread is free for the next image meanwhile; the answer's way
back is ``gateway/queue`` + ``gateway/serialize`` (leg response, docs/architecture.md). Spans go
to ``--spans-dir`` (``SpanFlusher``); without it none are kept (undrained, they grew the RSS).
Run ``python -m pipelines.gateway --port 8000 ...``: prints ``overhead gateway ready on URL``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import platform
import re
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from brokers import BrokerError, BrokerFull, open_broker
from overhead.config import GatewaySettings
from overhead.contract import topics
from overhead.contract.clock import set_role
from pipelines.admission import Admission, AdmissionMiddleware, MemoryReleaser, rss_bytes
from pipelines.pipeline import ClassifierFailed, ResultTimeout, TwoStagePipeline
from pipelines.preprocess import ImageRejected, get_preprocessor, inspect_image
from pipelines.spans import SpanFlusher, SpanRecorder, now_ns, record_response_sent
from pipelines.uploads import FormError, image_bytes

log = logging.getLogger("overhead.gateway")

READY_LINE = "overhead gateway ready on http://{host}:{port}"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_REPO = Path(__file__).resolve().parent.parent
_VERSION_DISTS = ("overhead", "numpy", "onnxruntime", "opencv-python-headless", "fastapi",
                  "starlette", "uvicorn", "pyarrow", "pillow", "simplejpeg")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for d in _VERSION_DISTS:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def git_rev() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True,
                           text=True, timeout=2)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _resolve_model(name: str, models_dir: str | None):
    """A model name (built/cached by ``pipelines.models``) or a directory holding model.json."""
    p = Path(name)
    if p.is_dir() and (p / "model.json").exists():
        from pipelines.models import ModelInfo

        return ModelInfo.load(p)
    from pipelines.models import ensure_model

    return ensure_model(name, models_dir=models_dir)


class QueueBudgetExceeded(Exception):
    """An admitted request waited longer than ``--max-queue-ms`` for a request thread."""


class Gateway:
    """Everything behind the app: settings, recorder, thread pool, broker, pipeline, admission."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        # spans with nowhere to go (no --spans-dir) would pile up in memory for ever: not recorded
        self.recorder = SpanRecorder(enabled=settings.spans and bool(settings.spans_dir))
        self.flusher: SpanFlusher | None = None
        self.executor = ThreadPoolExecutor(max_workers=max(1, settings.threads),
                                           thread_name_prefix="request")
        self.broker = None
        self.pipeline = None
        self.models: dict = {}
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.started_ns = now_ns()
        self.git_rev = None
        self.admission = Admission(settings.admission_limit, settings.max_queue_ms)
        self.releaser = MemoryReleaser()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        if s.spans and s.spans_dir:
            self.flusher = SpanFlusher(self.recorder, s.spans_dir).start()
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    def _load(self) -> None:
        s = self.settings
        try:
            t0 = time.monotonic()
            self.git_rev = git_rev()
            self.broker = open_broker(s.broker)
            det = _resolve_model(s.detector, s.models_dir)
            cls = _resolve_model(s.classifier, s.models_dir)
            pre = get_preprocessor(s.preprocessor, reduced=s.reduced)
            self.pipeline = TwoStagePipeline(
                det, cls, pre, self.broker, self.recorder, k=s.k, score_threshold=s.score_threshold,
                iou_threshold=s.iou_threshold, intra_op_threads=s.intra_op_threads,
                max_batch=s.max_batch, max_delay_ms=s.max_delay_ms, workers=s.workers,
                worker_batch=s.worker_batch, result_timeout_s=s.result_timeout_s,
                backend=s.backend, backend_options=s.backend_options,
                publish_timeout_s=s.publish_timeout_s,
                calibration_crop_sleep_ms=s.calibration_crop_sleep_ms).start()
            self.models = {
                role: {"name": info.name, "kind": info.kind, "onnx_path": str(info.onnx_path),
                       "input_hw": list(info.input_hw), "normalization": info.normalization,
                       "num_classes": info.num_classes}
                for role, info in (("detector", det), ("classifier", cls))}
            self.preprocessor = repr(pre)
            log.info("models loaded in %.1f s: %s + %s", time.monotonic() - t0, det.name, cls.name)
            self.ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by /healthz and the CLI
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("gateway failed to load")

    def shutdown(self) -> None:
        if self.pipeline is not None:
            self.pipeline.stop()
        if self.broker is not None:
            self.broker.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.flusher is not None:
            self.flusher.stop()
            log.info("spans flushed to %s", self.flusher.directory)

    # -- request thread ----------------------------------------------------------------------
    def run_request(self, rid: str, data: bytes, probe, submitted_ns: int):
        """Detect and publish the crops (``TwoStagePipeline.submit``); the caller awaits the
        results (``wait_async``) without holding this thread. Returns (submitted, queued ns)."""
        t = now_ns()
        self.recorder.record(rid, "gateway", "queue", submitted_ns, t)
        if self.admission.over_budget(t - submitted_ns):
            raise QueueBudgetExceeded(t - submitted_ns)
        return self.pipeline.submit(rid, data, probe), t - submitted_ns

    # -- documents ---------------------------------------------------------------------------
    DEPTH_TOPICS = topics.PIPELINE_TOPICS

    def broker_stats(self) -> dict:
        """Broker name and messages waiting per topic (``-1``: unknown / unreachable)."""
        b = self.broker
        return {"name": b.name, "depth": {t: b.depth(t) for t in self.DEPTH_TOPICS}}

    def health(self) -> tuple[int, dict]:
        if self.load_error:
            return 503, {"status": "error", "error": self.load_error}
        if not self.ready.is_set():
            return 503, {"status": "loading"}
        b = self.broker
        broker = {"url": self.settings.broker, "name": b.name, "ok": b.ping(),
                  "depth": {"crops": b.depth("crops"), "results": b.depth("results")}}
        return 200, {"status": "ok", "models": {r: m["name"] for r, m in self.models.items()},
                     "broker": broker,
                     "workers": sum(1 for w in self.pipeline.workers if w.alive)}

    def config(self) -> dict:
        return {"settings": self.settings.dump(), "versions": versions(),
                "git_rev": self.git_rev, "models": self.models,
                "pipeline": self.pipeline.describe() if self.pipeline else None,
                "preprocessor": getattr(self, "preprocessor", None),
                "machine": {"host": platform.node(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "processor": platform.processor()},
                "pid": os.getpid(), "started_ns": self.started_ns, "ready": self.ready.is_set()}


def _error(status: int, code: str, message: str, rid: str | None = None,
           headers: dict | None = None) -> JSONResponse:
    body = {"error": code, "message": message}
    h = dict(headers or {})
    if rid is not None:
        body["request_id"] = rid
        h["X-Request-ID"] = rid
    return JSONResponse(body, status_code=status, headers=h)


_FAILURES = (ImageRejected, QueueBudgetExceeded, BrokerError, ResultTimeout, ClassifierFailed)


def _failure(exc: Exception, rid: str, settings: GatewaySettings) -> JSONResponse:
    """The JSON error answer of a request the pipeline could not serve."""
    retry = {"Retry-After": "1"}
    if isinstance(exc, ImageRejected):
        return _error(exc.status, exc.code, exc.message, rid)
    if isinstance(exc, QueueBudgetExceeded):
        return _error(503, "overloaded", f"The request waited {exc.args[0] / 1e6:.0f} ms for a "
                      f"request thread, over the {settings.max_queue_ms:g} ms budget "
                      "(--max-queue-ms): retry later or send fewer requests at once.", rid, retry)
    if isinstance(exc, BrokerFull):
        return _error(503, "overloaded", "The crop queue is full: retry later or send fewer "
                      "requests at once.", rid, retry)
    if isinstance(exc, BrokerError):
        return _error(503, "broker_unavailable", f"The message broker failed ({exc}): retry "
                      "later.", rid, retry)
    if isinstance(exc, ResultTimeout):
        return _error(504, "result_timeout", f"Crop(s) {exc.missing} of {exc.k} were not "
                      f"classified within {exc.timeout_s:g} s: the classifier workers are "
                      "stopped or overloaded; retry later.", rid)
    return _error(502, "classifier_failed", str(exc), rid)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    gw = Gateway(settings)
    cap = settings.max_upload_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gw.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, gw.shutdown)

    app = FastAPI(title="Overhead gateway", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.gateway = gw

    def overloaded(scope) -> JSONResponse:
        rid = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        return _error(503, "overloaded", gw.admission.message(), rid,
                      {"Retry-After": str(gw.admission.retry_after_s)})

    app.add_middleware(AdmissionMiddleware, admission=gw.admission, reject=overloaded,
                       on_idle=gw.releaser.maybe_release if settings.release_memory else None,
                       on_sent=lambda scope, t: record_response_sent(gw.recorder, scope, t))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = {404: "No such endpoint: use POST /v1/infer, GET /healthz or GET /v1/config.",
               405: f"{request.method} is not allowed here: POST images to /v1/infer."}
        return _error(exc.status_code, code, msg.get(exc.status_code, str(exc.detail)),
                      headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", f"The gateway failed ({type(exc).__name__}); "
                                             "see the gateway log.")

    @app.get("/healthz")
    async def healthz():
        status, body = gw.health()
        return JSONResponse(body, status_code=status)

    @app.get("/v1/config")
    async def config():
        return JSONResponse(gw.config())

    @app.get("/v1/stats")
    async def stats():
        broker = None
        if gw.broker is not None and gw.ready.is_set():
            # depth may be a round trip (Redis XLEN, Kafka offsets): off the event loop
            broker = await asyncio.get_running_loop().run_in_executor(None, gw.broker_stats)
        return JSONResponse({"spans_buffered": len(gw.recorder), "time_ns": now_ns(),
                             "broker": broker, "admission": gw.admission.stats(),
                             "rss_bytes": rss_bytes(), "malloc_trims": gw.releaser.trims,
                             "pipeline": gw.pipeline.stats() if gw.pipeline else None})

    @app.post("/v1/infer")
    async def infer(request: Request):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        if not _REQUEST_ID.match(rid):
            return _error(400, "bad_request_id", "X-Request-ID must be 1-128 letters, digits or "
                          "'.', '_', ':', '-'; leave it out to have one minted.",
                          rid=uuid.uuid4().hex)
        if not gw.ready.is_set():
            return _error(503, "not_ready", gw.load_error or "The models are still loading: retry "
                          "in a few seconds.", rid, {"Retry-After": "2"})
        close = {"Connection": "close"}  # the rest of an oversized body is not read
        too_large = ("The upload is {n} bytes, over the {cap} byte limit: send a smaller image "
                     "(or raise --max-upload-mb).")
        length = request.headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return _error(400, "bad_content_length", "Content-Length is not a number.", rid, close)
            if n > cap:
                return _error(413, "too_large", too_large.format(n=n, cap=cap), rid, close)
        t0 = getattr(request.state, "admitted_ns", None) or now_ns()   # headers in: receiving
        chunks, got = [], 0
        async for chunk in request.stream():
            got += len(chunk)
            if got > cap:
                return _error(413, "too_large", too_large.format(n=f"more than {cap}", cap=cap),
                              rid, close)
            chunks.append(chunk)
        data = b"".join(chunks)
        t1 = now_ns()
        gw.recorder.record(rid, "gateway", "transfer", t0, t1, {"bytes": got})
        try:
            data = await image_bytes(request.headers, data)
        except FormError as exc:
            return _error(400, "bad_form", str(exc), rid)
        try:
            probe = inspect_image(data, cap, settings.max_pixels)   # headers only
            sub, queued_ns = await asyncio.get_running_loop().run_in_executor(
                gw.executor, gw.run_request, rid, data, probe, now_ns())
            await gw.pipeline.wait_async(sub)
            result = gw.pipeline.finish(sub)
        except _FAILURES as exc:
            return _failure(exc, rid, settings)
        timing, done = result.pop("timing"), result.pop("done_ns")
        resumed = now_ns()   # the answer's way back: results listener -> this event loop
        gw.recorder.record(rid, "gateway", "queue", min(done, resumed), resumed, {"leg": "response"})
        request.state.respond = (rid, resumed)   # + gateway/serialize once sent (on_sent)
        header = (f"gateway-transfer;dur={(t1 - t0) / 1e6:.3f}, gateway-queue;dur={queued_ns / 1e6:.3f}, "
                  f"{timing.server_timing()}, total;dur={(resumed - t0) / 1e6:.3f}")
        return JSONResponse(result, headers={"X-Request-ID": rid, "Server-Timing": header})

    return app


def parse_settings(argv: list[str] | None = None) -> GatewaySettings:
    """Flags generated from ``GatewaySettings`` (overhead/config.py); they beat OVERHEAD_*."""
    return GatewaySettings.from_args(argv, prog="python -m pipelines.gateway", description=(
        "Overhead gateway: POST an image to /v1/infer; detections with labels and a "
        "Server-Timing breakdown come back. Options also read OVERHEAD_<NAME>."))


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    settings = parse_settings(argv)
    set_role("gateway")
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    gw: Gateway = app.state.gateway
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                           log_level=settings.log_level,
                                           access_log=settings.access_log, lifespan="on"))

    def announce() -> None:
        while not server.should_exit:
            if gw.load_error:
                print(f"overhead gateway failed to start: {gw.load_error}", file=sys.stderr,
                      flush=True)
                server.should_exit = True
                return
            if gw.ready.wait(0.05) and server.started:
                port = settings.port
                try:
                    port = server.servers[0].sockets[0].getsockname()[1]
                except (AttributeError, IndexError):
                    pass
                print(READY_LINE.format(host=settings.host, port=port), flush=True)
                return

    threading.Thread(target=announce, name="announce", daemon=True).start()
    server.run()   # handles SIGINT/SIGTERM: graceful shutdown, then the lifespan flushes spans
    return 1 if gw.load_error else 0


if __name__ == "__main__":
    sys.exit(main())
