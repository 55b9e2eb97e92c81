"""Seeded but non-degenerate weights for models built with ``weights=None`` (imports Keras).

A freshly initialised network is useless for latency work that looks at outputs: MobileNetV2
gives 0.001 for every class, ResNet50 puts every photo in the same class, a detector scores all
anchors alike so the threshold/NMS/crop stages do nothing. Two data-driven fixes, deterministic
for a given seed and photo set:

1. BatchNorm recalibration: run a batch of real photos through the model in training mode with
   momentum 0, so each BatchNorm's moving mean/variance become that layer's batch statistics
   (dropout disabled meanwhile). Activations are then centred and unit-scale at every BN instead
   of drifting to zero or blowing up through 50+ random layers.
2. Head scaling: rescale the last layers so their pre-activations have a chosen spread on the
   photos: classifier logits (after standardising the features the head sees) get std
   ``logit_std``; detector score/box convolutions get a per-channel mean and std.
"""
from __future__ import annotations

import numpy as np
import keras


def iter_layers(model):
    """All layers, depth first, looking inside nested models."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from iter_layers(layer)


def recalibrate_batchnorm(model, x: np.ndarray) -> int:
    """Set every BatchNorm's moving statistics to the batch statistics of ``x``. Returns count."""
    bns = [l for l in iter_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    drops = [l for l in iter_layers(model) if isinstance(l, keras.layers.Dropout)]
    old_momentum = [l.momentum for l in bns]
    old_rate = [l.rate for l in drops]
    try:
        for l in bns:
            l.momentum = 0.0
        for l in drops:
            l.rate = 0.0
        model(x, training=True)
    finally:
        for l, m in zip(bns, old_momentum):
            l.momentum = m
        for l, r in zip(drops, old_rate):
            l.rate = r
    return len(bns)


def layer_inputs(model, layers, x: np.ndarray) -> list[np.ndarray]:
    """What each of ``layers`` receives when ``model`` runs on ``x`` (one forward pass)."""
    probe = keras.Model(model.input, [l.input for l in layers])
    out = probe(x, training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def _pre_activation(layer, inputs: np.ndarray) -> np.ndarray:
    act = layer.activation
    layer.activation = keras.activations.linear
    try:
        return np.asarray(layer(inputs))
    finally:
        layer.activation = act


def scale_dense_head(layer, features: np.ndarray, logit_std: float) -> dict:
    """Standardise the features a Dense head sees, then scale its logits to ``logit_std``.

    The seeded random kernel is kept (so classes are random projections of the features);
    only input standardisation and one global scale are folded into kernel and bias.
    """
    f = np.asarray(features, np.float64)
    mu = f.mean(0)
    sd = f.std(0)
    sd = sd + 1e-2 * (sd.mean() + 1e-12)          # dead features must not blow up
    k0 = np.asarray(layer.kernel, np.float64)
    k1 = k0 / sd[:, None]
    b1 = -(mu / sd) @ k0
    z = f @ k1 + b1
    alpha = logit_std / max(z.std(), 1e-12)
    layer.kernel.assign((k1 * alpha).astype(np.float32))
    layer.bias.assign((b1 * alpha).astype(np.float32))
    return {"feature_std_mean": float(f.std(0).mean()), "logit_scale": float(alpha)}


def scale_conv_channels(layer, inputs: np.ndarray, mean: float, std: float) -> None:
    """Fold a per-output-channel affine map so the layer's pre-activations on ``inputs`` have
    the given mean and std per channel (over images and positions)."""
    y = _pre_activation(layer, inputs).astype(np.float64)
    y = y.reshape(-1, y.shape[-1])
    m, s = y.mean(0), y.std(0) + 1e-12
    g = std / s
    k = np.asarray(layer.kernel, np.float64) * g
    b = (np.asarray(layer.bias, np.float64) - m) * g + mean
    layer.kernel.assign(k.astype(np.float32))
    layer.bias.assign(b.astype(np.float32))
