"""Upload validation: cheap checks before anything is decoded.

``inspect_image`` reads only magic bytes and the header (JPEG segments up to the frame header,
PNG IHDR) with the parsers of ``formats.py``; it never decodes pixels and never calls PIL, so a
decompression bomb (a tiny PNG claiming 30000x30000) costs microseconds and no memory, and PIL's
``DecompressionBombWarning``/``DecompressionBombError`` cannot fire here. Checks, in order:

==========  ======================  ==================================================
status      code                    when
==========  ======================  ==================================================
400         ``empty_body``          no bytes
413         ``too_large``           more than ``max_bytes``
415         ``not_an_image``        magic bytes of no image format we know
415         ``unsupported_format``  a recognised image format other than JPEG or PNG
422         ``corrupt_image``       JPEG/PNG header unreadable, cut short or invalid
413         ``too_many_pixels``     width*height over ``max_pixels``
==========  ======================  ==================================================

Decoders (``pipelines.preprocess``) raise the same exception with status 422 and code
``truncated_image`` or ``corrupt_image`` for damage found while decoding.
"""
from __future__ import annotations

from dataclasses import dataclass

from .formats import HeaderError, TruncatedError, parse_jpeg_header, parse_png_header, sniff_format

ACCEPTED = "JPEG or PNG"


class ImageRejected(Exception):
    """An upload the service will not process; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def as_dict(self) -> dict:
        return {"error": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"ImageRejected({self.status}, {self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class ImageProbe:
    format: str   # "jpeg" | "png"
    width: int    # as stored in the file (before EXIF orientation)
    height: int


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def rejected_unsupported(fmt: str) -> ImageRejected:
    return ImageRejected(415, "unsupported_format",
                         f"{fmt} images are not supported: send the image as {ACCEPTED}.")


def rejected_not_image() -> ImageRejected:
    return ImageRejected(415, "not_an_image",
                         f"The request body is not an image: send the raw bytes of a {ACCEPTED} file.")


def supported_format(data: bytes) -> str:
    """``"jpeg"`` or ``"png"`` from the magic bytes; ImageRejected (415) for anything else."""
    fmt = sniff_format(data)
    if fmt is None:
        raise rejected_not_image()
    if fmt not in ("jpeg", "png"):
        raise rejected_unsupported(fmt)
    return fmt


def rejected_corrupt(fmt: str, detail: str, truncated: bool = False) -> ImageRejected:
    if truncated:
        return ImageRejected(422, "truncated_image",
                             f"The {fmt.upper()} data is truncated ({detail}): the upload was cut short; "
                             "send the complete file.")
    return ImageRejected(422, "corrupt_image",
                         f"The {fmt.upper()} data is corrupt ({detail}): re-export or re-encode the image "
                         "and try again.")


def inspect_image(data: bytes, max_bytes: int, max_pixels: int) -> ImageProbe:
    """Validate an upload from its header alone; raise ``ImageRejected`` or return its probe."""
    n = len(data) if data is not None else 0
    if n == 0:
        raise ImageRejected(400, "empty_body",
                            f"The request body is empty: POST the raw bytes of a {ACCEPTED} image.")
    if n > max_bytes:
        raise ImageRejected(413, "too_large",
                            f"The upload is {_mb(n)}, over the limit of {_mb(max_bytes)}: "
                            "send a smaller or more compressed image.")
    fmt = supported_format(data)
    try:
        if fmt == "jpeg":
            h = parse_jpeg_header(data, need_sos=False)
        else:
            h = parse_png_header(data)
    except TruncatedError as e:
        # a header cut short is unreadable: report it as corrupt, saying why
        raise ImageRejected(422, "corrupt_image",
                            f"The {fmt.upper()} header is unreadable ({e}): send the complete file.") from None
    except HeaderError as e:
        raise ImageRejected(422, "corrupt_image",
                            f"The {fmt.upper()} header is unreadable ({e}): re-export the image "
                            "and try again.") from None
    pixels = h.width * h.height
    if pixels > max_pixels:
        raise ImageRejected(413, "too_many_pixels",
                            f"The image is {h.width}x{h.height} = {pixels / 1e6:.1f} megapixels, over the "
                            f"limit of {max_pixels / 1e6:.1f} megapixels ({max_pixels} pixels): "
                            "downscale it before sending.")
    return ImageProbe(fmt, h.width, h.height)
