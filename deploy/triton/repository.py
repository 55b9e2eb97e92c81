"""Generate a Triton model repository from Overhead's ONNX models.

One description (``TritonModelSpec``: tensors, max batch, dynamic-batching delay, instances,
threads) gives ``config.pbtxt`` in two flavours:

* ``onnxruntime``: ``platform: "onnxruntime_onnx"`` + ``1/model.onnx`` (the NGC container);
* ``python``: ``backend: "python"`` + ``1/model.py`` running ONNX Runtime (+ ``1/model.onnx``);
  this is what the local server from the ``nvidia-pytriton`` wheel can run.

    python -m deploy.triton.repository --out DIR --models ssd_mobilenetv2,mobilenetv2 \\
        [--max-batch 8 --queue-delay-us 100 --instances 1 --flavour python|onnxruntime]

``--models`` also takes ``name=path/to/model.onnx`` for any single-input ONNX model.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deploy.triton.model_py import MODEL_PY

FLAVOURS = ("python", "onnxruntime")

# ONNX Runtime type string -> Triton config data type
_TRITON_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16",
                 "tensor(double)": "TYPE_FP64", "tensor(uint8)": "TYPE_UINT8",
                 "tensor(int8)": "TYPE_INT8", "tensor(int32)": "TYPE_INT32",
                 "tensor(int64)": "TYPE_INT64", "tensor(bool)": "TYPE_BOOL"}


@dataclass
class TensorSpec:
    name: str
    data_type: str            # Triton type, e.g. TYPE_FP32
    dims: list[int]           # without the batch dim; -1 = variable


@dataclass
class TritonModelSpec:
    name: str
    onnx_path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int = 8
    queue_delay_us: int = 100
    instances: int = 1
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    preferred_batch_sizes: list[int] = field(default_factory=list)
    instance_kind: str = "KIND_CPU"   # KIND_GPU: the GPU overlay (NGC image + onnxruntime flavour)


def spec_from_onnx(name: str, onnx_path: str | os.PathLike, **opts) -> TritonModelSpec:
    """Read tensor names, types and shapes from the ONNX file (batch dim = first dim, dropped)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])

    def tensors(args) -> list[TensorSpec]:
        out = []
        for a in args:
            if a.type not in _TRITON_TYPES:
                raise ValueError(f"{onnx_path}: tensor {a.name} has unsupported type {a.type}")
            dims = [d if isinstance(d, int) and d > 0 else -1 for d in a.shape[1:]]
            out.append(TensorSpec(a.name, _TRITON_TYPES[a.type], dims))
        return out

    ins = sess.get_inputs()
    if len(ins) != 1:
        raise ValueError(f"{onnx_path}: expected one input, got {[i.name for i in ins]}")
    batch_dim = ins[0].shape[0] if ins[0].shape else None
    if isinstance(batch_dim, int) and batch_dim > 0:
        raise ValueError(f"{onnx_path}: fixed batch dim {batch_dim}; Triton batching needs a "
                         f"dynamic first dim")
    return TritonModelSpec(name, Path(onnx_path), tensors(ins), tensors(sess.get_outputs()), **opts)


def spec_from_info(info, **opts) -> TritonModelSpec:
    """From a ``pipelines.models.ModelInfo`` (or anything with ``name`` and ``onnx_path``)."""
    return spec_from_onnx(info.name, info.onnx_path, **opts)


def _tensor_block(kind: str, tensors: list[TensorSpec]) -> str:
    items = []
    for t in tensors:
        dims = ", ".join(str(d) for d in t.dims) if t.dims else "1"
        extra = "\n    reshape: { shape: [ ] }" if not t.dims else ""
        items.append(f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n'
                     f'    dims: [ {dims} ]{extra}\n  }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def config_pbtxt(spec: TritonModelSpec, flavour: str = "python") -> str:
    """The ``config.pbtxt`` text for one model."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    lines = [f'name: "{spec.name}"']
    if flavour == "python":
        lines.append('backend: "python"')
    else:
        lines.append('platform: "onnxruntime_onnx"')
    lines.append(f"max_batch_size: {int(spec.max_batch_size)}")
    text = "\n".join(lines) + "\n"
    text += _tensor_block("input", spec.inputs) + _tensor_block("output", spec.outputs)
    if spec.max_batch_size > 0:
        pref = ""
        if spec.preferred_batch_sizes:
            pref = f"\n  preferred_batch_size: [ {', '.join(map(str, spec.preferred_batch_sizes))} ]"
        text += (f"dynamic_batching {{{pref}\n"
                 f"  max_queue_delay_microseconds: {int(spec.queue_delay_us)}\n}}\n")
    if spec.instance_kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"instance_kind must be KIND_CPU or KIND_GPU, got {spec.instance_kind!r}")
    text += (f"instance_group [\n  {{\n    count: {int(spec.instances)}\n"
             f"    kind: {spec.instance_kind}\n  }}\n]\n")
    if flavour == "python":
        params = {"intra_op_threads": spec.intra_op_threads,
                  "inter_op_threads": spec.inter_op_threads}
    else:   # the onnxruntime backend's own parameter names
        params = {"intra_op_thread_count": spec.intra_op_threads,
                  "inter_op_thread_count": spec.inter_op_threads}
    for k, v in params.items():
        text += f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n'
    return text


def _place_onnx(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)           # same file system: no copy
    except OSError:
        shutil.copy2(src, dst)


def write_model(out: str | os.PathLike, spec: TritonModelSpec, flavour: str = "python") -> Path:
    """``<out>/<name>/config.pbtxt`` and ``<out>/<name>/1/model.onnx`` (+ ``model.py``)."""
    model_dir = Path(out) / spec.name
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(spec, flavour))
    _place_onnx(Path(spec.onnx_path), version / "model.onnx")
    py = version / "model.py"
    if flavour == "python":
        py.write_text(MODEL_PY)
    elif py.exists():
        py.unlink()
    return model_dir


def write_repository(out: str | os.PathLike, models, flavour: str = "python", max_batch: int = 8,
                     queue_delay_us: int = 100, instances: int = 1, intra_op_threads: int = 1,
                     instance_kind: str = "KIND_CPU") -> list[Path]:
    """``models``: ``TritonModelSpec`` objects, ``ModelInfo``-like objects or ``(name, onnx_path)``."""
    Path(out).mkdir(parents=True, exist_ok=True)
    opts = dict(max_batch_size=max_batch, queue_delay_us=queue_delay_us, instances=instances,
                intra_op_threads=intra_op_threads, instance_kind=instance_kind)
    dirs = []
    for m in models:
        if isinstance(m, TritonModelSpec):
            spec = m
        elif isinstance(m, tuple):
            spec = spec_from_onnx(m[0], m[1], **opts)
        else:
            spec = spec_from_info(m, **opts)
        dirs.append(write_model(out, spec, flavour))
    return dirs


def _resolve(entry: str, models_dir: str | None):
    if "=" in entry:
        name, path = entry.split("=", 1)
        return (name.strip(), Path(path.strip()))
    from pipelines.models import ensure_model
    return ensure_model(entry.strip(), models_dir=models_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.triton.repository",
                                description="Write a Triton model repository for Overhead models.")
    p.add_argument("--out", required=True, help="repository directory (created)")
    p.add_argument("--models", default="ssd_mobilenetv2,mobilenetv2",
                   help="comma-separated model names (built/cached by pipelines.models) or "
                        "name=path.onnx")
    p.add_argument("--models-dir", default=None, help="model cache directory")
    p.add_argument("--flavour", choices=FLAVOURS, default="python",
                   help="python: ORT in the Python backend (local server); onnxruntime: NGC container")
    p.add_argument("--max-batch", type=int, default=8, help="max_batch_size")
    p.add_argument("--queue-delay-us", type=int, default=100,
                   help="dynamic_batching max_queue_delay_microseconds")
    p.add_argument("--instances", type=int, default=1, help="instance_group count (KIND_CPU)")
    p.add_argument("--intra-op-threads", type=int, default=1, help="ORT threads per instance")
    p.add_argument("--instance-kind", choices=("KIND_CPU", "KIND_GPU"), default="KIND_CPU",
                   help="instance_group kind (KIND_GPU: the onnxruntime backend runs on the GPU)")
    a = p.parse_args(argv)
    models = [_resolve(m, a.models_dir) for m in a.models.split(",") if m.strip()]
    dirs = write_repository(a.out, models, a.flavour, a.max_batch, a.queue_delay_us, a.instances,
                            a.intra_op_threads, a.instance_kind)
    for d in dirs:
        print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
