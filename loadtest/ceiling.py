"""The inference-only ceiling of the pipeline a sweep drives (written to RUN_DIR/ceiling.json).

Before the steps, with the gateway up and idle, this process loads the gateway's own models (the
paths its ``GET /v1/config`` reports) on the gateway's backend with its settings: ONNX Runtime
sessions with the same intra/inter-op threads for ``embedded``, or our own client to the same
server for ``triton``/``tfserving``; the detector with the same micro-batch (``--max-batch``,
``--max-delay-ms``) behind one instance as in the gateway; one classifier instance per classifier
worker (``--workers``, or the sweep's ``--worker-processes``) running batches of up to
``--worker-batch`` crops. The inputs are pre-decoded and pre-resized: the corpus images of each
size class (up to 16), decoded, resized and normalised once; the detector is run on each once and
its crops (same thresholds and k) resized for the classifier, so k per size class is the real one.

Three closed-loop measurements (``loadtest/ceiling_load.py``), each ``--ceiling-seconds`` after
``--ceiling-warmup-seconds``: the detector alone (req/s), the classifier alone (crops/s), and per
size class the mix (one detection + that image's crops, req/s). Saturating concurrency: 2 x
max-batch detector callers, at least 4 (enough to keep the instance busy, fill its batches and
keep crops queued for the classifiers) and every classifier instance busy. Skipped (recorded as such) with ``--no-ceiling``, or when the gateway
reports no models (a stand-in), or when its model files are not on this machine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from brokers.message import Message, decode_message, encode_message
from loadtest import ceiling_load
from overhead.contract.ceiling import CeilingRecord, MixCeiling, StageCeiling

IMAGES_PER_CLASS = 16   # the default corpus has 6 per class: all of them


class CeilingSkipped(Exception):
    """The ceiling cannot be measured for this gateway (the reason is the message)."""


@dataclass(frozen=True)
class CeilingSpec:
    """What the pipeline runs, from the gateway's ``/v1/config`` and the sweep's worker count."""
    settings: object                 # GatewaySettings (constructed without validation)
    detector: object                 # ModelInfo-like: name, onnx_path, input_hw, normalization...
    classifier: object
    classifier_instances: int

    @property
    def describe(self) -> dict:
        s = self.settings
        return {"backend": s.backend, **s.backend_options, "intra_op_threads": s.intra_op_threads,
                "inter_op_threads": 1, "max_batch": s.max_batch, "max_delay_ms": s.max_delay_ms,
                "worker_batch": s.classifier_batch, "detector_instances": 1,
                "classifier_instances": self.classifier_instances, "k": s.k,
                "detector": self.detector.name, "classifier": self.classifier.name,
                "preprocessor": s.preprocessor, "reduced": s.reduced,
                "detector_callers": self.detector_callers}

    @property
    def detector_callers(self) -> int:
        return max(4, 2 * max(1, self.settings.max_batch))


def _model_info(d: dict):
    """The gateway's model: its model.json next to the ONNX file, else what /v1/config says."""
    path = Path(d.get("onnx_path") or "")
    if not path.is_file():
        raise CeilingSkipped(f"model file {path} of {d.get('name')!r} is not on this machine")
    if (path.parent / "model.json").exists():
        from pipelines.models import ModelInfo

        return ModelInfo.load(path.parent)
    from pipelines.inference import OrtSession

    return SimpleNamespace(name=d.get("name", path.stem), onnx_path=str(path),
                           input_hw=tuple(d["input_hw"]), normalization=d["normalization"],
                           output_names=OrtSession(path).output_names)


def spec_from_config(gateway_config: dict, worker_processes: int = 0) -> CeilingSpec:
    from overhead.config import GatewaySettings

    models = (gateway_config or {}).get("models") or {}
    if "detector" not in models or "classifier" not in models:
        raise CeilingSkipped("the gateway reported no models in GET /v1/config")
    raw = gateway_config.get("settings") or {}
    fields = GatewaySettings.model_fields
    settings = GatewaySettings.model_construct(**{k: v for k, v in raw.items() if k in fields})
    instances = settings.workers if settings.workers > 0 else worker_processes
    if instances < 1:
        raise CeilingSkipped("the gateway runs no classifier workers itself (--workers 0) and this "
                             "sweep started no worker processes: the classifier instance count "
                             "is unknown")
    return CeilingSpec(settings, _model_info(models["detector"]), _model_info(models["classifier"]),
                       instances)


# --- inputs ------------------------------------------------------------------------------------

def _outputs(info) -> tuple[str, str]:
    outs = list(info.output_names)
    return ("boxes" if "boxes" in outs else outs[0]), ("scores" if "scores" in outs else outs[1])


class _CpuClock:
    """Process CPU per component (``process_time``: counts OpenCV's own threads too)."""

    def __init__(self):
        self.ns: dict[str, int] = {}

    def __call__(self, component: str, fn, *args):
        t0 = time.process_time_ns()
        out = fn(*args)
        self.ns[component] = self.ns.get(component, 0) + time.process_time_ns() - t0
        return out


def _serialize_round_trip(crop: np.ndarray) -> None:
    """What a crop costs on the wire: the gateway's tobytes + encode, the worker's decode."""
    m = decode_message(encode_message(Message("ceiling", "crop", 0, 1, crop.shape, "uint8",
                                              0, payload=crop.tobytes())))
    np.frombuffer(m.payload, np.uint8).reshape(m.shape)


def prepare_items(spec: CeilingSpec, detector, corpus: list[dict], sizes: list[str]):
    """Per size class: ``[(detector input, [classifier inputs of its crops]), ...]`` from up to
    ``IMAGES_PER_CLASS`` corpus images, decoded and resized once (the detector run once on each
    for its crops, with the gateway's thresholds and k), and the CPU ms per request of each data
    handling component on the way (decode, resize, normalize, postprocess, serialize: the same
    calls the pipeline makes, measured alone after one unmeasured warm-up image, on each image's
    second pass)."""
    from pipelines.postprocess import postprocess
    from pipelines.preprocess import get_preprocessor

    s = spec.settings
    pre = get_preprocessor(s.preprocessor, reduced=s.reduced)
    det_hw, cls_hw = tuple(spec.detector.input_hw), tuple(spec.classifier.input_hw)
    det_norm, cls_norm = spec.detector.normalization, spec.classifier.normalization
    boxes, scores = _outputs(spec.detector)

    def one(entry: dict, clock: _CpuClock):
        img, info = clock("decode", pre.decode, Path(entry["path"]).read_bytes(), det_hw)
        x = clock("normalize", pre.normalize, clock("resize", pre.resize, img, det_hw), det_norm)
        r = detector.infer(x)
        src_hw = tuple(info.get("src_hw") or img.shape[:2])
        pp = clock("postprocess", postprocess, r.outputs[boxes], r.outputs[scores], img, src_hw,
                   s.score_threshold, s.iou_threshold, s.k)
        crops = []
        for c in pp.crops:
            clock("serialize", _serialize_round_trip, c)
            crops.append(clock("normalize", pre.normalize, clock("resize", pre.resize, c, cls_hw),
                               cls_norm))
        return x, crops

    def twice(entry: dict, clock: _CpuClock):
        # the first pass unmeasured and let go: the measured pass reuses its freed buffers like
        # a gateway in steady state does (fresh pages cost page faults on every first touch)
        one(entry, _CpuClock())
        return one(entry, clock)

    out: dict[str, list] = {}
    cpu_ms: dict[str, dict[str, float]] = {}
    chosen = {size: [e for e in corpus if e["size_class"] == size][:IMAGES_PER_CLASS]
              for size in sizes}
    for size, entries in chosen.items():
        if not entries:
            raise CeilingSkipped(f"no corpus images of size class {size}")
        one(entries[0], _CpuClock())          # warm-up: first calls pay for lazy set-up
        clock = _CpuClock()
        out[size] = [twice(e, clock) for e in entries]
        cpu_ms[size] = {c: ns / len(entries) / 1e6 for c, ns in clock.ns.items()}
    return out, cpu_ms


# --- the measurement ---------------------------------------------------------------------------

def _backends(spec: CeilingSpec):
    from pipelines.inference import make_backend

    s = spec.settings
    det = make_backend(s.backend, spec.detector, intra_op_threads=s.intra_op_threads,
                       max_batch=s.max_batch, max_delay_ms=s.max_delay_ms, **s.backend_options)
    cls = [make_backend(s.backend, spec.classifier, intra_op_threads=s.intra_op_threads,
                        max_batch=1, **s.backend_options)
           for _ in range(spec.classifier_instances)]
    return det, cls


def measure(spec: CeilingSpec, corpus: list[dict], sizes: list[str], seconds: float,
            warmup_s: float, say=lambda msg: None, server_pid: int | None = None) -> CeilingRecord:
    """``server_pid``: an inference server's process; its CPU (with its children's) counts as
    the models' (``cpu_s``) besides this process's."""
    started = time.time_ns()
    s = spec.settings
    det, classifiers = _backends(spec)
    try:
        items, prep_cpu = prepare_items(spec, det, corpus, sizes)
        every_crop = [c for its in items.values() for _, cs in its for c in cs]
        if not every_crop:   # no detections anywhere: the classifier still gets measured
            every_crop = [np.zeros((*spec.classifier.input_hw, 3), np.float32)]
        det_inputs = [x for its in items.values() for x, _ in its]
        callers, batch = spec.detector_callers, max(1, s.classifier_batch)
        win = dict(warmup_s=warmup_s, seconds=seconds, cpu_pids=[server_pid] if server_pid else [])
        r = ceiling_load.detect_alone(det, det_inputs, callers, **win)
        stages = [StageCeiling("detect", spec.detector.name, "req/s", r.rate, r.units, r.calls,
                               r.seconds, callers, 1, max(1, s.max_batch), r.cpu_s)]
        say(f"detector alone: {r.rate:.1f} req/s ({callers} callers, {r.seconds:.1f} s)")
        r = ceiling_load.classify_alone(classifiers, every_crop, batch, **win)
        stages.append(StageCeiling("classify", spec.classifier.name, "crops/s", r.rate, r.units,
                                   r.calls, r.seconds, len(classifiers), len(classifiers), batch,
                                   r.cpu_s))
        say(f"classifier alone: {r.rate:.1f} crops/s ({len(classifiers)} instance(s), "
            f"batch {batch})")
        mixes = []
        for size, its in items.items():
            k = float(np.mean([len(cs) for _, cs in its]))
            r = ceiling_load.mix(det, classifiers, its, batch, callers, **win)
            mixes.append(MixCeiling(size, k, r.rate, r.units, r.seconds, len(its), r.cpu_s,
                                    prep_cpu[size]))
            say(f"mix {size} (k={k:.2f}): {r.rate:.1f} req/s")
    finally:
        for b in (det, *classifiers):
            b.close()
    return CeilingRecord("measured", None, s.backend,
                         {**spec.describe, "cpu_of": "this process" + (f" + server pid {server_pid}"
                                                                      if server_pid else "")},
                         warmup_s, seconds,
                         tuple(stages), tuple(mixes), started, time.time_ns())


def measure_for_sweep(gateway_config: dict, corpus: list[dict], sizes: list[str],
                      seconds: float, warmup_s: float, worker_processes: int = 0,
                      say=lambda msg: None, server_pid: int | None = None) -> CeilingRecord:
    """The sweep's phase: a record in every case (skipped or failed ones say why)."""
    try:
        spec = spec_from_config(gateway_config, worker_processes)
        if spec.settings.backend != "embedded" and server_pid is None:
            say("the inference server is not this sweep's: its CPU is not in the ceiling's CPU")
        return measure(spec, corpus, sizes, seconds, warmup_s, say, server_pid)
    except CeilingSkipped as exc:
        say(f"not measured: {exc}")
        return CeilingRecord("skipped", str(exc))
    except Exception as exc:  # noqa: BLE001 - the sweep goes on; the report says it failed
        say(f"FAILED: {type(exc).__name__}: {exc}")
        return CeilingRecord("failed", f"{type(exc).__name__}: {exc}")


def sweep_phase(sweep) -> dict:
    """``loadtest.sweep``'s ceiling phase (``--ceiling-seconds``, ``--ceiling-warmup-seconds``,
    ``--no-ceiling``), the gateway up and idle: measure, write RUN_DIR/ceiling.json, return its
    status for config.json. A server the sweep started (``--server triton``) counts in the CPU."""
    import sys

    from overhead.contract.ceiling import write_ceiling

    def say(msg: str) -> None:
        print(f"sweep: ceiling: {msg}", file=sys.stderr, flush=True)

    args, config = sweep.args, sweep.config
    server = sweep.stack.server if sweep.stack is not None else None
    if args.no_ceiling:
        rec = CeilingRecord("skipped", "--no-ceiling")
    else:
        say(f"measuring the inference-only ceiling ({args.ceiling_seconds:g} s per measurement)")
        rec = measure_for_sweep(config.get("gateway") or {}, sweep.corpus, config["load"]["sizes"],
                                args.ceiling_seconds, args.ceiling_warmup_seconds,
                                args.worker_processes, say, server.pid if server else None)
    write_ceiling(sweep.run.path, rec)
    return {"status": rec.status, "reason": rec.reason}
