"""Bring a user's ONNX file into the cache as-is, describing it from what ONNX Runtime reports."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from .catalog import BUILDER_VERSION, DETECTOR_OUTPUTS, SPECS
from .info import write_meta

ONNX_FILE = "model.onnx"
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
           "tensor(int8)": "int8", "tensor(double)": "float64", "tensor(int32)": "int32",
           "tensor(int64)": "int64"}


def _dim(d) -> int | None:
    return int(d) if isinstance(d, (int, np.integer)) and d > 0 else None


def inspect_onnx(path: str | os.PathLike) -> dict:
    """Input name/shape/dtype/layout and output names/shapes of an ONNX model (via ORT)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"{path}: expected one input, got {[i.name for i in inputs]}")
    i = inputs[0]
    shape = list(i.shape)
    if len(shape) != 4:
        raise ValueError(f"{path}: expected a 4-D image input, got shape {shape}")
    if _dim(shape[3]) == 3:
        layout, hw = "NHWC", (_dim(shape[1]), _dim(shape[2]))
    elif _dim(shape[1]) == 3:
        layout, hw = "NCHW", (_dim(shape[2]), _dim(shape[3]))
    else:
        raise ValueError(f"{path}: cannot tell the channel axis of input shape {shape}")
    return {
        "input_name": i.name,
        "input_shape": [d if isinstance(d, int) else str(d) for d in shape],
        "input_dtype": _DTYPES.get(i.type, i.type),
        "layout": layout,
        "input_hw": hw,
        "outputs": [{"name": o.name, "shape": [d if isinstance(d, int) else str(d) for d in o.shape]}
                    for o in sess.get_outputs()],
    }


def import_onnx(name: str, onnx_file: str | os.PathLike, directory: str | os.PathLike, *,
                key: str = "", normalization: str | None = None,
                labels: list[str] | None = None) -> dict:
    """Copy ``onnx_file`` into ``directory`` and write its ``model.json``."""
    t0 = time.perf_counter()
    import onnxruntime as ort
    info = inspect_onnx(onnx_file)
    spec = SPECS.get(name)
    hw = info["input_hw"]
    if None in hw:
        if spec is None:
            raise ValueError(f"{onnx_file}: input height/width are dynamic {info['input_shape']}; "
                             f"give the model a known name ({', '.join(SPECS)})")
        hw = spec.input_hw
    out_names = [o["name"] for o in info["outputs"]]
    if spec is not None:
        kind = spec.kind
    else:
        kind = "detector" if set(DETECTOR_OUTPUTS) <= set(out_names) else "classifier"
    if labels is None:
        if kind == "classifier":
            last = info["outputs"][0]["shape"][-1]
            n = last if isinstance(last, int) else (spec.num_classes if spec else 0)
            labels = list(spec.labels) if spec and spec.num_classes == n else [f"class_{i}" for i in range(n)]
        else:
            labels = list(spec.labels) if spec else ["object"]
    normalization = normalization or (spec.normalization if spec else "raw")
    dest = Path(directory)
    shutil.copyfile(onnx_file, dest / ONNX_FILE)
    meta = {
        "name": name,
        "kind": kind,
        "source": "onnx_file",
        "onnx_file": str(Path(onnx_file).resolve()),
        "input_name": info["input_name"],
        "input_hw": list(hw),
        "input_shape": info["input_shape"],
        "layout": info["layout"],
        "input_dtype": info["input_dtype"],
        "normalization": normalization,
        "output_names": out_names,
        "outputs": info["outputs"],
        "num_classes": len(labels),
        "seed": None,
        "key": key,
        "formats": ["onnx"],
        "builder_version": BUILDER_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"onnxruntime": ort.__version__},
        "files": {"onnx": ONNX_FILE},
        "build_seconds": round(time.perf_counter() - t0, 3),
        "labels": list(labels),
    }
    write_meta(dest, meta)
    return meta
