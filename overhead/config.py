"""The one configuration tree: every option of the gateway, the worker and the load, declared once.

Each option is a pydantic field with its type, default and help (``description``); pydantic-settings
reads it from ``OVERHEAD_<NAME>`` (e.g. ``OVERHEAD_K=2``, ``OVERHEAD_BROKER=memory://?maxsize=64``)
and ``add_arguments`` generates its command-line flag: ``--kebab-name`` (``--PREFIX-kebab-name``
for Locust), ``choices`` from ``Literal`` types, booleans as ``--name/--no-name`` (a field named
``no_*`` is a plain ``--no-*`` switch). Precedence: command line > environment > default.

    ClassifierOptions   what a classifier needs (model, backend, batch, broker, spans, logging)
      GatewaySettings   ``python -m pipelines.gateway``: all of it plus the gateway's own options
      WorkerSettings    ``python -m pipelines.worker``: the subset above plus its consumer name/group
    ModelsSettings      ``python -m deploy.services build-models`` (the Compose/Kubernetes builder)
    LoadSettings        the load options the sweep and the Locust file share (same defaults)
      LocustSettings    plus the Locust file's own (run directory, steps, spans)
    CeilingSettings     the sweep's inference-only ceiling phase (duration, skip)

This module is at the bottom of the house: it imports nothing from the project.
"""
from __future__ import annotations

import argparse
import os
import types
import typing
from typing import Any, ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "OVERHEAD_"
DEFAULT_K = 4        # crops classified per image
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
Arrivals = Literal["poisson", "constant"]


def _flag_type(annotation) -> tuple[type, tuple | None]:
    """The argparse ``type`` and ``choices`` of a field (``X | None`` unwrapped, Literal -> choices)."""
    t = annotation
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    if typing.get_origin(t) is Literal:
        choices = typing.get_args(t)
        return type(choices[0]), choices
    return t, None


class Options(BaseSettings):
    """Base of every settings class: ``OVERHEAD_*`` environment, generated flags, dumps."""

    # an empty OVERHEAD_X counts as unset; a misspelt keyword argument is an error
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True,
                                      extra="forbid")
    flag_aliases: ClassVar[dict[str, tuple[str, ...]]] = {}   # field -> extra flags (old names)

    @classmethod
    def env_name(cls, name: str) -> str:
        return ENV_PREFIX + name.upper()

    @classmethod
    def add_arguments(cls, parser, prefix: str = "", defaults: "Options | None" = None,
                      **extra) -> None:
        """One flag per field on ``parser`` (or an argument group). Without ``defaults`` an option
        not given is left out of the namespace (``from_namespace`` then takes the environment or
        the field default); with ``defaults`` (a settings object) its values are the defaults.
        ``extra``: more keyword arguments for every ``add_argument`` (e.g. Locust's
        ``include_in_web_ui=True``)."""
        for name, f in cls.model_fields.items():
            flag = f"--{prefix}{name.replace('_', '-')}"
            kw: dict[str, Any] = {"dest": (prefix + name).replace("-", "_"),
                                  "default": argparse.SUPPRESS if defaults is None
                                  else getattr(defaults, name)}
            typ, choices = _flag_type(f.annotation)
            shown = (f"default: {f.default}; " if f.default not in (None, "")
                     and (typ is not bool or defaults is None) else "")
            kw["help"] = f"{f.description or ''} ({shown}env {cls.env_name(name)})".replace("%", "%%")
            if typ is bool and name.startswith("no_"):
                kw["action"] = "store_true"
            elif typ is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw.update(type=typ, choices=choices, metavar=None if choices else name.upper())
            parser.add_argument(flag, *cls.flag_aliases.get(name, ()), **kw, **extra)

    @classmethod
    def parser(cls, prog: str | None = None, description: str | None = None,
               **kw) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog=prog, description=description, **kw)
        cls.add_arguments(p)
        return p

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace, prefix: str = ""):
        """The settings from the flags given in ``ns`` (they beat the environment and defaults)."""
        p = prefix.replace("-", "_")
        given = {n: getattr(ns, p + n) for n in cls.model_fields if hasattr(ns, p + n)}
        return cls(**given)

    @classmethod
    def from_args(cls, argv: list[str] | None = None, known_only: bool = False, **parser_kw):
        """Parse ``argv`` (``sys.argv[1:]`` if None); ``known_only``: ignore other options."""
        p = cls.parser(**parser_kw)
        ns = p.parse_known_args(argv)[0] if known_only else p.parse_args(argv)
        return cls.from_namespace(ns)

    def to_argv(self, names=None) -> list[str]:
        """These settings as flags (``names``: only those fields); None values are left out."""
        out: list[str] = []
        for name in type(self).model_fields:
            v = getattr(self, name)
            if (names is not None and name not in names) or v is None:
                continue
            flag = name.replace("_", "-")
            if isinstance(v, bool) and name.startswith("no_"):
                out += [f"--{flag}"] if v else []
            elif isinstance(v, bool):
                out.append(f"--{flag}" if v else f"--no-{flag}")
            else:
                out += [f"--{flag}", str(v)]   # str(float) keeps every digit
        return out

    def dump(self) -> dict:
        """JSON-ready ``{field: value}`` (``GET /v1/config``, config.json)."""
        return self.model_dump(mode="json")


class ClassifierOptions(Options):
    """The options a classifier worker needs; the gateway has all of them (its in-process workers)."""

    broker: str = Field("memory://", description="broker URL, e.g. memory://?maxsize=1024, "
                        "redis://HOST:PORT, kafka://HOST:PORT (a worker process needs redis:// "
                        "or kafka://)")
    classifier: str = Field("mobilenetv2", description="classifier model name (pipelines.models); "
                            "the gateway also takes a directory holding model.json")
    models_dir: str | None = Field(None, description="model cache directory")
    backend: str = Field("embedded", description="inference backend (embedded | triton | "
                         "tfserving)")
    triton_url: str = Field("http://127.0.0.1:8000", description="Triton server for --backend "
                            "triton: http://host:port or grpc://host:port")
    tfserving_url: str = Field("http://127.0.0.1:8501", description="TF Serving for --backend "
                               "tfserving: http://host:port (REST) or grpc://host:port")
    preprocessor: str = Field("opencv", description="opencv | pil | simplejpeg | dali")
    intra_op_threads: int = Field(1, description="ONNX Runtime intra-op threads per session")
    max_batch: int = Field(1, description="detector micro-batch size (1 = no batching); also "
                           "the worker's crop batch")
    max_delay_ms: float = Field(0.0, description="max wait for a batch to fill")
    worker_batch: int | None = Field(None, description="max crops per classifier call "
                                     "(default: the larger of --max-batch and the crops of one "
                                     f"image, --k, {DEFAULT_K} for a worker process)")
    spans_dir: str | None = Field(None, description="write span parquet parts here (a worker "
                                  "process: instead of sending its spans in the result headers)")
    log_level: LogLevel = Field("info", description="log level")
    calibration_crop_sleep_ms: float = Field(
        0.0, description="TEST/CALIBRATION KNOB: the classifier worker sleeps this long per crop "
        "(inside its classify-normalize span), for known-answer checks of the backlog; 0 in any "
        "real measurement")

    @property
    def classifier_batch(self) -> int:
        """Crops per classifier call: ``worker_batch``, else one image's crops in one call."""
        k = getattr(self, "k", DEFAULT_K)   # a worker process does not know the gateway's k
        return self.worker_batch if self.worker_batch is not None else max(self.max_batch, k)

    @property
    def backend_options(self) -> dict:
        """The backend constructor's server URL for ``make_backend(self.backend, info, **...)``."""
        url = {"triton": self.triton_url, "tfserving": self.tfserving_url}.get(self.backend)
        return {"url": url} if url else {}


class GatewaySettings(ClassifierOptions):
    """``python -m pipelines.gateway``."""

    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, description="port (0 picks a free port)")
    detector: str = Field("ssd_mobilenetv2", description="detector model name (pipelines.models) "
                          "or a directory holding model.json")
    reduced: Literal["auto", "off"] = Field("auto", description="DCT-reduced JPEG decode when "
                                            "the image is >= 2x the detector input")
    k: int = Field(DEFAULT_K, description="crops classified per image (fan-out)")
    score_threshold: float = Field(0.3, description="detections below this score are dropped")
    iou_threshold: float = Field(0.5, description="non-maximum suppression IoU threshold")
    workers: int = Field(max(1, min(CORES - 1, 8)), description="in-process classifier worker "
                         "threads, one session each (0: external workers only); default: one "
                         "per core left after the detector's session (cores - 1, at least 1, at "
                         "most 8), so the model instances do not oversubscribe the cores")
    threads: int = Field(min(2 * CORES, 16), description="request threads (decode, detect, "
                         "publish the crops); 2 x the cores, at most 16")
    max_queued: int | None = Field(None, description="most /v1/infer requests admitted but not "
                                   "answered; beyond it 503 overloaded (Retry-After) before the "
                                   "body is read (default: 2 x --threads, so a closed-loop "
                                   "sweep up to 2 x threads users is never turned away; fewer "
                                   "cuts the admitted latency, see README)")
    max_queue_ms: float = Field(0.0, description="queue-time budget: an admitted request that "
                                "waited longer for a request thread gets 503 overloaded (0: none)")
    max_upload_mb: float = Field(32.0, description="largest upload accepted (MiB)")
    max_pixels: int = Field(60_000_000, description="largest image accepted (width x height)")
    result_timeout_s: float = Field(30.0, description="wait this long for the crops' classes, "
                                    "then answer 504")
    publish_timeout_s: float = Field(1.0, description="wait this long for room in the broker, "
                                     "then answer 503")
    release_memory: bool = Field(True, description="when the last request is answered, hand "
                                 "freed heap back to the OS (glibc malloc_trim)")
    spans: bool = Field(True, description="record spans to --spans-dir (none without it; "
                        "--no-spans: span-overhead benchmark)")
    access_log: bool = Field(False, description="uvicorn access log")

    @property
    def admission_limit(self) -> int:
        return self.max_queued if self.max_queued is not None else 2 * max(1, self.threads)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class WorkerSettings(ClassifierOptions):
    """``python -m pipelines.worker``: the gateway's classifier options plus the consumer's own."""

    flag_aliases: ClassVar[dict[str, tuple[str, ...]]] = {"worker_batch": ("--batch",)}
    group: str = Field("classifiers", description="consumer group")
    name: str | None = Field(None, description="consumer name (default: worker-HOST-PID)")


def worker_argv(gateway: GatewaySettings) -> list[str]:
    """The gateway's classifier options as ``pipelines.worker`` flags (not the broker, spans and
    logging: whoever starts the workers sets those)."""
    shared = set(WorkerSettings.model_fields) & set(GatewaySettings.model_fields)
    unused_urls = {"triton_url", "tfserving_url"} - {f"{gateway.backend}_url"}
    argv = gateway.to_argv(shared - {"broker", "spans_dir", "log_level"} - unused_urls)
    if gateway.worker_batch is None:   # one image's crops per call: the worker needs the gateway's k
        argv += ["--worker-batch", str(gateway.classifier_batch)]
    return argv


class ModelsSettings(Options):
    """The one-shot model builder (``python -m deploy.services build-models``): which Triton
    repository flavour it writes, for which server image. Its cache is ``OVERHEAD_MODELS_DIR``."""

    triton_flavour: Literal["onnxruntime", "python"] = Field(
        "onnxruntime", description="Triton repository flavour: onnxruntime (NGC's image) or "
        "python (ONNX Runtime in the Python backend: the local stand-in image)")
    triton_instance_kind: Literal["KIND_CPU", "KIND_GPU"] = Field(
        "KIND_CPU", description="Triton instance_group kind (KIND_GPU: the GPU overlay)")


class LoadSettings(Options):
    """Load options shared by the sweep (``--NAME``) and the Locust file (``--overhead-NAME``)."""

    sizes: str = Field("", description="size classes to send, e.g. 0.1MP,1MP,8MP (default: all "
                       "in the manifest)")
    manifest: str | None = Field(None, description="corpus manifest JSON (sweep: instead of "
                                 "building the corpus; Locust: default RUN_DIR/corpus.json)")
    step_seconds: float = Field(20.0, description="seconds per step")
    warmup_seconds: float = Field(5.0, description="first seconds of each step excluded from "
                                  "measurement")
    arrivals: Arrivals | None = Field(None, description="open loop: arrival process (needs "
                                      "rates); default closed loop")
    rates: str = Field("", description="open loop: target requests/s per step, e.g. 2,4,8")
    max_in_flight: int = Field(1000, description="open loop: most requests in flight at once "
                               "(the scheduler waits beyond)")
    seed: int = Field(0, description="open loop: seed of the arrival process")
    stability_window: float = Field(5.0, description="seconds per stability window (a step is "
                                    "stable when its last 3 windows agree within 10% in "
                                    "throughput and p50)")
    stability_max_seconds: float = Field(0.0, description="extend an unstable step up to this "
                                         "many seconds (0: never)")
    min_requests: int = Field(100, description="successful requests a step needs for the run "
                              "to be valid")
    drain_seconds: float = Field(10.0, description="when the load ends, wait this long for the "
                                 "answers of requests in flight; those still unanswered are "
                                 "recorded as incomplete (status 0)")
    slo_ms: float | None = Field(None, description="goodput: successful requests per second "
                                 "answered within this end-to-end latency (default: every "
                                 "success); recorded in config.json for the report")


class CeilingSettings(Options):
    """The sweep's inference-only ceiling phase (``loadtest/ceiling.py``): the gateway's models
    alone, on pre-decoded tensors, before the steps."""

    ceiling_seconds: float = Field(2.0, description="seconds measured per ceiling measurement "
                                   "(detector alone, classifier alone, the mix per size class)")
    ceiling_warmup_seconds: float = Field(0.5, description="warm-up before each ceiling "
                                          "measurement (not counted)")
    no_ceiling: bool = Field(False, description="skip the inference-only ceiling phase (the "
                             "report then says the ceiling was not measured)")


class LocustSettings(LoadSettings):
    """``locust -f loadtest/locustfile.py``: the shared load options plus the Locust file's own."""

    run_dir: str = Field("", description="run directory: requests.parquet, steps.parquet, "
                         "locust/final_stats.json")
    steps: str = Field("", description='concurrency steps, "1,2,4,8" or "1:20,2:30" '
                       "(users[:seconds]); web UI without it: the UI's user count applies")
    spans_dir: str = Field("", description="web UI runs: the gateway's --spans-dir; its spans of "
                           "this run's requests are merged into RUN_DIR/spans.parquet")


SETTINGS_CLASSES = (GatewaySettings, WorkerSettings, ModelsSettings, LoadSettings, LocustSettings,
                    CeilingSettings)


def env_names() -> set[str]:
    """Every ``OVERHEAD_*`` name the tree reads."""
    return {c.env_name(n) for c in SETTINGS_CLASSES for n in c.model_fields}
