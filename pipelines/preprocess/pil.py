"""Pillow backend: ``Image.open`` + ``Image.draft`` (libjpeg DCT scaling) and ``Image.resize``.

Decoding never sets ``ImageFile.LOAD_TRUNCATED_IMAGES`` (left False, Pillow's default), so
Pillow raises on data it cannot finish; the shared structure check (``base.prepare``) has
already rejected truncated streams before Pillow sees them. Pillow's own decompression-bomb
guard (``DecompressionBombError`` above 2x ``Image.MAX_IMAGE_PIXELS``) becomes 413
``too_many_pixels``; ``inspect_image`` normally rejects such images long before.

Resize is ``Image.resize(BILINEAR, reducing_gap=3.0)``: Pillow's bilinear filter widens with the
scale (antialiased, the reference torchvision's ``antialias=True`` follows); ``reducing_gap``
first shrinks by an integer factor with ``Image.reduce`` (box filter), which Pillow documents as
indistinguishable from the full filter at gap >= 3. The numpy <-> PIL conversions it needs are
part of this backend's cost.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .base import Prepared, Preprocessor
from .validate import ImageRejected


class PILPreprocessor(Preprocessor):
    name = "pil"

    def _decode(self, data: bytes, p: Prepared) -> tuple[np.ndarray, int]:
        try:
            im = Image.open(io.BytesIO(data), formats=("JPEG", "PNG"))
        except Image.DecompressionBombError as e:
            raise ImageRejected(413, "too_many_pixels", f"{e}: downscale the image before sending.") from None
        factor = 1
        if p.factor > 1:
            sh, sw = p.stored_hw
            # draft picks the largest scale s in (1,2,4,8) with s <= min(w // req_w, h // req_h)
            im.draft("RGB", (sw // p.factor, sh // p.factor))
            factor = int(round(sw / im.size[0]))  # what libjpeg was actually asked for
        im.load()
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            a = np.asarray(im)  # 16-bit gray: scale to 8 bit like libpng/OpenCV do
            return (a.astype(np.uint32) >> 8).astype(np.uint8), factor
        if mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im), factor

    def resize(self, img: np.ndarray, hw: tuple) -> np.ndarray:
        th, tw = int(hw[0]), int(hw[1])
        if th < 1 or tw < 1:
            raise ValueError(f"resize target must be at least 1x1, got {hw}")
        if img.shape[:2] == (th, tw):
            return np.ascontiguousarray(img)
        out = Image.fromarray(np.ascontiguousarray(img)).resize(
            (tw, th), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(out)
