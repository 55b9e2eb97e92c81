"""simplejpeg backend: libjpeg-turbo through ``simplejpeg.decode_jpeg`` for JPEG, OpenCV otherwise.

Not one of the three backends of the original plan; added because it is the fastest JPEG
decoder available on PyPI here and the only one that reports libjpeg *warnings* as errors
(``strict=True``): bit-level corruption inside the entropy-coded data is rejected (422) instead
of being decoded to garbage. Reduced decode passes ``min_height``/``min_width`` equal to the
1/f size so turbojpeg picks exactly scale 1/f (f in 2, 4, 8, same rule as the other backends).
CMYK/YCCK JPEGs (which turbojpeg cannot convert to RGB) and PNGs go to ``cv2.imdecode``.
Resize and normalize are the OpenCV ones.
"""
from __future__ import annotations

import numpy as np
import simplejpeg

from .base import Prepared, reduced_size
from .opencv import OpenCVPreprocessor, imdecode_rgb


class SimpleJpegPreprocessor(OpenCVPreprocessor):
    name = "simplejpeg"

    def _decode(self, data: bytes, p: Prepared) -> tuple[np.ndarray, int]:
        if p.format != "jpeg" or p.components == 4:
            return imdecode_rgb(data, p.factor), p.factor
        if p.factor > 1:
            mh, mw = reduced_size(p.stored_hw, p.factor)
            img = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=mh, min_width=mw, strict=True)
            factor = int(round(p.stored_hw[1] / img.shape[1]))
            return img, factor
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True), 1

