"""Generate what ``tensorflow_model_server`` reads: one versioned SavedModel directory per model,
``models.config`` (a ``ModelServerConfig`` in text format) and ``batching_parameters.txt``
(``BatchingParameters``), from one ``TFServingSettings``.

    python -m deploy.tfserving.config --out DIR --models ssd_mobilenetv2,mobilenetv2 \\
        [--version 1 --max-batch 8 --batch-timeout-us 100 --num-batch-threads 2 \\
         --max-enqueued-batches 100 --allowed-batch-sizes 1,2,4,8 --base-path /models]

Layout (``--base-path`` is where DIR is mounted inside the server's container)::

    DIR/models.config
    DIR/batching_parameters.txt
    DIR/<model>/<version>/saved_model.pb, variables/     (hard links or copies)

Server command line (Docker image ``tensorflow/serving``)::

    tensorflow_model_server --port=8500 --rest_api_port=8501 \\
        --model_config_file=/models/models.config \\
        --enable_batching --batching_parameters_file=/models/batching_parameters.txt
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

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        sizes = sorted(int(s) for s in self.allowed_batch_sizes)
        if sizes and sizes[-1] != self.max_batch:
            # TF Serving refuses a config whose last allowed size is not max_batch_size
            raise ValueError(f"allowed_batch_sizes {sizes} must end with max_batch {self.max_batch}")
        self.allowed_batch_sizes = sizes


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
    formats=("onnx", "savedmodel"))``) or ``(name, savedmodel_dir)``. Returns the paths written."""
    settings = settings or TFServingSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for m in models:
        name, sm = (m if isinstance(m, tuple) else (m.name, m.savedmodel_path))
        if sm is None or not (Path(sm) / "saved_model.pb").exists():
            raise FileNotFoundError(f"model {name!r} has no SavedModel ({sm}); build it with "
                                    f"formats=('onnx', 'savedmodel') (overhead models build --savedmodel)")
        _link_tree(Path(sm), out / name / str(version))
        names.append((name, version))
    cfg = out / "models.config"
    cfg.write_text(models_config(names, base_path or str(out.resolve())))
    bp = out / "batching_parameters.txt"
    bp.write_text(batching_parameters(settings))
    return {"models_config": cfg, "batching_parameters": bp,
            "models": {n: out / n / str(v) for n, v in names}, "settings": asdict(settings)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.tfserving.config", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="ssd_mobilenetv2,mobilenetv2",
                   help="model names (built with their SavedModel if missing)")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--base-path", default=None, help="DIR as mounted in the server (default: DIR)")
    d = TFServingSettings()
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--batch-timeout-us", type=int, default=d.batch_timeout_us)
    p.add_argument("--num-batch-threads", type=int, default=d.num_batch_threads)
    p.add_argument("--max-enqueued-batches", type=int, default=d.max_enqueued_batches)
    p.add_argument("--allowed-batch-sizes", default="", help="e.g. 1,2,4,8 (must end with --max-batch)")
    a = p.parse_args(argv)
    from pipelines.models import ensure_model

    s = TFServingSettings(a.max_batch, a.batch_timeout_us, a.num_batch_threads, a.max_enqueued_batches,
                          [int(x) for x in a.allowed_batch_sizes.split(",") if x.strip()])
    infos = [ensure_model(n.strip(), models_dir=a.models_dir, formats=("onnx", "savedmodel"))
             for n in a.models.split(",") if n.strip()]
    res = write_config(a.out, infos, s, version=a.version, base_path=a.base_path)
    for k in ("models_config", "batching_parameters"):
        print(res[k])
    for n, path in res["models"].items():
        print(f"{n}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
