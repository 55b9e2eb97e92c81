"""The input normalisations a model can declare in ``model.json`` (reference numpy versions).

The request path has its own fast implementations (``pipelines/preprocess``); these are the
definitions they must agree with, used here to calibrate models and in the tests.

- ``tf``:    x / 127.5 - 1                                   (MobileNetV2, InceptionV3, SSD)
- ``caffe``: RGB -> BGR, then subtract [103.939, 116.779, 123.68]   (ResNet50)
- ``torch``: x / 255, then (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
- ``unit``:  x / 255                                          (custom_cnn)
- ``raw``:   float 0..255, the model rescales inside          (EfficientNetB0)
"""
from __future__ import annotations

import numpy as np

NORMALIZATIONS = ("tf", "caffe", "torch", "unit", "raw")

CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(rgb: np.ndarray, mode: str) -> np.ndarray:
    """RGB pixels 0..255 (uint8 or float, ``[..., H, W, 3]``) -> float32 model input."""
    x = np.asarray(rgb, dtype=np.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_BGR_MEAN
    if mode == "torch":
        return (x / 255.0 - TORCH_MEAN) / TORCH_STD
    if mode == "unit":
        return x / 255.0
    if mode == "raw":
        return x
    raise ValueError(f"unknown normalization {mode!r}; expected one of {NORMALIZATIONS}")
