"""Gateway settings: one dataclass, one parser. Each option also reads ``OVERHEAD_<NAME>`` from the
environment (the CLI wins), e.g. ``OVERHEAD_K=2``, ``OVERHEAD_BROKER=memory://?maxsize=64``."""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, fields


@dataclass
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8000
    detector: str = "ssd_mobilenetv2"
    classifier: str = "mobilenetv2"
    models_dir: str | None = None
    backend: str = "embedded"
    triton_url: str | None = None
    tfserving_url: str | None = None
    broker: str = "memory://"
    preprocessor: str = "opencv"
    reduced: str = "auto"
    k: int = 4
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    intra_op_threads: int = 1
    max_batch: int = 1
    max_delay_ms: float = 0.0
    worker_batch: int | None = None
    workers: int = 1
    threads: int = 4
    max_upload_mb: float = 32.0
    max_pixels: int = 60_000_000
    result_timeout_s: float = 30.0
    publish_timeout_s: float = 1.0
    spans_dir: str | None = None
    spans: bool = True
    log_level: str = "info"
    access_log: bool = False

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        d = cls()
        env = os.environ.get

        def default(name, conv=str):
            v = env(f"OVERHEAD_{name.upper()}")
            return getattr(d, name) if v is None else conv(v)

        p = argparse.ArgumentParser(
            prog="python -m pipelines.gateway",
            description="Overhead gateway: POST an image to /v1/infer; detections with labels and a "
                        "Server-Timing breakdown come back. Options also read OVERHEAD_<NAME>.")
        a = p.add_argument
        a("--host", default=default("host"), help="bind address (default 127.0.0.1)")
        a("--port", type=int, default=default("port", int), help="0 picks a free port")
        a("--detector", default=default("detector"), help="detector model name")
        a("--classifier", default=default("classifier"), help="classifier model name")
        a("--models-dir", default=default("models_dir"), help="model cache directory")
        a("--backend", default=default("backend"),
      help="inference backend (embedded | triton | tfserving)")
        a("--triton-url", default=default("triton_url"),
          help="Triton server for --backend triton: http://host:port (default "
               "http://127.0.0.1:8000) or grpc://host:port")
        a("--tfserving-url", default=default("tfserving_url"),
          help="TF Serving for --backend tfserving: http://host:port (REST, default "
               "http://127.0.0.1:8501) or grpc://host:port")
        a("--broker", default=default("broker"), help="broker URL, e.g. memory://?maxsize=1024")
        a("--preprocessor", default=default("preprocessor"), help="opencv | pil | simplejpeg | dali")
        a("--reduced", default=default("reduced"), choices=("auto", "off"),
          help="DCT-reduced JPEG decode when the image is >= 2x the detector input")
        a("--k", type=int, default=default("k", int), help="crops classified per image (fan-out)")
        a("--score-threshold", type=float, default=default("score_threshold", float))
        a("--iou-threshold", type=float, default=default("iou_threshold", float))
        a("--intra-op-threads", type=int, default=default("intra_op_threads", int),
          help="ONNX Runtime intra-op threads per session")
        a("--max-batch", type=int, default=default("max_batch", int),
          help="detector micro-batch size (1 = no batching); also the worker's crop batch")
        a("--max-delay-ms", type=float, default=default("max_delay_ms", float),
          help="max wait for a batch to fill")
        a("--worker-batch", type=int, default=default("worker_batch", int),
          help="max crops per classifier call (default: --max-batch)")
        a("--workers", type=int, default=default("workers", int),
          help="in-process classifier worker threads (0: external workers only)")
        a("--threads", type=int, default=default("threads", int),
          help="request threads (decode, detect, wait for results)")
        a("--max-upload-mb", type=float, default=default("max_upload_mb", float))
        a("--max-pixels", type=int, default=default("max_pixels", int))
        a("--result-timeout-s", type=float, default=default("result_timeout_s", float),
          help="wait this long for the crops' classes, then answer 504")
        a("--publish-timeout-s", type=float, default=default("publish_timeout_s", float),
          help="wait this long for room in the broker, then answer 503")
        a("--spans-dir", default=default("spans_dir"), help="write span parquet parts here")
        a("--no-spans", dest="spans", action="store_false", default=default(
            "spans", lambda v: v.lower() not in ("0", "false", "no")),
          help="do not record spans (span-overhead benchmark)")
        a("--log-level", default=default("log_level"),
          choices=("critical", "error", "warning", "info", "debug"))
        a("--access-log", action="store_true", default=default(
            "access_log", lambda v: v.lower() in ("1", "true", "yes")))
        return p

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "GatewaySettings":
        ns = cls.parser().parse_args(argv)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(ns).items() if k in names})
