"""Preprocessing backends on real photos: decode, reduced decode, resize, normalize, crop."""
from __future__ import annotations

import io
import sys
import threading

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import pipelines.preprocess as pp
from pipelines.corpus import build_corpus, load_corpus_bytes
from pipelines.preprocess import (NORMALIZE_MODES, PREPROCESSORS, ImageRejected, crop, crop_box_pixels,
                                  get_preprocessor, normalize)
from pipelines.preprocess.base import reduction_factor

TARGET = (224, 224)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus_bytes(build_corpus(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def by_key(corpus):
    return {(ci.name, ci.size_class): (ci, data) for ci, data in corpus}


@pytest.fixture(scope="module")
def small_rgb(by_key):
    _, data = by_key[("astronaut", "0.1MP")]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module", params=PREPROCESSORS)
def pre(request):
    return get_preprocessor(request.param)


def encode(arr, fmt="JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def check_image(img, hw=None):
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.flags["C_CONTIGUOUS"]
    if hw is not None:
        assert img.shape[:2] == tuple(hw)


# --------------------------------------------------------------------------- registry
def test_registry():
    assert PREPROCESSORS[:2] == ("opencv", "pil")
    for name in PREPROCESSORS:
        p = get_preprocessor(name)
        assert p.name == name and p.reduced == "auto"
    assert get_preprocessor("opencv", reduced="off").reduced == "off"
    with pytest.raises(ValueError):
        get_preprocessor("tensorflow")
    with pytest.raises(ValueError):
        get_preprocessor("opencv", reduced="yes")


def test_dali_missing_gives_a_clear_error(monkeypatch):
    # simulate a machine without DALI: Python refuses to import a module mapped to None
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    monkeypatch.delitem(sys.modules, "pipelines.preprocess.dali", raising=False)
    with pytest.raises(ImportError) as ei:
        get_preprocessor("dali")
    assert isinstance(ei.value, pp.BackendUnavailable)
    assert "overhead[dali]" in str(ei.value)


# --------------------------------------------------------------------------- decode
def test_decode_jpeg_and_png(pre, by_key, small_rgb):
    ci, data = by_key[("china", "1MP")]
    img, info = pre.decode(data)
    check_image(img, (ci.height, ci.width))
    assert info == {"src_hw": (ci.height, ci.width), "reduced": 1, "format": "jpeg"}
    png = encode(small_rgb, "PNG")
    img, info = pre.decode(png, TARGET)
    check_image(img, small_rgb.shape[:2])
    assert info["format"] == "png" and info["reduced"] == 1
    np.testing.assert_array_equal(img, small_rgb)  # PNG is lossless: exact everywhere


@pytest.mark.parametrize("src,target,factor", [
    ((2310, 3463), (224, 224), 8), ((817, 1224), (224, 224), 2), ((1000, 1000), (224, 224), 4),
    ((258, 387), (224, 224), 1), ((448, 448), (224, 224), 2), ((447, 1000), (224, 224), 1),
    ((1792, 1792), (224, 224), 8), ((1791, 1792), (224, 224), 4), ((4000, 4000), (224, 224), 8),
    ((1000, 1000), None, 1), ((1000, 1000), (0, 224), 1), ((2310, 3463), (320, 320), 4),
])
def test_reduction_factor(src, target, factor):
    assert reduction_factor(src, target) == factor


def test_reduced_decode_sizes(pre, by_key):
    supports = pre.name != "dali"   # DALI has no DCT-scaled decode
    for (name, size), (ci, data) in by_key.items():
        if name not in ("china", "astronaut"):
            continue
        img, info = pre.decode(data, TARGET)
        f = reduction_factor((ci.height, ci.width), TARGET) if supports else 1
        assert info["reduced"] == f, (name, size)
        assert info["src_hw"] == (ci.height, ci.width)
        check_image(img, (-(-ci.height // f), -(-ci.width // f)))
        assert img.shape[0] >= TARGET[0] and img.shape[1] >= TARGET[1]
        off, info_off = get_preprocessor(pre.name, reduced="off").decode(data, TARGET)
        assert info_off["reduced"] == 1 and off.shape[:2] == (ci.height, ci.width)


def test_reduced_then_resize_close_to_full_then_resize(pre, by_key):
    """Parity: DCT-scaled decode + resize vs full decode + resize, on every 1 MP and 8 MP photo."""
    for (name, size), (ci, data) in by_key.items():
        if size == "0.1MP":
            continue
        full, _ = pre.decode(data)
        red, info = pre.decode(data, TARGET)
        a = pre.resize(full, TARGET).astype(np.int16)
        b = pre.resize(red, TARGET).astype(np.int16)
        mad = np.abs(a - b).mean()
        # measured 0.3-2.9 grey levels (DCT scaling treats the partial last block as whole)
        assert mad < 4.0, (pre.name, name, size, info, mad)
        assert abs(a.mean() - b.mean()) < 1.0


def test_backends_agree(by_key):
    """All backends decode the same pixels (same libjpeg-turbo settings); resizes are close."""
    ref = get_preprocessor("opencv")
    for key in [("china", "1MP"), ("coffee", "8MP"), ("chelsea", "0.1MP")]:
        _, data = by_key[key]
        base, _ = ref.decode(data)
        base_small = ref.resize(base, TARGET).astype(np.int16)
        for name in PREPROCESSORS:
            p = get_preprocessor(name)
            img, _ = p.decode(data)
            diff = np.abs(img.astype(np.int16) - base)
            assert diff.mean() < 0.5 and diff.max() <= 8, (name, key, diff.mean(), diff.max())
            small = p.resize(img, TARGET).astype(np.int16)
            assert np.abs(small - base_small).mean() < 3.0, (name, key)
    # opencv vs pil decode are bit-identical here
    _, data = by_key[("china", "1MP")]
    np.testing.assert_array_equal(get_preprocessor("pil").decode(data)[0], ref.decode(data)[0])


def test_opencv_resize_close_to_exact_area(by_key):
    ref = get_preprocessor("opencv")
    for key in [("china", "8MP"), ("astronaut", "1MP")]:
        img, _ = ref.decode(by_key[key][1])
        for hw in [(224, 224), (320, 320), (100, 300)]:
            exact = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA).astype(np.int16)
            assert np.abs(ref.resize(img, hw).astype(np.int16) - exact).mean() < 1.0, (key, hw)


def test_color_modes_become_rgb(pre, small_rgb):
    gray = np.ascontiguousarray(small_rgb[:, :, 1])
    img, _ = pre.decode(encode(gray, "JPEG", quality=95))
    check_image(img, gray.shape)
    assert (img[:, :, 0] == img[:, :, 1]).all() and (img[:, :, 1] == img[:, :, 2]).all()
    assert np.abs(img[:, :, 0].astype(int) - gray).mean() < 3

    cmyk = io.BytesIO()
    Image.fromarray(small_rgb).convert("CMYK").save(cmyk, "JPEG", quality=95)
    img, info = pre.decode(cmyk.getvalue())
    check_image(img, small_rgb.shape[:2])
    assert np.abs(img.astype(int) - small_rgb).mean() < 6, pre.name

    rgba = np.dstack([small_rgb, np.full(small_rgb.shape[:2], 128, np.uint8)])
    img, _ = pre.decode(encode(rgba, "PNG"))
    np.testing.assert_array_equal(img, small_rgb)         # alpha dropped, colour untouched

    la = Image.fromarray(gray).convert("LA")
    img, _ = pre.decode(encode(np.asarray(la), "PNG"))
    np.testing.assert_array_equal(img[:, :, 2], gray)

    pal = Image.fromarray(small_rgb).quantize(64)
    img, _ = pre.decode(encode(np.asarray(pal.convert("RGB")), "PNG"))
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    img_p, _ = pre.decode(buf.getvalue())
    np.testing.assert_array_equal(img_p, np.asarray(pal.convert("RGB")))

    g16 = (gray.astype(np.uint16) * 257)
    buf = io.BytesIO()
    Image.fromarray(g16).save(buf, "PNG")
    img, _ = pre.decode(buf.getvalue())
    np.testing.assert_array_equal(img[:, :, 0], gray)       # 16-bit scaled to 8-bit


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_like_pil_exif_transpose(pre, small_rgb, orientation):
    rect = np.ascontiguousarray(small_rgb[:200, :300])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(rect, "JPEG", quality=95, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    img, info = pre.decode(data)
    assert info["src_hw"] == expected.shape[:2]
    np.testing.assert_array_equal(img, expected)
    # reduced decode is rotated the same way; the factor is chosen on the displayed size
    img2, info2 = pre.decode(data, (90, 60) if orientation >= 5 else (60, 90))
    if pre.name != "dali":
        assert info2["reduced"] == 2
    assert img2.shape[:2] == (-(-expected.shape[0] // info2["reduced"]), -(-expected.shape[1] // info2["reduced"]))


def test_dali_threads_get_their_own_pipelines(by_key):
    if "dali" not in PREPROCESSORS:
        pytest.skip("DALI not installed")
    p = get_preprocessor("dali")
    datas = [by_key[(n, "0.1MP")][1] for n in ("china", "flower", "coffee", "rocket")]
    expected = [get_preprocessor("opencv").decode(d)[0] for d in datas]
    errors = []

    def work(i):
        for _ in range(3):
            img, _ = p.decode(datas[i])
            if np.abs(img.astype(int) - expected[i]).mean() > 0.5:
                errors.append(i)
            p.resize(img, TARGET)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# --------------------------------------------------------------------------- resize
@pytest.mark.parametrize("hw", [(224, 224), (320, 320), (100, 400), (500, 300), (1, 1), (600, 900), (258, 387)])
def test_resize_exact_shape(pre, small_rgb, hw):
    out = pre.resize(small_rgb, hw)
    check_image(out, hw)


def test_resize_rejects_empty_target(pre, small_rgb):
    with pytest.raises(ValueError):
        pre.resize(small_rgb, (0, 10))


def test_resize_keeps_flat_colour(pre):
    flat = np.full((900, 1300, 3), (10, 128, 250), np.uint8)
    for hw in [(224, 224), (1000, 1500), (50, 2000)]:
        out = pre.resize(flat, hw)
        assert np.abs(out.astype(int) - (10, 128, 250)).max() <= 1, (pre.name, hw)


# --------------------------------------------------------------------------- normalize
def reference(img, mode):
    x = img.astype(np.float64)
    if mode == "tf":
        y = x / 127.5 - 1.0
    elif mode == "caffe":
        y = x[:, :, ::-1] - np.array([103.939, 116.779, 123.68])
    elif mode == "torch":
        y = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    elif mode == "unit":
        y = x / 255.0
    else:
        y = x
    return y.astype(np.float32)


@pytest.mark.parametrize("mode", NORMALIZE_MODES)
def test_normalize_exact(pre, mode):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    img[0, :256 // 3 + 1].reshape(-1)[:256] = np.arange(256, dtype=np.uint8)  # every value present
    for x in (img, img[::2, ::3], np.asfortranarray(img)):
        out = pre.normalize(x, mode)
        assert out.dtype == np.float32 and out.shape == x.shape and out.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(out, reference(np.asarray(x), mode))
        assert not np.shares_memory(out, x)


def test_normalize_values():
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(normalize(red, "caffe")[0, 0], [-103.939, -116.779, 255 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(normalize(red, "tf")[0, 0], [1, -1, -1])
    np.testing.assert_allclose(normalize(red, "unit")[0, 0], [1, 0, 0])
    np.testing.assert_allclose(normalize(red, "torch")[0, 0],
                               [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6)
    assert normalize(red, "raw")[0, 0].tolist() == [255.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        normalize(red, "imagenet")
    with pytest.raises(ValueError):
        normalize(red.astype(np.float32), "tf")


# --------------------------------------------------------------------------- crop
def test_crop_edge_cases():
    img = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    cases = {
        (0.0, 0.0, 1.0, 1.0): (0, 0, 100, 200),            # whole image
        (0.1, 0.25, 0.5, 0.75): (10, 50, 50, 150),
        (0.101, 0.2501, 0.499, 0.7499): (10, 50, 50, 150),  # touched pixels included
        (0.5, 0.5, 0.5, 0.5): (50, 100, 51, 101),           # zero area -> 1x1
        (1.0, 1.0, 1.0, 1.0): (99, 199, 100, 200),          # point on the far border -> last pixel
        (0.0, 0.0, 0.0, 0.0): (0, 0, 1, 1),
        (-0.5, -0.2, 1.5, 2.0): (0, 0, 100, 200),           # outside the image: clipped
        (1.2, 1.3, 1.5, 1.9): (99, 199, 100, 200),          # entirely outside: last pixel
        (0.5, 0.75, 0.1, 0.25): (10, 50, 50, 150),          # min/max swapped
        (float("nan"), 0.0, 0.5, 0.5): (0, 0, 50, 100),     # NaN counts as 0
        (0.0, 0.0, float("inf"), 0.5): (0, 0, 100, 100),
        (0.999, 0.999, 1.0, 1.0): (99, 199, 100, 200),
    }
    for box, (y0, x0, y1, x1) in cases.items():
        assert crop_box_pixels(img.shape, box) == (y0, x0, y1, x1), box
        c = crop(img, box)
        assert c.shape == (y1 - y0, x1 - x0, 3) and c.dtype == np.uint8 and c.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(c, img[y0:y1, x0:x1])
        assert not np.shares_memory(c, img)
    np.testing.assert_array_equal(crop(img, np.array([0.1, 0.25, 0.5, 0.75], np.float32)), img[10:50, 50:150])
    tiny = np.zeros((1, 1, 3), np.uint8)
    assert crop(tiny, (0.3, 0.3, 0.2, 0.9)).shape == (1, 1, 3)
    with pytest.raises(ValueError):
        crop(np.zeros((0, 5, 3), np.uint8), (0, 0, 1, 1))


def test_full_pipeline_on_every_corpus_image(pre, corpus):
    for ci, data in corpus:
        img, info = pre.decode(data, TARGET)
        x = pre.normalize(pre.resize(img, TARGET), "torch")
        assert x.shape == (224, 224, 3) and np.isfinite(x).all()
        c = crop(img, (0.25, 0.25, 0.75, 0.75))
        assert c.shape[0] >= img.shape[0] // 2


def test_decode_rejects_bad_input_type_cleanly(pre):
    with pytest.raises(ImageRejected):
        pre.decode(b"\x89PNG\r\n\x1a\n")
