"""Build one model with Keras, give it seeded non-degenerate weights, export it (imports TensorFlow).

Only the cache's build step imports this module, by default in a child process
(``python -m pipelines.models.build REQUEST_JSON``) so callers never load TensorFlow.
It writes into a directory the cache later renames into place:

    model.onnx                     ONNX, opset 17, one NHWC float32 input, dynamic batch
    keras.weights.h5               the Keras weights (a template for ``weights_file=``)
    savedmodel/<name>/1/           TF Serving layout, signature ``serving_default`` (if asked)
    model.json                     metadata (see ``docs/models.md``)
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402

from . import calibrate, detector  # noqa: E402
from .catalog import (BUILDER_VERSION, INPUT_NAME, ONNX_OPSET, SSD_ALPHA,  # noqa: E402
                      SSD_NUM_ANCHORS, ModelSpec, get_spec)
from .info import write_meta  # noqa: E402
from .normalization import normalize  # noqa: E402
from .photos import PHOTO_NAMES, photo_batch  # noqa: E402

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "keras.weights.h5"

CLASSIFIER_LOGIT_STD = 3.0          # top-1 of 1000 classes lands around 0.05..0.8 on photos
CUSTOM_CNN_LOGIT_STD = 1.5          # 5 classes: top-1 around 0.3..0.8
DETECTOR_SCORE_LOGIT = (-2.5, 1.5)  # mean, std: ~5% of anchors > 0.5, most < 0.2
DETECTOR_BOX_DELTA = (0.0, 1.0)


def _say(msg: str) -> None:
    print(f"[models] {msg}", file=sys.stderr, flush=True)


def versions() -> dict:
    import onnx
    import tf2onnx
    return {"tensorflow": tf.__version__, "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__}


# ---------------------------------------------------------------- architectures

def build_custom_cnn(input_hw=(150, 150), num_classes: int = 5) -> keras.Model:
    inp = keras.Input((*input_hw, 3), name=INPUT_NAME)
    x = inp
    for i, ch in enumerate((32, 64, 128, 128)):
        x = layers.Conv2D(ch, 3, activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    out = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="custom_cnn")


def build_keras_model(name: str) -> keras.Model:
    """The architecture with fresh (seeded, via ``keras.utils.set_random_seed``) initial weights."""
    spec = get_spec(name)
    if name == "custom_cnn":
        return build_custom_cnn(spec.input_hw, spec.num_classes)
    if name == "ssd_mobilenetv2":
        return detector.build_ssd_mobilenetv2(spec.input_hw)
    app = getattr(keras.applications, spec.keras_app)
    inp = keras.Input((*spec.input_hw, 3), name=INPUT_NAME)
    net = app(input_tensor=inp, weights=None, classes=spec.num_classes,
              classifier_activation="softmax")
    # Re-wrap so the model takes one tensor (the app's model takes a list of inputs).
    return keras.Model(inp, net.output, name=name)


def make_weights(model: keras.Model, spec: ModelSpec) -> dict:
    """Calibrate the seeded random weights on real photos (see ``calibrate.py``)."""
    x = normalize(photo_batch(spec.input_hw, flips=True), spec.normalization)
    info = {"photos": list(PHOTO_NAMES), "flips": True,
            "batchnorm_layers": calibrate.recalibrate_batchnorm(model, x)}
    if spec.kind == "classifier":
        head = model.layers[-1]
        std = CUSTOM_CNN_LOGIT_STD if spec.name == "custom_cnn" else CLASSIFIER_LOGIT_STD
        (features,) = calibrate.layer_inputs(model, [head], x)
        info.update(calibrate.scale_dense_head(head, features, std), logit_std=std)
    else:
        boxes, scores = detector.head_layers(model)
        feats = calibrate.layer_inputs(model, boxes, x)      # box and score heads share inputs
        for b, s, f in zip(boxes, scores, feats):
            calibrate.scale_conv_channels(b, f, *DETECTOR_BOX_DELTA)
            calibrate.scale_conv_channels(s, f, *DETECTOR_SCORE_LOGIT)
        info.update(score_logit_mean=DETECTOR_SCORE_LOGIT[0], score_logit_std=DETECTOR_SCORE_LOGIT[1])
    return info


def keras_outputs(model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    out = model(x, training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


# ---------------------------------------------------------------- export

def _rename_io(model_proto, renames: dict[str, str]) -> None:
    g = model_proto.graph
    for node in g.node:
        for i, n in enumerate(node.output):
            if n in renames:
                node.output[i] = renames[n]
        for i, n in enumerate(node.input):
            if n in renames:
                node.input[i] = renames[n]
    for vi in list(g.output) + list(g.value_info):
        if vi.name in renames:
            vi.name = renames[vi.name]
    for vi in list(g.input) + list(g.output):            # dynamic batch dim gets a readable name
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def export_onnx(model: keras.Model, spec: ModelSpec, path: Path) -> None:
    import onnx
    import tf2onnx
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    sig = (tf.TensorSpec((None, *spec.input_hw, 3), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=sig, opset=ONNX_OPSET)
    got = [o.name for o in proto.graph.output]
    keras_names = list(model.output_names)
    if sorted(got) == sorted(keras_names):                  # map by Keras output order
        renames = {k: v for k, v in zip(keras_names, spec.output_names) if k != v}
    else:
        renames = {k: v for k, v in zip(got, spec.output_names) if k != v}
    _rename_io(proto, renames)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(spec.output_names):
        raise RuntimeError(f"{spec.name}: ONNX inputs {inputs} / outputs {outputs}, expected "
                           f"[{INPUT_NAME!r}] / {list(spec.output_names)}")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_savedmodel(model: keras.Model, spec: ModelSpec, path: Path) -> dict:
    """TF Serving layout ``path`` = <base>/<version>; signature ``serving_default`` with input
    ``input`` and outputs named like the ONNX outputs."""
    names = list(spec.output_names)

    def serve(x):
        out = model(x, training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return dict(zip(names, out))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", serve,
        input_signature=[tf.TensorSpec((None, *spec.input_hw, 3), tf.float32, name=INPUT_NAME)])
    archive.write_out(str(path), verbose=False)
    return {"signature": "serving_default", "inputs": [INPUT_NAME], "outputs": names}


def check_onnx(path: Path, model: keras.Model, spec: ModelSpec) -> dict:
    """ONNX vs Keras on real photos, plus how spread the outputs are (recorded in model.json)."""
    import onnxruntime as ort
    x = normalize(photo_batch(spec.input_hw), spec.normalization)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if [i.name for i in sess.get_inputs()] != [INPUT_NAME]:
        raise RuntimeError(f"{spec.name}: ONNX must have exactly one input, got "
                           f"{[i.name for i in sess.get_inputs()]}")
    got = sess.run(list(spec.output_names), {INPUT_NAME: x})
    ref = keras_outputs(model, x)
    out = {"photos": len(x),
           "max_abs_diff": {n: float(np.abs(g - r).max()) for n, g, r in zip(spec.output_names, got, ref)}}
    if spec.kind == "classifier":
        p = got[0]
        out.update(top1_min=float(p.max(1).min()), top1_max=float(p.max(1).max()),
                   distinct_top1=int(len(set(p.argmax(1).tolist()))))
    else:
        s = got[1]
        out.update(score_quantiles={q: float(np.quantile(s, float(q))) for q in ("0.05", "0.5", "0.95")},
                   score_max=float(s.max()),
                   mean_above_0_5_per_image=float((s > 0.5).sum(1).mean()))
    return out


# ---------------------------------------------------------------- one build

def build(name: str, directory: str | os.PathLike, *, seed: int = 0, formats=("onnx",),
          weights_file: str | None = None, key: str = "", extra_meta: dict | None = None) -> dict:
    """Build ``name`` into ``directory`` (which must exist) and write its ``model.json``."""
    t0 = time.perf_counter()
    spec = get_spec(name)
    d = Path(directory)
    keras.utils.set_random_seed(seed)
    _say(f"building {name} (keras)...")
    model = build_keras_model(name)
    if weights_file:
        _say(f"loading weights from {weights_file}...")
        model.load_weights(weights_file)
        weights_info = {"source": "weights_file", "weights_file": str(weights_file)}
    else:
        _say("calibrating seeded weights on sample photos...")
        weights_info = {"source": "seeded", **make_weights(model, spec)}
    model.save_weights(str(d / WEIGHTS_FILE))

    _say("exporting ONNX...")
    export_onnx(model, spec, d / ONNX_FILE)
    files = {"onnx": ONNX_FILE, "keras_weights": WEIGHTS_FILE}
    _say("checking ONNX against Keras on sample photos...")
    check = check_onnx(d / ONNX_FILE, model, spec)

    sm_meta = None
    if "savedmodel" in formats:
        _say("exporting SavedModel...")
        rel = f"savedmodel/{name}/1"
        sm_meta = {"base_path": f"savedmodel/{name}", "version": 1,
                   **export_savedmodel(model, spec, d / rel)}
        files["savedmodel"] = rel

    meta = {
        "name": name,
        "kind": spec.kind,
        "source": "keras",
        "input_name": INPUT_NAME,
        "input_hw": list(spec.input_hw),
        "layout": "NHWC",
        "input_dtype": "float32",
        "normalization": spec.normalization,
        "output_names": list(spec.output_names),
        "num_classes": spec.num_classes,
        "seed": seed,
        "key": key,
        "formats": sorted(set(formats) | {"onnx"}),
        "builder_version": BUILDER_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "onnx_opset": ONNX_OPSET,
        "files": files,
        "weights": weights_info,
        "check": check,
        "params": int(model.count_params()),
    }
    if sm_meta:
        meta["savedmodel"] = sm_meta
    if spec.kind == "detector":
        meta.update(num_anchors=SSD_NUM_ANCHORS, backbone="MobileNetV2", backbone_alpha=SSD_ALPHA,
                    box_format="ymin,xmin,ymax,xmax normalised, clipped to [0,1]",
                    score="sigmoid objectness", anchors_per_cell=detector.SSD_ANCHORS_PER_CELL,
                    feature_sizes=list(detector.SSD_FEATURE_SIZES))
    meta.update(extra_meta or {})
    meta["build_seconds"] = round(time.perf_counter() - t0, 2)
    meta["labels"] = list(spec.labels)
    write_meta(d, meta)
    keras.backend.clear_session()
    return meta


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: one JSON argument with the keyword arguments of ``build``."""
    argv = sys.argv[1:] if argv is None else argv
    req = json.loads(argv[0])
    build(req.pop("name"), req.pop("directory"), **req)
    return 0


if __name__ == "__main__":
    sys.exit(main())
