"""What every preprocessing backend shares: the interface, the decode preamble, normalize, crop.

Decode contract (all backends):

- Input: the raw bytes of a JPEG or PNG. Output: ``(img, info)`` with ``img`` an HxWx3 uint8 RGB
  C-contiguous array (read-only from the ``pil`` backend, which hands out Pillow's buffer
  without a copy) and ``info = {"src_hw": (h, w), "reduced": f, "format": "jpeg"|"png"}``.
  ``src_hw`` is the size of the full image as displayed (after EXIF orientation); the returned
  image is about ``src_hw / f``.
- Before any backend decodes, ``prepare`` sniffs the format and walks the stream structure
  (``formats.check_jpeg_complete`` / ``check_png_complete``), so truncation is detected exactly
  and identically for every backend (``ImageRejected`` 422 ``truncated_image``); a marker that
  cannot occur inside the image data gives 422 ``corrupt_image``. Errors raised by the decoders
  themselves also become 422 ``corrupt_image``. Cost: ~0.1-0.3 ms for a 1 MB JPEG (a vectorised
  scan for 0xFF bytes), ~1 ms per MB of PNG (chunk CRCs). Limitation: bit errors *inside* entropy-coded JPEG
  data that keep the marker structure valid are only warnings for libjpeg; the opencv, pil and
  dali backends then return the damaged pixels (as any libjpeg-based server does). The
  ``simplejpeg`` backend decodes with ``strict=True`` and rejects those too.
- Grayscale, CMYK/YCCK, palette and alpha inputs become 3-channel RGB. Alpha is dropped (not
  composited), 16-bit PNG is scaled to 8 bit.
- EXIF orientation: **applied**, the same way in every backend. Each backend decodes the stored
  pixels with its own auto-rotation switched off, then ``apply_orientation`` rotates/flips using
  the orientation parsed from the JPEG APP1 (or PNG eXIf) header. The image is then the one a
  browser or photo viewer shows, so boxes and crops match what the user sent. (OpenCV and DALI
  rotate by default, PIL and simplejpeg never do: doing it ourselves keeps the backends in step.)
- Images over ``max_pixels`` (default 100 MP, ``None`` disables) are refused with 413
  ``too_many_pixels`` from the header, before any decoder allocates the frame.
- ``reduced="auto"``: for a JPEG at least twice ``target_hw`` in both dimensions, decode at the
  largest DCT scale 1/f (f in 2, 4, 8) with ``src >= f * target`` in both dimensions, so the
  decoded image is still at least ``target_hw``. ``reduced="off"`` always decodes at full size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .formats import (HeaderError, TruncatedError, check_jpeg_complete, check_png_complete,
                      parse_jpeg_header, parse_png_header)
from .validate import ImageRejected, rejected_corrupt, supported_format

REDUCED_MODES = ("auto", "off")
REDUCTION_FACTORS = (8, 4, 2)
NORMALIZE_MODES = ("tf", "caffe", "torch", "unit", "raw")
# Decoders refuse bigger images even when called without inspect_image (a 30000x30000 PNG bomb
# would otherwise make cv2/PIL allocate 2.7 GB before finding out the data is missing).
DEFAULT_MAX_PIXELS = 100_000_000


# --------------------------------------------------------------------------- decode preamble
@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` learnt from the header; what a backend needs to decode."""
    format: str          # "jpeg" | "png"
    stored_hw: tuple     # (h, w) as stored in the file
    src_hw: tuple        # (h, w) as displayed (after orientation)
    orientation: int     # EXIF orientation 1..8
    factor: int          # DCT reduction to use (1 for PNG or when not reducing)
    components: int = 3  # JPEG: 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK; PNG: 0


def reduction_factor(src_hw: tuple, target_hw: tuple | None) -> int:
    """Largest f in (8, 4, 2) with src >= f * target in both dims, else 1."""
    if target_hw is None:
        return 1
    h, w = src_hw
    th, tw = target_hw
    if th <= 0 or tw <= 0:
        return 1
    for f in REDUCTION_FACTORS:
        if h >= f * th and w >= f * tw:
            return f
    return 1


def prepare(data: bytes, target_hw: tuple | None, reduced: str) -> Prepared:
    """Sniff, parse and structurally check ``data``; raise ImageRejected when it cannot decode."""
    if not data:
        raise ImageRejected(400, "empty_body", "The image is empty: send the bytes of a JPEG or PNG image.")
    fmt = supported_format(data)
    try:
        if fmt == "jpeg":
            h = parse_jpeg_header(data)
            check_jpeg_complete(data, h)
            orientation = h.orientation
            components = h.components
        else:
            h = parse_png_header(data)
            orientation = check_png_complete(data)
            components = 0
    except TruncatedError as e:
        raise rejected_corrupt(fmt, str(e), truncated=True) from None
    except HeaderError as e:
        raise rejected_corrupt(fmt, str(e)) from None
    stored = (h.height, h.width)
    src = (stored[1], stored[0]) if orientation >= 5 else stored
    factor = 1
    if fmt == "jpeg" and reduced == "auto":
        factor = reduction_factor(src, target_hw)
    return Prepared(fmt, stored, src, orientation, factor, components)


def reduced_size(stored_hw: tuple, factor: int) -> tuple:
    """Size libjpeg produces at scale 1/factor: ceil(dim / factor)."""
    return (-(-stored_hw[0] // factor), -(-stored_hw[1] // factor))


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip stored pixels to display orientation (EXIF 1..8, as PIL's exif_transpose)."""
    if orientation <= 1 or orientation > 8:
        return img
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(img), -1)
    return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)  # 8


def to_rgb3(img: np.ndarray) -> np.ndarray:
    """Any decoder output (HxW, HxWx1, HxWx3, HxWx4; uint8 or uint16) -> HxWx3 uint8 C-contiguous."""
    if img.dtype != np.uint8:
        if img.dtype == np.uint16 or img.dtype == np.int32:
            img = (img >> 8).astype(np.uint8)
        else:
            img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    c = img.shape[2]
    if c == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if c == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


def decode_info(p: Prepared, factor: int) -> dict:
    return {"src_hw": p.src_hw, "reduced": factor, "format": p.format}


# --------------------------------------------------------------------------- normalize
def _build_luts() -> dict:
    v = np.arange(256, dtype=np.float64)[:, None]  # 256 x 1, computed in float64, cast once
    tables = {
        "tf": np.repeat(v / 127.5 - 1.0, 3, axis=1),
        # caffe: the channels are swapped to BGR before the lookup, so the means are in BGR order
        "caffe": v - np.array([103.939, 116.779, 123.68]),
        "torch": (v / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
        "unit": np.repeat(v / 255.0, 3, axis=1),
    }
    return {k: np.ascontiguousarray(t.astype(np.float32).reshape(1, 256, 3)) for k, t in tables.items()}


_LUTS = _build_luts()


def normalize(img: np.ndarray, mode: str, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 HxWx3 C-contiguous, in one pass (cv2.LUT on a float32 table).
    ``out``: a C-contiguous float32 HxWx3 array to write into (e.g. one row of a batch) instead
    of a new array; it is returned.

    Modes (values computed in float64 and rounded once to float32, so results are exact):
      - ``tf``:    x / 127.5 - 1                                   (range -1..1)
      - ``caffe``: RGB -> BGR, then minus [103.939, 116.779, 123.68] (BGR means)
      - ``torch``: (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
      - ``unit``:  x / 255
      - ``raw``:   float32 0..255
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize expects HxWx3 uint8, got {img.shape} {img.dtype}")
    if out is not None and (out.shape != img.shape or out.dtype != np.float32
                            or not out.flags.c_contiguous):
        raise ValueError(f"normalize out= must be C-contiguous float32 {img.shape}, got "
                         f"{out.shape} {out.dtype}")
    if mode == "raw":
        if out is None:
            return img.astype(np.float32, order="C")
        np.copyto(out, img, casting="unsafe")
        return out
    lut = _LUTS.get(mode)
    if lut is None:
        raise ValueError(f"unknown normalization mode {mode!r}; expected one of {NORMALIZE_MODES}")
    if mode == "caffe":
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # uint8 swap: 3x cheaper than on float32
    if out is None:
        return cv2.LUT(img, lut)
    cv2.LUT(img, lut, dst=out)
    return out


# --------------------------------------------------------------------------- crop
def crop_box_pixels(shape: tuple, box_norm) -> tuple:
    """Normalised (ymin, xmin, ymax, xmax) -> integer (y0, x0, y1, x1), at least 1x1, inside the image.

    Coordinates are clipped to [0, 1]; NaN counts as 0; a box given with min > max is swapped.
    The pixel box covers every pixel the box touches (floor of the start, ceil of the end).
    """
    h, w = shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"cannot crop an empty image of shape {shape}")
    b = np.nan_to_num(np.asarray(box_norm, dtype=np.float64).reshape(4), nan=0.0)
    b = np.clip(b, 0.0, 1.0)
    ymin, ymax = sorted((b[0], b[2]))
    xmin, xmax = sorted((b[1], b[3]))

    def span(lo: float, hi: float, size: int) -> tuple:
        a = min(int(math.floor(lo * size)), size - 1)
        z = max(int(math.ceil(hi * size)), a + 1)
        return a, min(z, size)

    y0, y1 = span(ymin, ymax, h)
    x0, x1 = span(xmin, xmax, w)
    return y0, x0, y1, x1


def crop(img: np.ndarray, box_norm) -> np.ndarray:
    """Crop a normalised box (ymin, xmin, ymax, xmax) out of ``img``; a C-contiguous uint8 copy."""
    y0, x0, y1, x1 = crop_box_pixels(img.shape, box_norm)
    return img[y0:y1, x0:x1].copy()  # a copy: crops outlive the (large) decoded image


# --------------------------------------------------------------------------- interface
class Preprocessor:
    """One backend: decode bytes, resize, normalize. Subclasses implement ``_decode`` and ``resize``."""

    name: str = "base"

    def __init__(self, reduced: str = "auto", max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if reduced not in REDUCED_MODES:
            raise ValueError(f"reduced must be one of {REDUCED_MODES}, got {reduced!r}")
        self.reduced = reduced
        self.max_pixels = max_pixels

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduced={self.reduced!r})"

    def decode(self, data: bytes, target_hw: tuple | None = None) -> tuple[np.ndarray, dict]:
        p = prepare(data, target_hw, self.reduced)
        h, w = p.src_hw
        if self.max_pixels is not None and h * w > self.max_pixels:
            # decoders allocate the full frame before reading pixels: a bomb must stop here
            raise ImageRejected(413, "too_many_pixels",
                                f"The image is {w}x{h} = {h * w / 1e6:.1f} megapixels, over the decoder limit "
                                f"of {self.max_pixels / 1e6:.1f} megapixels: downscale it before sending.")
        try:
            img, factor = self._decode(data, p)
        except ImageRejected:
            raise
        except Exception as e:  # the decoder library refused the data
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = " ... ".join(dict.fromkeys(lines[:1] + lines[-1:]))[:200]
            raise rejected_corrupt(p.format, f"{type(e).__name__}: {detail}") from None
        img = to_rgb3(apply_orientation(img, p.orientation))
        return img, decode_info(p, factor)

    def _decode(self, data: bytes, p: Prepared) -> tuple[np.ndarray, int]:
        """Decode stored pixels (no orientation) at ``p.factor`` if supported; return (img, factor)."""
        raise NotImplementedError

    def resize(self, img: np.ndarray, hw: tuple) -> np.ndarray:
        raise NotImplementedError

    def normalize(self, img: np.ndarray, mode: str, out: np.ndarray | None = None) -> np.ndarray:
        return normalize(img, mode, out)
