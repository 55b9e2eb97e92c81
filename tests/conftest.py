"""Shared fixtures: tiny REAL ONNX models built with onnx.helper (run by real ORT sessions).

``tiny_classifier`` / ``tiny_detector`` return a ``TinyModelInfo`` with the same fields as
``pipelines.models.ModelInfo``, so unit tests of inference, postprocess, worker and pipeline do
not need TensorFlow or the model builders. The real-model tests live next to the gateway tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest


@dataclass
class TinyModelInfo:
    name: str
    kind: str
    onnx_path: str
    input_name: str
    input_hw: tuple
    normalization: str
    output_names: list
    labels: list = field(default_factory=list)
    num_classes: int = 0


def build_tiny_classifier(path: Path, hw=(32, 32), num_classes=10, seed=0) -> TinyModelInfo:
    """NHWC float32 [B,H,W,3] -> Transpose -> Conv3x3 -> Relu -> GlobalAveragePool -> Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1.0, (num_classes, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, (num_classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["logits"], axis=1),
        helper.make_node("Mul", ["logits", "temp"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", hw[0], hw[1], 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", num_classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array([4.0], np.float32), "temp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return TinyModelInfo("tiny_classifier", "classifier", str(path), "images", tuple(hw), "unit",
                         ["probs"], [f"class_{i}" for i in range(num_classes)], num_classes)


def build_tiny_detector(path: Path, hw=(64, 64), grid=4, seed=1) -> TinyModelInfo:
    """NHWC [B,H,W,3] -> ``boxes`` [B,N,4] (ymin,xmin,ymax,xmax in [0,1]) and ``scores`` [B,N].

    N = grid*grid anchors, one per cell, each shifted by a content-dependent offset; scores are a
    sigmoid of a 1x1 conv of the cell's mean colour, so they depend on the image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = grid * grid
    cell_h, cell_w = hw[0] // grid, hw[1] // grid
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 2.0, (5, 3, 1, 1)).astype(np.float32)
    b = rng.normal(0, 0.5, (5,)).astype(np.float32)
    anchors = []
    for gy in range(grid):
        for gx in range(grid):
            anchors.append([gy / grid, gx / grid, (gy + 1.6) / grid, (gx + 1.6) / grid])
    anchors = np.clip(np.array(anchors, np.float32), 0, 1)
    nodes = [
        helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[cell_h, cell_w],
                         strides=[cell_h, cell_w]),
        helper.make_node("Conv", ["pooled", "w", "b"], ["feat"]),
        helper.make_node("Reshape", ["feat", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["cells"], perm=[0, 2, 1]),
        helper.make_node("Sigmoid", ["cells"], ["sig"]),
        helper.make_node("Split", ["sig", "split"], ["offs", "score3"], axis=2),
        helper.make_node("Sub", ["offs", "half"], ["centered"]),
        helper.make_node("Mul", ["centered", "scale"], ["delta"]),
        helper.make_node("Add", ["delta", "anchors"], ["raw_boxes"]),
        helper.make_node("Clip", ["raw_boxes", "zero", "one"], ["boxes"]),
        helper.make_node("Squeeze", ["score3", "axis2"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array([0, 5, n], np.int64), "shape"),
             numpy_helper.from_array(np.array([4, 1], np.int64), "split"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array(0.2, np.float32), "scale"),
             numpy_helper.from_array(anchors, "anchors"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    graph = helper.make_graph(
        nodes, "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", hw[0], hw[1], 3])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", n, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", n])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return TinyModelInfo("tiny_detector", "detector", str(path), "images", tuple(hw), "unit",
                         ["boxes", "scores"], [], 0)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_classifier(tiny_models_dir) -> TinyModelInfo:
    return build_tiny_classifier(tiny_models_dir / "tiny_classifier.onnx")


@pytest.fixture(scope="session")
def tiny_detector(tiny_models_dir) -> TinyModelInfo:
    return build_tiny_detector(tiny_models_dir / "tiny_detector.onnx")


@pytest.fixture(scope="session")
def photo_jpeg() -> bytes:
    """A real photo (scikit-learn's china.jpg, 427x640) as JPEG bytes."""
    import cv2
    from sklearn.datasets import load_sample_image

    rgb = load_sample_image("china.jpg")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


@pytest.fixture
def real_gateway(tmp_path):
    """A real gateway process (the real SSD + MobileNetV2, k=2, spans to ``tmp_path``):
    ``(GatewayProcess, spans_dir)``; stopped by PID afterwards."""
    from deploy.pipeline_processes import GatewayProcess
    from pipelines.models import ensure_model

    det, cls = ensure_model("ssd_mobilenetv2"), ensure_model("mobilenetv2")
    spans = tmp_path / "gateway-spans"
    gw = GatewayProcess(["--detector", det.name, "--classifier", cls.name,
                         "--models-dir", str(Path(det.onnx_path).parent.parent),
                         "--spans-dir", str(spans), "--intra-op-threads", "1", "--k", "2"],
                        tmp_path / "gateway.log").start(timeout_s=120)
    try:
        yield gw, spans
    finally:
        gw.stop()
