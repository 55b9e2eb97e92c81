"""Image preprocessing on the request path: decode -> resize -> normalize, and crops.

Backends (one class each, same interface, see ``base.py`` for the full decode contract)::

    opencv      cv2.imdecode (IMREAD_REDUCED_COLOR_2/4/8) + cv2.resize (INTER_AREA)   opencv.py
    pil         Pillow Image.open/draft + Image.resize (BILINEAR, antialiased)          pil.py
    simplejpeg  simplejpeg (min_height/min_width, strict) + cv2.resize                  simplejpeg_backend.py
    dali        NVIDIA DALI CPU pipelines (optional extra overhead[dali])               dali.py

``get_preprocessor(name, reduced="auto")`` returns one. ``decode(data, target_hw)`` gives an
HxWx3 uint8 RGB C-contiguous array (read-only for the ``pil`` backend: Pillow hands out its
bytes; every other operation returns a new array) and ``{"src_hw", "reduced", "format"}``.
Upload validation (header only) is ``validate.inspect_image``.
"""
from __future__ import annotations

import importlib.util

from .base import NORMALIZE_MODES, REDUCED_MODES, Preprocessor, crop, crop_box_pixels, normalize
from .validate import ImageProbe, ImageRejected, inspect_image


def _dali_importable() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


DALI_AVAILABLE = _dali_importable()
PREPROCESSORS = ("opencv", "pil", "simplejpeg") + (("dali",) if DALI_AVAILABLE else ())
ALL_PREPROCESSORS = ("opencv", "pil", "simplejpeg", "dali")


class BackendUnavailable(ImportError):
    """A known backend whose optional dependency is not installed."""


def get_preprocessor(name: str = "opencv", reduced: str = "auto", **options) -> Preprocessor:
    """The preprocessing backend ``name`` (one of ALL_PREPROCESSORS); ``options`` go to its class
    (``dali`` takes ``num_threads``)."""
    if name == "opencv":
        from .opencv import OpenCVPreprocessor as cls
    elif name == "pil":
        from .pil import PILPreprocessor as cls
    elif name == "simplejpeg":
        from .simplejpeg_backend import SimpleJpegPreprocessor as cls
    elif name == "dali":
        try:
            from .dali import DALIPreprocessor as cls
        except ImportError as e:
            raise BackendUnavailable(
                "The 'dali' preprocessor needs NVIDIA DALI, which is not installed: "
                "pip install 'overhead[dali]'  (installs nvidia-dali-cuda120; CPU pipelines work "
                f"without a GPU). Underlying error: {e}") from None
    else:
        raise ValueError(f"unknown preprocessor {name!r}; choose one of {PREPROCESSORS}")
    return cls(reduced=reduced, **options)


__all__ = [
    "PREPROCESSORS", "ALL_PREPROCESSORS", "DALI_AVAILABLE", "NORMALIZE_MODES", "REDUCED_MODES",
    "BackendUnavailable", "Preprocessor", "get_preprocessor", "normalize", "crop", "crop_box_pixels",
    "ImageRejected", "ImageProbe", "inspect_image",
]
