"""Upload validation and decoder rejection, on real photos and real encoders (no mocks)."""
from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from pipelines.corpus import build_corpus, load_corpus_bytes
from pipelines.preprocess import PREPROCESSORS, ImageProbe, ImageRejected, get_preprocessor, inspect_image
from pipelines.preprocess.formats import HeaderError, check_jpeg_complete, parse_jpeg_header

MAX_BYTES = 20_000_000
MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    images = build_corpus(tmp_path_factory.mktemp("corpus"), sizes=("0.1MP", "1MP"),
                          photos=["china", "astronaut"])
    return {(ci.name, ci.size_class): data for ci, data in load_corpus_bytes(images)}


@pytest.fixture(scope="module")
def jpeg(photos):
    return photos[("china", "0.1MP")]


@pytest.fixture(scope="module")
def rgb(jpeg):
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


@pytest.fixture(scope="module")
def backends():
    return {name: get_preprocessor(name) for name in PREPROCESSORS}


def encode(arr, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def rejected(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS) -> ImageRejected:
    with pytest.raises(ImageRejected) as ei:
        inspect_image(data, max_bytes, max_pixels)
    return ei.value


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def png_bomb(width=30000, height=30000) -> bytes:
    """A tiny, structurally valid PNG whose header claims width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + png_chunk(b"IEND", b""))


def patch_sof(data: bytes, width: int, height: int) -> bytes:
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


# --------------------------------------------------------------------------- accepted
def test_accepts_real_jpeg_and_png(photos, rgb):
    data = photos[("astronaut", "1MP")]
    assert inspect_image(data, MAX_BYTES, MAX_PIXELS) == ImageProbe("jpeg", 1000, 1000)
    png = encode(rgb, "PNG")
    assert inspect_image(png, MAX_BYTES, MAX_PIXELS) == ImageProbe("png", rgb.shape[1], rgb.shape[0])
    # bytes-like inputs work too
    assert inspect_image(memoryview(png), MAX_BYTES, MAX_PIXELS).format == "png"
    assert inspect_image(bytearray(data), MAX_BYTES, MAX_PIXELS).width == 1000


def test_limits_are_inclusive(photos):
    data = photos[("astronaut", "1MP")]
    assert inspect_image(data, len(data), 1000 * 1000).width == 1000


# --------------------------------------------------------------------------- 400 / 413 size
def test_empty_body():
    e = rejected(b"")
    assert (e.status, e.code) == (400, "empty_body")
    assert "JPEG or PNG" in e.message
    assert e.as_dict() == {"error": "empty_body", "message": e.message}


def test_too_large(photos):
    data = photos[("china", "1MP")]
    e = rejected(data, max_bytes=len(data) - 1)
    assert (e.status, e.code) == (413, "too_large")
    assert "smaller" in e.message


# --------------------------------------------------------------------------- 415
@pytest.mark.parametrize("data", [
    np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8).tobytes(),
    b"Hello, this is a plain text file, not a picture.\n" * 20,
    b'{"image": "base64 goes here"}',
    b"BM is also how this text starts",
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",
    b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",   # an MP4 video header
], ids=["random", "text", "json", "text-BM", "pdf", "mp4"])
def test_not_an_image(data):
    e = rejected(data)
    assert (e.status, e.code) == (415, "not_an_image")
    assert "JPEG or PNG" in e.message


@pytest.mark.parametrize("fmt,name,kw", [
    ("GIF", "GIF", {}), ("BMP", "BMP", {}), ("WEBP", "WebP", {"quality": 80}),
    ("TIFF", "TIFF", {}), ("PPM", "PNM", {}), ("ICO", "ICO", {}),
])
def test_unsupported_formats_made_with_pil(rgb, fmt, name, kw):
    data = encode(rgb[:64, :64], fmt, **kw)
    e = rejected(data)
    assert (e.status, e.code) == (415, "unsupported_format")
    assert name in e.message and "JPEG or PNG" in e.message


@pytest.mark.parametrize("data,name", [
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64), "AVIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(64), "JPEG 2000"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
], ids=["heic", "avif", "jp2", "svg"])
def test_unsupported_formats_by_signature(data, name):
    e = rejected(data)
    assert (e.status, e.code) == (415, "unsupported_format")
    assert name in e.message


# --------------------------------------------------------------------------- 413 bombs
def test_png_bomb_header_is_rejected_without_decoding():
    bomb = png_bomb(30000, 30000)
    assert len(bomb) < 200
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        e = rejected(bomb)
        elapsed = time.perf_counter() - t0
    assert (e.status, e.code) == (413, "too_many_pixels")
    assert "30000x30000" in e.message and "900.0 megapixels" in e.message and "40.0" in e.message
    assert not caught, [str(w.message) for w in caught]       # no PIL DecompressionBombWarning
    assert elapsed < 0.05   # a decode of 900 MP would take seconds and 2.7 GB


def test_jpeg_bomb_header(photos):
    bomb = patch_sof(photos[("china", "0.1MP")], 65000, 65000)
    e = rejected(bomb)
    assert (e.status, e.code) == (413, "too_many_pixels")
    assert "65000x65000" in e.message


def test_decoders_refuse_bombs_before_allocating(backends):
    bomb = png_bomb(30000, 30000)
    for name, pre in backends.items():
        with pytest.raises(ImageRejected) as ei:
            pre.decode(bomb, (224, 224))
        assert (ei.value.status, ei.value.code) == (413, "too_many_pixels"), name


def test_pil_decompression_bomb_error_is_mapped():
    # the decoder guard off: Pillow's own DecompressionBombError (> 2 * MAX_IMAGE_PIXELS) must
    # become a 413, not a 500
    pre = get_preprocessor("pil", max_pixels=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageRejected) as ei:
            pre.decode(png_bomb(30000, 30000))
    assert (ei.value.status, ei.value.code) == (413, "too_many_pixels")


# --------------------------------------------------------------------------- 422 header
def corrupt_headers(jpeg: bytes, png: bytes):
    sof = jpeg.index(b"\xff\xc0")
    return {
        "jpeg-soi-only": b"\xff\xd8",
        "jpeg-cut-in-header": jpeg[:sof + 4],
        "jpeg-no-marker": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x01" * 7 + b"garbage" * 5,
        "jpeg-bad-length": b"\xff\xd8\xff\xe0\x00\x01" + jpeg[6:],
        "jpeg-zero-width": patch_sof(jpeg, 0, 100),
        "jpeg-sos-before-sof": b"\xff\xd8\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + bytes(100),
        "png-signature-only": png[:8],
        "png-cut-ihdr": png[:20],
        "png-no-ihdr": png[:8] + png_chunk(b"tEXt", b"hello") + png[8:],
        "png-zero-size": png[:8] + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)) + png[33:],
        "png-bad-depth": png[:8] + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 7, 2, 0, 0, 0)) + png[33:],
    }


@pytest.mark.parametrize("case", [
    "jpeg-soi-only", "jpeg-cut-in-header", "jpeg-no-marker", "jpeg-bad-length", "jpeg-zero-width",
    "jpeg-sos-before-sof", "png-signature-only", "png-cut-ihdr", "png-no-ihdr", "png-zero-size",
    "png-bad-depth"])
def test_corrupt_header(jpeg, rgb, backends, case):
    data = corrupt_headers(jpeg, encode(rgb, "PNG"))[case]
    e = rejected(data)
    assert (e.status, e.code) == (422, "corrupt_image"), e
    for name, pre in backends.items():   # decoders refuse them too, never a 500
        with pytest.raises(ImageRejected) as ei:
            pre.decode(data)
        assert ei.value.status == 422, (name, ei.value)


# --------------------------------------------------------------------------- truncation
def cut_points(data: bytes, start: int) -> list[int]:
    rng = np.random.default_rng(7)
    pts = set(rng.integers(start, len(data) - 1, 25).tolist())
    pts |= set(range(len(data) - 12, len(data)))   # every cut in the last bytes, EOI included
    pts |= {start, start + 1, start + 2, start + 20}
    return sorted(pts)


def jpeg_variants(rgb) -> dict:
    big = np.ascontiguousarray(np.concatenate([rgb, rgb[::-1]], axis=0))
    import cv2
    ok, rst = cv2.imencode(".jpg", big[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90,
                                                       cv2.IMWRITE_JPEG_RST_INTERVAL, 4])
    assert ok
    base = encode(big, "JPEG", quality=90)
    # an APP1 "thumbnail" carrying its own FF D8 ... FF D9 before the frame: must not count as EOI
    fake_thumb = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00" + b"\xff\xd8\xff\xdb\x00\x02\xff\xd9"
    app1 = b"\xff\xe1" + struct.pack(">H", len(fake_thumb) + 2) + fake_thumb
    return {
        "baseline": base,
        "progressive": encode(big, "JPEG", quality=90, progressive=True),
        "restart-markers": rst.tobytes(),
        "gray": encode(np.ascontiguousarray(big[:, :, 1]), "JPEG", quality=90),
        "cmyk": _cmyk(big),
        "thumbnail-with-eoi": base[:2] + app1 + base[2:],
    }


def _cmyk(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("variant", ["baseline", "progressive", "restart-markers", "gray", "cmyk",
                                     "thumbnail-with-eoi"])
def test_truncation_detection_is_exact(rgb, variant):
    """Our structure walk rejects a cut exactly when libjpeg-turbo itself reports the stream as
    incomplete (simplejpeg strict is the oracle), and accepts the intact file + trailing bytes."""
    data = jpeg_variants(rgb)[variant]
    h = parse_jpeg_header(data)
    check_jpeg_complete(data, h)
    check_jpeg_complete(data + b"\x00trailing data after EOI\xff", h)
    colorspace = "CMYK" if variant == "cmyk" else "RGB"
    simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)   # the oracle accepts the file
    for cut in cut_points(data, h.sos_offset):
        piece = data[:cut]
        with pytest.raises(HeaderError):
            check_jpeg_complete(piece, h)
        with pytest.raises(ValueError):
            simplejpeg.decode_jpeg(piece, colorspace=colorspace, strict=True)


def test_real_truncated_jpeg_rejected_by_every_backend(photos, backends):
    data = photos[("china", "1MP")]
    cut = data[: len(data) * 2 // 3]
    # the header is intact: inspect_image (header only) lets it through ...
    assert inspect_image(cut, MAX_BYTES, MAX_PIXELS) == ImageProbe("jpeg", 1224, 817)
    # ... and every backend rejects it as truncated, at full size and reduced. (OpenCV 4.x
    # returns a grey-filled image for this with only a warning; OpenCV 5.0 returns None, which
    # alone could not tell truncation from any other failure.)
    for name, pre in backends.items():
        for target in (None, (224, 224)):
            with pytest.raises(ImageRejected) as ei:
                pre.decode(cut, target)
            assert (ei.value.status, ei.value.code) == (422, "truncated_image"), name
            assert "truncated" in ei.value.message


def test_truncated_png_rejected_by_every_backend(rgb, backends):
    png = encode(rgb, "PNG")
    for cut in (len(png) // 2, len(png) - 1, len(png) - 12, 40):
        for name, pre in backends.items():
            with pytest.raises(ImageRejected) as ei:
                pre.decode(png[:cut])
            assert (ei.value.status, ei.value.code) == (422, "truncated_image"), (name, cut)


def test_png_with_bad_crc_or_broken_data(rgb, backends):
    png = encode(rgb, "PNG")
    i = png.index(b"IDAT")
    length = struct.unpack(">I", png[i - 4:i])[0]
    bad_crc = bytearray(png)
    bad_crc[i + 4 + length] ^= 0xFF
    broken = bytearray(png)
    broken[i + 4 + length // 2: i + 4 + length // 2 + 16] = bytes(16)
    broken[i + 4 + length: i + 8 + length] = struct.pack(">I", zlib.crc32(bytes(broken[i:i + 4 + length])))
    for data in (bytes(bad_crc), bytes(broken)):
        for name, pre in backends.items():
            with pytest.raises(ImageRejected) as ei:
                pre.decode(data)
            assert (ei.value.status, ei.value.code) == (422, "corrupt_image"), name


# --------------------------------------------------------------------------- corrupt data
def garbage_in_middle(data: bytes, size=2048, seed=3) -> bytes:
    g = bytearray(data)
    mid = len(g) // 2
    g[mid:mid + size] = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    return bytes(g)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_jpeg_with_garbage_in_the_middle(photos, backends, seed):
    data = garbage_in_middle(photos[("china", "1MP")], seed=seed)
    assert inspect_image(data, MAX_BYTES, MAX_PIXELS).format == "jpeg"   # header intact
    for name, pre in backends.items():
        with pytest.raises(ImageRejected) as ei:
            pre.decode(data, (224, 224))
        assert (ei.value.status, ei.value.code) == (422, "corrupt_image"), name


def test_simplejpeg_backend_rejects_bit_errors_in_scan_data(photos):
    """Garbage without 0xFF keeps the marker structure valid: libjpeg only warns. The strict
    simplejpeg backend still rejects it (the others decode damaged pixels: documented)."""
    data = bytearray(photos[("china", "1MP")])
    mid = len(data) // 2
    data[mid:mid + 1000] = np.random.default_rng(0).integers(0, 255, 1000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageRejected) as ei:
        get_preprocessor("simplejpeg").decode(bytes(data))
    assert (ei.value.status, ei.value.code) == (422, "corrupt_image")


def test_decoders_reject_non_images(backends, rgb):
    gif = encode(rgb[:32, :32], "GIF")
    for name, pre in backends.items():
        with pytest.raises(ImageRejected) as ei:
            pre.decode(gif)
        assert (ei.value.status, ei.value.code) == (415, "unsupported_format"), name
        with pytest.raises(ImageRejected) as ei:
            pre.decode(b"just some text")
        assert (ei.value.status, ei.value.code) == (415, "not_an_image"), name
        with pytest.raises(ImageRejected) as ei:
            pre.decode(b"")
        assert ei.value.status == 400


def test_backends_still_work_after_rejections(backends, jpeg):
    for name, pre in backends.items():
        with pytest.raises(ImageRejected):
            pre.decode(garbage_in_middle(jpeg, size=512))
        img, info = pre.decode(jpeg)
        assert img.shape == (258, 387, 3), name
