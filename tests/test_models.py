"""pipelines.models: build with Keras, export ONNX / SavedModel, cache. Real TF and ORT, no mocks.

One module fixture builds mobilenetv2, custom_cnn (+ SavedModel, in a child process, the default
path) and ssd_mobilenetv2 into a temporary models dir (~45 s on 2 cores). The big classifiers
(resnet50, inceptionv3, efficientnetb0) are not built here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.models import (MODEL_NAMES, ModelInfo, default_models_dir, ensure_model,
                              get_spec, normalize)
from pipelines.models.photos import photo_batch

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning")  # inside TF


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.update(extra)
    return env


def _run_py(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=_env(**env), capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def _ort(info: ModelInfo):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(info.onnx_path), so, providers=["CPUExecutionProvider"])


def _photos(info: ModelInfo) -> np.ndarray:
    return normalize(photo_batch(info.input_hw), info.normalization)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def built(models_dir) -> dict[str, ModelInfo]:
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    out = {"custom_cnn": ensure_model("custom_cnn", models_dir, formats=("onnx", "savedmodel"),
                                      in_process=False, progress=False)}
    for name in ("mobilenetv2", "ssd_mobilenetv2"):
        out[name] = ensure_model(name, models_dir, in_process=True, progress=False)
    return out


def _keras_reference(info: ModelInfo):
    """The architecture with the build's weights loaded (weights saved next to the ONNX)."""
    from pipelines.models import build
    model = build.build_keras_model(info.name)
    model.load_weights(str(info.directory / info.meta["files"]["keras_weights"]))
    return model


# ------------------------------------------------------------------ no TF needed

def test_import_does_not_load_tensorflow():
    r = _run_py("import sys, pipelines.models as m; m.ensure_model; m.ModelInfo; "
                "import pipelines.models.__main__; "
                "print(sorted(k for k in ('tensorflow', 'keras', 'tf2onnx') if k in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_catalog_and_defaults(monkeypatch, tmp_path):
    assert MODEL_NAMES == ("resnet50", "mobilenetv2", "inceptionv3", "efficientnetb0",
                           "custom_cnn", "ssd_mobilenetv2")
    assert get_spec("resnet50").normalization == "caffe"
    assert get_spec("efficientnetb0").normalization == "raw"
    assert get_spec("inceptionv3").input_hw == (299, 299)
    assert get_spec("custom_cnn").labels == ("daisy", "dandelion", "roses", "sunflowers", "tulips")
    assert get_spec("mobilenetv2").labels[999] == "class_999"
    monkeypatch.setenv("OVERHEAD_MODELS_DIR", str(tmp_path / "m"))
    assert default_models_dir() == tmp_path / "m"
    monkeypatch.delenv("OVERHEAD_MODELS_DIR")
    assert default_models_dir() == Path.home() / ".cache" / "overhead" / "models"
    with pytest.raises(KeyError):
        ensure_model("nope", tmp_path)
    with pytest.raises(ValueError):
        ensure_model("custom_cnn", tmp_path, formats=("onnx", "tflite"))
    assert not any(tmp_path.iterdir())


def test_normalizations():
    px = np.array([[[0, 127.5, 255]]], np.float32)
    np.testing.assert_allclose(normalize(px, "tf"), [[[-1, 0, 1]]])
    np.testing.assert_allclose(normalize(px, "unit"), [[[0, 0.5, 1]]])
    np.testing.assert_allclose(normalize(px, "raw"), px)
    np.testing.assert_allclose(normalize(px, "caffe"), [[[255 - 103.939, 127.5 - 116.779, -123.68]]],
                               rtol=1e-6)
    np.testing.assert_allclose(normalize(px, "torch")[0, 0, 0], (0 - 0.485) / 0.229, rtol=1e-6)


# ------------------------------------------------------------------ built models

@pytest.mark.parametrize("name", ["mobilenetv2", "custom_cnn", "ssd_mobilenetv2"])
def test_onnx_matches_keras(built, name):
    info = built[name]
    x = _photos(info)
    got = _ort(info).run(info.output_names, {info.input_name: x})
    ref = _keras_reference(info)(x, training=False)
    ref = ref if isinstance(ref, (list, tuple)) else [ref]
    for out_name, g, r in zip(info.output_names, got, ref):
        diff = float(np.abs(g - np.asarray(r)).max())
        assert diff < 2e-3, f"{name}/{out_name}: max abs diff {diff}"


@pytest.mark.parametrize("name", ["mobilenetv2", "custom_cnn"])
def test_classifier_onnx_contract_and_outputs_not_degenerate(built, name):
    info = built[name]
    sess = _ort(info)
    (inp,) = sess.get_inputs()
    assert inp.name == info.input_name == "input"
    assert inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [*info.input_hw, 3]
    assert [o.name for o in sess.get_outputs()] == ["probs"]
    x = _photos(info)
    (p,) = sess.run(None, {"input": x})
    c = info.num_classes
    assert p.shape == (len(x), c)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)
    top1 = p.max(1)
    assert top1.min() > 1.5 / c, top1                      # every photo well above uniform
    assert top1.mean() > (10 / c if c > 100 else 2 / c), top1
    assert top1.max() - top1.min() > 0.05                  # confidence varies with the image
    assert len(set(p.argmax(1).tolist())) >= 3             # and so does the answer
    assert float(p.std(0).max()) > 0.02
    (p1,) = sess.run(None, {"input": x[:1]})               # dynamic batch: bs1 = row 0 of bs8
    np.testing.assert_allclose(p1[0], p[0], atol=1e-5)


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float, iou: float = 0.5) -> list[int]:
    order = np.argsort(-scores)
    order = order[scores[order] > thr]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        yx1 = np.maximum(boxes[i, :2], boxes[rest, :2])
        yx2 = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(yx2 - yx1, 0, None), axis=1)
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) <= iou]
    return keep


def test_detector_onnx_contract(built):
    import onnx
    info = built["ssd_mobilenetv2"]
    assert info.kind == "detector" and info.labels == ["object"] and info.num_classes == 1
    assert info.meta["num_anchors"] == 3234
    proto = onnx.load(str(info.onnx_path))
    assert [i.name for i in proto.graph.input] == ["input"]          # anchors are not an input
    assert [o.name for o in proto.graph.output] == ["boxes", "scores"]
    x = _photos(info)
    boxes, scores = _ort(info).run(["boxes", "scores"], {"input": x})
    assert boxes.shape == (len(x), 3234, 4) and boxes.dtype == np.float32
    assert scores.shape == (len(x), 3234) and scores.dtype == np.float32
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    assert (boxes[..., 0] <= boxes[..., 2]).all() and (boxes[..., 1] <= boxes[..., 3]).all()
    assert ((boxes[..., 2] - boxes[..., 0]) > 0.01).mean() > 0.99     # not collapsed to points
    assert scores.min() >= 0.0 and scores.max() <= 1.0


def test_detector_scores_spread(built):
    info = built["ssd_mobilenetv2"]
    x = _photos(info)
    boxes, scores = _ort(info).run(["boxes", "scores"], {"input": x})
    above = (scores > 0.5).sum(1)
    assert (above > 0).all(), above                     # every photo has confident boxes...
    assert ((scores < 0.2).mean(1) > 0.3).all()         # ...and most anchors are background
    assert len(set(above.tolist())) > 1                 # how many depends on the image
    for b, s in zip(boxes, scores):                      # NMS has work to do
        kept = _nms(b, s, 0.4)
        assert 1 < len(kept) < (s > 0.4).sum()


def test_model_json_round_trip(built):
    from pipelines.models.info import write_meta
    info = built["ssd_mobilenetv2"]
    raw = json.loads((info.directory / "model.json").read_text())
    for k in ("name", "kind", "input_name", "input_hw", "layout", "input_dtype", "normalization",
              "output_names", "labels", "num_classes", "seed", "key", "versions", "build_seconds",
              "num_anchors"):
        assert k in raw, k
    assert raw["layout"] == "NHWC" and raw["input_dtype"] == "float32"
    assert set(raw["versions"]) >= {"tensorflow", "keras", "tf2onnx", "onnx"}
    assert info.directory.name.endswith(raw["key"])
    again = ModelInfo.load(info.directory)
    assert again == info and again.meta == info.meta
    assert again.input_hw == (320, 320) and again.normalization == "tf"
    write_meta(info.directory, again.meta)               # writing it back changes nothing
    assert ModelInfo.load(info.directory) == info
    cnn = built["custom_cnn"].meta
    assert cnn["normalization"] == "unit" and cnn["labels"][0] == "daisy"
    assert built["mobilenetv2"].meta["normalization"] == "tf"


def test_cache_hit_is_instant_and_needs_no_tensorflow(built, models_dir):
    info = built["custom_cnn"]
    mtime = (info.directory / "model.json").stat().st_mtime_ns
    code = ("import sys, time; t = time.perf_counter(); from pipelines.models import ensure_model; "
            f"i = ensure_model('custom_cnn', {str(models_dir)!r}, formats=('onnx', 'savedmodel')); "
            "print(i.directory); print(time.perf_counter() - t); "
            "print(sorted(k for k in ('tensorflow', 'keras', 'tf2onnx') if k in sys.modules))")
    r = _run_py(code)
    assert r.returncode == 0, r.stderr
    directory, seconds, loaded = r.stdout.strip().splitlines()
    assert Path(directory) == info.directory
    assert loaded == "[]"
    assert float(seconds) < 2.0
    assert (info.directory / "model.json").stat().st_mtime_ns == mtime
    # same process, same answer; a build with more formats serves a request for fewer
    assert ensure_model("custom_cnn", models_dir, formats=("savedmodel",)) == info
    assert ensure_model("custom_cnn", models_dir) == info
    names = {p.name for p in models_dir.iterdir()}
    assert not any(n.startswith(".tmp-") for n in names)


def test_cli_list_and_build_cache_hit(built, models_dir):
    r = subprocess.run([sys.executable, "-m", "pipelines.models", "list", "--models-dir", str(models_dir)],
                       env=_env(), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    for name in ("custom_cnn", "mobilenetv2", "ssd_mobilenetv2"):
        assert built[name].directory.name in r.stdout
    r = subprocess.run([sys.executable, "-m", "pipelines.models", "build", "mobilenetv2",
                        "--models-dir", str(models_dir)],
                       env=_env(), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == built["mobilenetv2"].directory


def test_savedmodel_serving_default(built):
    tf = pytest.importorskip("tensorflow")
    info = built["custom_cnn"]
    assert info.savedmodel_path == info.directory / "savedmodel" / "custom_cnn" / "1"
    assert info.savedmodel_base_path == info.directory / "savedmodel" / "custom_cnn"
    loaded = tf.saved_model.load(str(info.savedmodel_path))
    assert "serving_default" in loaded.signatures
    fn = loaded.signatures["serving_default"]
    x = _photos(info)
    out = fn(input=tf.constant(x))
    assert set(out) == {"probs"}
    (ref,) = _ort(info).run(["probs"], {"input": x})
    np.testing.assert_allclose(out["probs"].numpy(), ref, atol=1e-4)
    assert built["mobilenetv2"].savedmodel_path is None


def test_user_onnx_file(built, tmp_path):
    src = built["custom_cnn"].onnx_path
    user = tmp_path / "flowers.onnx"
    user.write_bytes(src.read_bytes())
    d = tmp_path / "models"
    info = ensure_model("my_flowers", d, onnx_file=user, normalization="unit",
                        labels=["a", "b", "c", "d", "e"], progress=False)
    assert info.kind == "classifier" and info.input_hw == (150, 150) and info.input_name == "input"
    assert info.normalization == "unit" and info.labels == ["a", "b", "c", "d", "e"]
    assert info.meta["layout"] == "NHWC" and info.meta["source"] == "onnx_file"
    assert info.onnx_path.read_bytes() == src.read_bytes()           # used as-is
    assert ensure_model("my_flowers", d, onnx_file=user, normalization="unit",
                        labels=["a", "b", "c", "d", "e"]) == info    # cached
    # a known name fills normalisation and labels from the catalog
    known = ensure_model("custom_cnn", d, onnx_file=user, progress=False)
    assert known.normalization == "unit" and known.labels[:2] == ["daisy", "dandelion"]
    # an unknown name and no labels: class_i, kind from the outputs
    det = ensure_model("boxes_only", d, onnx_file=built["ssd_mobilenetv2"].onnx_path, progress=False)
    assert det.kind == "detector" and det.output_names == ["boxes", "scores"]
    assert det.input_hw == (320, 320) and det.normalization == "raw"
    # a broken file fails cleanly: no directory, no temp left behind
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(Exception):
        ensure_model("bad", d, onnx_file=bad, progress=False)
    assert not [p for p in d.iterdir() if p.name.startswith(("bad", ".tmp-"))]


def test_weights_file_round_trip(built, tmp_path):
    src = built["custom_cnn"]
    info = ensure_model("custom_cnn", tmp_path, seed=7, in_process=True, progress=False,
                        weights_file=src.directory / "keras.weights.h5")
    assert info.directory != src.directory
    assert info.meta["weights"]["source"] == "weights_file"
    x = _photos(src)
    (a,) = _ort(src).run(None, {"input": x})
    (b,) = _ort(info).run(None, {"input": x})
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_stale_temp_removed_and_lock_waits(built, tmp_path):
    """A killed build's temp dir is cleaned; a second process waits on the lock, then hits."""
    from pipelines.models.cache import _exclusive
    user = built["custom_cnn"].onnx_path
    probe = ensure_model("lockme", tmp_path / "probe", onnx_file=user, progress=False)
    key = probe.meta["key"]
    d = tmp_path / "models"
    (d / f".tmp-lockme-{key}-999999").mkdir(parents=True)
    code = (f"from pipelines.models import ensure_model; "
            f"print(ensure_model('lockme', {str(d)!r}, onnx_file={str(user)!r}, progress=False).directory)")
    with _exclusive(d / ".locks" / f"lockme-{key}.lock"):
        proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO)
        time.sleep(1.5)
        assert proc.poll() is None                       # blocked on our lock
        assert not (d / f"lockme-{key}").exists()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert Path(out.strip()) == d / f"lockme-{key}"
    assert not [p for p in d.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_failed_build_leaves_nothing(built, tmp_path):
    wrong = built["custom_cnn"].directory / "keras.weights.h5"     # weights of another network
    with pytest.raises(Exception):
        ensure_model("mobilenetv2", tmp_path, weights_file=wrong, in_process=True, progress=False)
    assert not [p for p in tmp_path.iterdir() if not p.name == ".locks"]
