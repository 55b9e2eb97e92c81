"""Vision models for Overhead: built with Keras (``weights=None``, seeded and calibrated so their
outputs are not degenerate), exported to ONNX (and a TF Serving SavedModel), cached on disk.

Importing this package does not import TensorFlow; only a build does (``build.py``,
``detector.py``, ``calibrate.py``), by default in a child process.

    >>> from pipelines.models import ensure_model
    >>> info = ensure_model("mobilenetv2")          # builds once, then a directory lookup
    >>> info.onnx_path, info.input_name, info.input_hw, info.normalization

CLI: ``python -m pipelines.models build NAME [NAME...]`` and ``python -m pipelines.models list``.
"""
from __future__ import annotations

from .cache import FORMATS, default_models_dir, ensure_model, list_cached
from .catalog import MODEL_NAMES, SPECS, ModelSpec, get_spec
from .info import ModelInfo
from .normalization import NORMALIZATIONS, normalize

__all__ = [
    "MODEL_NAMES", "SPECS", "FORMATS", "NORMALIZATIONS", "ModelInfo", "ModelSpec",
    "default_models_dir", "ensure_model", "list_cached", "get_spec", "normalize",
]
