"""Generate what ``tensorflow_model_server`` reads: one versioned SavedModel directory per model,
``models.config`` (a ``ModelServerConfig`` in text format) and ``batching_parameters.txt``
(``BatchingParameters``), from one ``TFServingSettings``.

    python -m deploy.tfserving.config --out DIR --models ssd_mobilenetv2,mobilenetv2 \\
        [--version 1 --max-batch 8 --batch-timeout-us 100 --num-batch-threads 2 \\
         --max-enqueued-batches 100 --allowed-batch-sizes 1,2,4,8 --base-path /models]

Layout (``--base-path`` is where DIR is mounted inside the server's container)::

    DIR/models.config
    DIR/batching_parameters.txt
    DIR/server_flags.txt                                  (the server's flags, one a line)
    DIR/<model>/<version>/saved_model.pb, variables/     (hard links or copies)
    DIR/<model>/<version>/assets.extra/tf_serving_warmup_requests   (PredictionLog TFRecord)

Server command line (Docker image ``tensorflow/serving``; ``server_flags``)::

    tensorflow_model_server --port=8500 --rest_api_port=8501 \\
        --model_config_file=/models/models.config \\
        --enable_batching=true --batching_parameters_file=/models/batching_parameters.txt \\
        [--grpc_max_threads=N] [--tensorflow_intra_op_parallelism=N] \\
        [--tensorflow_inter_op_parallelism=N] \\
        --enable_model_warmup=true --num_request_iterations_for_warmup=1

``--grpc-max-threads``/``--intra-op``/``--inter-op`` (0 = the server's default, flag left out),
``--no-batching``, ``--no-warmup``, ``--warmup-batch-sizes``, ``--warmup-iterations`` set them.
Compose and Kubernetes run TF Serving with ``deploy.services.tfserving_settings()``: the models
builder writes its files with them and the compose command is ``server_flags`` of them (checked
by ``deploy.services.check_compose``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class TFServingSettings:
    max_batch: int = 8                    # max_batch_size
    batch_timeout_us: int = 100           # batch_timeout_micros
    num_batch_threads: int = 2            # num_batch_threads (cores)
    max_enqueued_batches: int = 100       # max_enqueued_batches
    allowed_batch_sizes: list[int] = field(default_factory=list)   # [] = any up to max_batch
    pad_variable_length_inputs: bool = False
    # server flags (``server_flags``); 0 = TF Serving's default (its own choice of threads)
    enable_batching: bool = True          # --enable_batching (+ --batching_parameters_file)
    grpc_max_threads: int = 0             # --grpc_max_threads
    intra_op_parallelism: int = 0         # --tensorflow_intra_op_parallelism
    inter_op_parallelism: int = 0         # --tensorflow_inter_op_parallelism
    enable_model_warmup: bool = True      # --enable_model_warmup + assets.extra/tf_serving_warmup_requests
    warmup_batch_sizes: list[int] = field(default_factory=list)   # [] = allowed sizes, else 1 and max
    warmup_iterations: int = 1            # --num_request_iterations_for_warmup

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        for k in ("grpc_max_threads", "intra_op_parallelism", "inter_op_parallelism"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0 (0 = TF Serving's default)")
        if self.warmup_iterations < 1:
            raise ValueError("warmup_iterations must be >= 1")
        sizes = sorted(int(s) for s in self.allowed_batch_sizes)
        if sizes and sizes[-1] != self.max_batch:
            # TF Serving refuses a config whose last allowed size is not max_batch_size
            raise ValueError(f"allowed_batch_sizes {sizes} must end with max_batch {self.max_batch}")
        self.allowed_batch_sizes = sizes
        self.warmup_batch_sizes = sorted({int(b) for b in self.warmup_batch_sizes}) or \
            (sizes or sorted({1, self.max_batch}))
        if self.warmup_batch_sizes[0] < 1:
            raise ValueError("warmup_batch_sizes must be >= 1")


def server_flags(s: TFServingSettings, base_path: str, port: int = 8500, rest_port: int = 8501) -> list[str]:
    """``tensorflow_model_server``'s command line for DIR mounted at ``base_path``."""
    b = base_path.rstrip("/")
    flags = [f"--port={port}", f"--rest_api_port={rest_port}", f"--model_config_file={b}/models.config"]
    if s.enable_batching:
        flags += ["--enable_batching=true", f"--batching_parameters_file={b}/batching_parameters.txt"]
    if s.grpc_max_threads:
        flags.append(f"--grpc_max_threads={s.grpc_max_threads}")
    if s.intra_op_parallelism:
        flags.append(f"--tensorflow_intra_op_parallelism={s.intra_op_parallelism}")
    if s.inter_op_parallelism:
        flags.append(f"--tensorflow_inter_op_parallelism={s.inter_op_parallelism}")
    if s.enable_model_warmup:
        flags += ["--enable_model_warmup=true", f"--num_request_iterations_for_warmup={s.warmup_iterations}"]
    return flags


WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


def write_warmup_requests(version_dir: Path, name: str, input_name: str, input_hw, batch_sizes,
                          seed: int = 0) -> Path:
    """TF Serving's warm-up file: a TFRecord of ``PredictionLog`` (one ``PredictRequest`` per batch
    size, seeded random pixels) that the server replays when it loads the version. Imports
    TensorFlow (its TFRecord writer)."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from pipelines.inference.tfserving import make_tensor_proto
    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(str(path)) as w:
        for b in batch_sizes:
            req = predict_pb2.PredictRequest()
            req.model_spec.name = name
            req.model_spec.signature_name = "serving_default"
            req.inputs[input_name].CopyFrom(make_tensor_proto(
                rng.uniform(0, 1, (int(b), *input_hw, 3)).astype(np.float32)))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
            w.write(log.SerializeToString())
    return path


def batching_parameters(s: TFServingSettings) -> str:
    lines = [f"max_batch_size {{ value: {s.max_batch} }}",
             f"batch_timeout_micros {{ value: {s.batch_timeout_us} }}",
             f"num_batch_threads {{ value: {s.num_batch_threads} }}",
             f"max_enqueued_batches {{ value: {s.max_enqueued_batches} }}"]
    lines += [f"allowed_batch_sizes: {b}" for b in s.allowed_batch_sizes]
    if s.pad_variable_length_inputs:
        lines.append("pad_variable_length_inputs: true")
    return "\n".join(lines) + "\n"


def models_config(models: list[tuple[str, int]], base_path: str) -> str:
    """``models``: (name, version). ``base_path``: DIR as the server sees it."""
    out = ["model_config_list {"]
    for name, version in models:
        out += ["  config {", f'    name: "{name}"', f'    base_path: "{base_path.rstrip("/")}/{name}"',
                '    model_platform: "tensorflow"',
                f"    model_version_policy {{ specific {{ versions: {version} }} }}", "  }"]
    out.append("}")
    return "\n".join(out) + "\n"


def _link_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    for root, _dirs, files in os.walk(src):
        r = Path(root)
        (dst / r.relative_to(src)).mkdir(parents=True, exist_ok=True)
        for f in files:
            target = dst / r.relative_to(src) / f
            try:
                os.link(r / f, target)
            except OSError:
                shutil.copy2(r / f, target)


def write_config(out: str | os.PathLike, models, settings: TFServingSettings | None = None,
                 version: int = 1, base_path: str | None = None) -> dict:
    """``models``: ``ModelInfo`` objects with a SavedModel (``ensure_model(name,
    formats=("onnx", "savedmodel"))``) or ``(name, savedmodel_dir[, input_name, input_hw])``
    (without the input, no warm-up file). Writes models.config, batching_parameters.txt,
    server_flags.txt (one flag a line) and each version's warm-up requests. Returns the paths."""
    settings = settings or TFServingSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, warmups = [], {}
    for m in models:
        t = tuple(m) + (None, None) if isinstance(m, tuple) else (m.name, m.savedmodel_path, m.input_name,
                                                                     m.input_hw)
        name, sm, input_name, hw = t[:4]
        if sm is None or not (Path(sm) / "saved_model.pb").exists():
            raise FileNotFoundError(f"model {name!r} has no SavedModel ({sm}); build it with "
                                    f"formats=('onnx', 'savedmodel') (overhead models build --savedmodel)")
        _link_tree(Path(sm), out / name / str(version))
        names.append((name, version))
        if settings.enable_model_warmup and input_name:
            warmups[name] = write_warmup_requests(out / name / str(version), name, input_name, hw,
                                                  settings.warmup_batch_sizes)
    cfg = out / "models.config"
    cfg.write_text(models_config(names, base_path or str(out.resolve())))
    bp = out / "batching_parameters.txt"
    bp.write_text(batching_parameters(settings))
    flags = server_flags(settings, base_path or str(out.resolve()))
    fl = out / "server_flags.txt"
    fl.write_text("\n".join(flags) + "\n")
    return {"models_config": cfg, "batching_parameters": bp, "server_flags": fl, "flags": flags,
            "warmup_requests": warmups,
            "models": {n: out / n / str(v) for n, v in names}, "settings": asdict(settings)}


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """The ``TFServingSettings`` options of the command line (``settings_from_args`` reads them,
    ``settings_argv`` writes them)."""
    d = TFServingSettings()
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--batch-timeout-us", type=int, default=d.batch_timeout_us)
    p.add_argument("--num-batch-threads", type=int, default=d.num_batch_threads)
    p.add_argument("--max-enqueued-batches", type=int, default=d.max_enqueued_batches)
    p.add_argument("--allowed-batch-sizes", default="", help="e.g. 1,2,4,8 (must end with --max-batch)")
    p.add_argument("--no-batching", action="store_true", help="leave --enable_batching off")
    p.add_argument("--grpc-max-threads", type=int, default=d.grpc_max_threads, help="0 = server default")
    p.add_argument("--intra-op", type=int, default=d.intra_op_parallelism, help="0 = server default")
    p.add_argument("--inter-op", type=int, default=d.inter_op_parallelism, help="0 = server default")
    p.add_argument("--no-warmup", action="store_true", help="no warm-up requests, no --enable_model_warmup")
    p.add_argument("--warmup-batch-sizes", default="", help="default: the allowed sizes, else 1 and max")
    p.add_argument("--warmup-iterations", type=int, default=d.warmup_iterations,
                   help="--num_request_iterations_for_warmup")


def settings_from_args(a: argparse.Namespace) -> TFServingSettings:
    ints = lambda v: [int(x) for x in v.split(",") if x.strip()]  # noqa: E731
    return TFServingSettings(a.max_batch, a.batch_timeout_us, a.num_batch_threads, a.max_enqueued_batches,
                             ints(a.allowed_batch_sizes), enable_batching=not a.no_batching,
                             grpc_max_threads=a.grpc_max_threads, intra_op_parallelism=a.intra_op,
                             inter_op_parallelism=a.inter_op, enable_model_warmup=not a.no_warmup,
                             warmup_batch_sizes=ints(a.warmup_batch_sizes),
                             warmup_iterations=a.warmup_iterations)


def settings_argv(s: TFServingSettings) -> list[str]:
    """``s`` as this command's options (``deploy.services.build_models`` passes the deployment's
    settings to the generator this way; ``settings_from_args`` gives ``s`` back)."""
    if s.pad_variable_length_inputs:
        raise ValueError("pad_variable_length_inputs has no command-line option")
    csv = lambda v: ",".join(map(str, v))  # noqa: E731
    out = [f"--max-batch={s.max_batch}", f"--batch-timeout-us={s.batch_timeout_us}",
           f"--num-batch-threads={s.num_batch_threads}", f"--max-enqueued-batches={s.max_enqueued_batches}",
           f"--allowed-batch-sizes={csv(s.allowed_batch_sizes)}", f"--grpc-max-threads={s.grpc_max_threads}",
           f"--intra-op={s.intra_op_parallelism}", f"--inter-op={s.inter_op_parallelism}",
           f"--warmup-batch-sizes={csv(s.warmup_batch_sizes)}", f"--warmup-iterations={s.warmup_iterations}"]
    return out + (["--no-batching"] if not s.enable_batching else []) + \
        (["--no-warmup"] if not s.enable_model_warmup else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.tfserving.config", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="ssd_mobilenetv2,mobilenetv2",
                   help="model names (built with their SavedModel if missing)")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--base-path", default=None, help="DIR as mounted in the server (default: DIR)")
    add_settings_arguments(p)
    a = p.parse_args(argv)
    from pipelines.models import ensure_model

    s = settings_from_args(a)
    infos = [ensure_model(n.strip(), models_dir=a.models_dir, formats=("onnx", "savedmodel"))
             for n in a.models.split(",") if n.strip()]
    res = write_config(a.out, infos, s, version=a.version, base_path=a.base_path)
    for k in ("models_config", "batching_parameters", "server_flags"):
        print(res[k])
    print("server command line:", " ".join(res["flags"]))
    for n, path in res["models"].items():
        print(f"{n}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
