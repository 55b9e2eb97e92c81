"""A catalog classifier rebuilt at another input side, with the product's model builder, cached.

``ensure_sized(name, side)`` returns ``(onnx_path, meta)``; the build runs in a child process
(``python -m analysis.studies.sized_models REQUEST_JSON``, TensorFlow stays out of the caller)
through ``pipelines.models.build``: the same architecture function (``build_custom_cnn`` or the
``keras.applications`` constructor, ``weights=None``, seeded) and the same ONNX export
(``export_onnx``, opset 17, dynamic batch), with the spec's ``input_hw`` replaced. The weights are
seeded but not calibrated on photos (a CNN's cost does not depend on its weights' values; the
product's calibration pass is skipped to keep a rebuild cheap). ``meta`` holds ``build_s`` (the
child's own build + export time), ``child_wall_s`` (including the TensorFlow import, None when
cached), ``params`` and ``onnx_mib``. Cache: ``<models_dir>/sized/<name>-<side>-<key>/``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _key(name: str, side: int, seed: int) -> str:
    from pipelines.models.cache import build_versions, cache_key
    from pipelines.models.catalog import BUILDER_VERSION, get_spec
    spec = get_spec("custom_cnn" if name == SMALL_CNN else name)
    return cache_key({"builder": BUILDER_VERSION, "study": "sized-1", "name": name, "side": side,
                      "seed": seed, "arch": {**spec.arch(), "input_hw": [side, side]},
                      "versions": build_versions()})


def ensure_sized(name: str, side: int, models_dir: str | os.PathLike | None = None, seed: int = 0):
    from pipelines.models import default_models_dir
    from pipelines.models.catalog import get_spec
    if name != SMALL_CNN and get_spec(name).kind != "classifier":
        raise ValueError(f"{name}: only classifiers can be rebuilt at another input size")
    d = Path(models_dir or default_models_dir()) / "sized" / f"{name}-{side}-{_key(name, side, seed)}"
    meta_path = d / "meta.json"
    if meta_path.is_file():
        return d / "model.onnx", {**json.loads(meta_path.read_text()), "child_wall_s": None, "cached": True}
    d.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "analysis.studies.sized_models",
                        json.dumps({"name": name, "side": side, "seed": seed, "dir": str(d)})],
                       env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0 or not meta_path.is_file():
        raise RuntimeError(f"building {name} at {side}px failed:\n{r.stderr[-3000:]}")
    return d / "model.onnx", {**json.loads(meta_path.read_text()), "child_wall_s": wall, "cached": False}


SMALL_CNN = "custom_cnn_small"


def ensure_small_cnn(models_dir=None, seed: int = 0):
    """A second custom CNN (the batching study served two; its second is not described): three
    Conv2D 3x3 (16, 32, 64, relu) + MaxPool 2x2 blocks, Flatten, Dense 64 relu, Dense 5 softmax,
    150x150x3 like ``custom_cnn``; built by the product's builder helpers, then cached as a
    ``ModelInfo`` through ``ensure_model(onnx_file=...)``."""
    from pipelines.models import ensure_model
    from pipelines.models.catalog import FLOWER_LABELS
    onnx, _ = ensure_sized(SMALL_CNN, 150, models_dir, seed)
    return ensure_model(SMALL_CNN, models_dir=models_dir, onnx_file=onnx, normalization="unit",
                        labels=list(FLOWER_LABELS))


def _small_cnn(B, hw):
    layers = B.layers
    inp = B.keras.Input((*hw, 3), name="input")
    x = inp
    for i, ch in enumerate((16, 32, 64)):
        x = layers.Conv2D(ch, 3, activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    return B.keras.Model(inp, layers.Dense(5, activation="softmax", name="probs")(x), name=SMALL_CNN)


def _build(name: str, side: int, seed: int, directory: str) -> None:
    """Child: build and export (imports TensorFlow)."""
    import dataclasses
    t0 = time.perf_counter()
    from pipelines.models import build as B
    from pipelines.models.catalog import INPUT_NAME, get_spec
    t_import = time.perf_counter() - t0
    base = "custom_cnn" if name == SMALL_CNN else name
    spec = dataclasses.replace(get_spec(base), name=name, input_hw=(side, side))
    t1 = time.perf_counter()
    B.keras.utils.set_random_seed(seed)
    if name == SMALL_CNN:
        model = _small_cnn(B, (side, side))
    elif name == "custom_cnn":
        model = B.build_custom_cnn(spec.input_hw, spec.num_classes)
    else:
        app = getattr(B.keras.applications, spec.keras_app)
        inp = B.keras.Input((side, side, 3), name=INPUT_NAME)
        net = app(input_tensor=inp, weights=None, classes=spec.num_classes, classifier_activation="softmax")
        model = B.keras.Model(inp, net.output, name=name)
    out = Path(directory) / "model.onnx"
    tmp = out.with_suffix(".tmp")
    B.export_onnx(model, spec, tmp)
    os.replace(tmp, out)
    meta = {"name": name, "side": side, "seed": seed, "params": int(model.count_params()),
            "tf_import_s": round(t_import, 2), "build_s": round(time.perf_counter() - t1, 2),
            "onnx_mib": out.stat().st_size / 2**20, "calibrated": False}
    (Path(directory) / "meta.json").write_text(json.dumps(meta, indent=2))


if __name__ == "__main__":
    req = json.loads(sys.argv[1])
    _build(req["name"], int(req["side"]), int(req["seed"]), req["dir"])
