"""SSD-style detector on a MobileNetV2 backbone (imports Keras).

Input ``[B, 320, 320, 3]`` (normalisation "tf"). Six feature maps, 20x20 (MobileNetV2 stride 16),
10x10 (stride 32) and four extra stride-2 blocks 5x5, 3x3, 2x2, 1x1, each with a 3x3 box head
(4 offsets per anchor) and a 3x3 score head (1 objectness logit per anchor), 6 anchors per cell:
3234 anchors. Box decoding from anchors happens inside the model, so the outputs are final:

- ``boxes``  ``[B, N, 4]`` float32, (ymin, xmin, ymax, xmax) normalised to the image, clipped to [0, 1]
- ``scores`` ``[B, N]``    float32, sigmoid objectness (one class, "object")

The anchors are numpy arrays turned into tensors inside ``DecodeBoxes.call``, so when the model
is traced for export they are graph constants, not captured tensors (a captured tf.constant
becomes an extra ONNX input).
"""
from __future__ import annotations

import numpy as np
import keras
from keras import layers, ops

from .catalog import INPUT_NAME, SSD_ALPHA, SSD_ANCHORS_PER_CELL, SSD_FEATURE_SIZES

# SSD box coding: centre offsets in units of 0.1 anchor size, log-size offsets in units of 0.2.
BOX_VARIANCES = (0.1, 0.2)
MIN_SCALE, MAX_SCALE = 0.1, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)   # plus one extra square anchor per cell
EXTRA_CHANNELS = (512, 256, 256, 128)


def make_anchors(feature_sizes=SSD_FEATURE_SIZES) -> np.ndarray:
    """Anchors ``[N, 4]`` as (cy, cx, h, w), normalised, in (map, row, col, anchor) order."""
    n = len(feature_sizes)
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * k / (n - 1) for k in range(n)] + [1.0]
    out = []
    for k, size in enumerate(feature_sizes):
        s, s_next = scales[k], scales[k + 1]
        shapes = [(s / np.sqrt(r), s * np.sqrt(r)) for r in ASPECT_RATIOS]
        shapes.append((np.sqrt(s * s_next),) * 2)
        assert len(shapes) == SSD_ANCHORS_PER_CELL
        c = (np.arange(size) + 0.5) / size
        cy, cx = np.meshgrid(c, c, indexing="ij")
        hw = np.array(shapes)                                     # [A, 2]
        a = np.empty((size, size, len(shapes), 4))
        a[..., 0] = cy[..., None]
        a[..., 1] = cx[..., None]
        a[..., 2] = hw[:, 0]
        a[..., 3] = hw[:, 1]
        out.append(a.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


class DecodeBoxes(layers.Layer):
    """Box offsets ``[B, N, 4]`` (ty, tx, th, tw) + fixed anchors -> clipped (ymin, xmin, ymax, xmax)."""

    def __init__(self, feature_sizes=SSD_FEATURE_SIZES, **kwargs):
        super().__init__(**kwargs)
        self.feature_sizes = tuple(int(s) for s in feature_sizes)
        self._anchors = make_anchors(self.feature_sizes)

    def call(self, deltas):
        a = ops.convert_to_tensor(self._anchors)          # a constant of the traced graph
        vc, vs = BOX_VARIANCES
        cy = a[:, 0] + deltas[..., 0] * vc * a[:, 2]
        cx = a[:, 1] + deltas[..., 1] * vc * a[:, 3]
        h = a[:, 2] * ops.exp(ops.clip(deltas[..., 2] * vs, -4.0, 4.0))
        w = a[:, 3] * ops.exp(ops.clip(deltas[..., 3] * vs, -4.0, 4.0))
        boxes = ops.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
        return ops.clip(boxes, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "feature_sizes": self.feature_sizes}


def _extra_block(x, channels: int, i: int):
    p = f"extra_{i}"
    x = layers.Conv2D(channels // 2, 1, use_bias=False, name=f"{p}_reduce")(x)
    x = layers.BatchNormalization(name=f"{p}_reduce_bn")(x)
    x = layers.ReLU(6.0, name=f"{p}_reduce_relu")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name=f"{p}_dw")(x)
    x = layers.BatchNormalization(name=f"{p}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{p}_dw_relu")(x)
    x = layers.Conv2D(channels, 1, use_bias=False, name=f"{p}_project")(x)
    x = layers.BatchNormalization(name=f"{p}_project_bn")(x)
    return layers.ReLU(6.0, name=f"{p}_relu")(x)


def build_ssd_mobilenetv2(input_hw=(320, 320), alpha: float = SSD_ALPHA) -> keras.Model:
    inp = keras.Input((*input_hw, 3), name=INPUT_NAME)
    backbone = keras.applications.MobileNetV2(input_tensor=inp, include_top=False, weights=None,
                                              alpha=alpha)
    feats = [backbone.get_layer("block_13_expand_relu").output, backbone.get_layer("out_relu").output]
    x = feats[-1]
    for i, ch in enumerate(EXTRA_CHANNELS):
        x = _extra_block(x, ch, i)
        feats.append(x)
    sizes = tuple(int(f.shape[1]) for f in feats)
    if sizes != SSD_FEATURE_SIZES:
        raise ValueError(f"feature map sizes {sizes} != {SSD_FEATURE_SIZES} for input {input_hw}")

    a = SSD_ANCHORS_PER_CELL
    deltas, logits = [], []
    for i, f in enumerate(feats):
        d = layers.Conv2D(a * 4, 3, padding="same", name=f"box_head_{i}")(f)
        deltas.append(layers.Reshape((-1, 4), name=f"box_head_{i}_flat")(d))
        s = layers.Conv2D(a, 3, padding="same", name=f"score_head_{i}")(f)
        logits.append(layers.Reshape((-1,), name=f"score_head_{i}_flat")(s))
    deltas = layers.Concatenate(axis=1, name="box_deltas")(deltas)
    logits = layers.Concatenate(axis=1, name="score_logits")(logits)
    boxes = DecodeBoxes(sizes, name="boxes")(deltas)
    scores = layers.Activation("sigmoid", name="scores")(logits)
    return keras.Model(inp, [boxes, scores], name="ssd_mobilenetv2")


def head_layers(model: keras.Model):
    """(box head convs, score head convs)."""
    n = len(SSD_FEATURE_SIZES)
    return ([model.get_layer(f"box_head_{i}") for i in range(n)],
            [model.get_layer(f"score_head_{i}") for i in range(n)])
