"""The image corpus: real package photos rendered as JPEG at three size classes, cached."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.corpus import (PHOTOS, SIZE_CLASSES, SIZE_PIXELS, CorpusImage, build_corpus, default_cache_dir,
                              load_corpus_bytes, load_photo, main)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, build_corpus(out)


def test_every_photo_at_every_size(built):
    out, images = built
    assert len(images) == len(PHOTOS) * len(SIZE_CLASSES)
    assert {(i.name, i.size_class) for i in images} == {(p, s) for p in PHOTOS for s in SIZE_CLASSES}
    for im in images:
        assert isinstance(im, CorpusImage) and im.path.parent == out and im.path.suffix == ".jpg"
        target = SIZE_PIXELS[im.size_class]
        assert abs(im.width * im.height - target) / target < 0.15, im   # within +-15%
        assert im.nbytes == im.path.stat().st_size > 0


def test_files_are_the_photos_as_jpeg(built):
    _, images = built
    for im, data in load_corpus_bytes(images):
        assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9" and len(data) == im.nbytes
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
        assert img.shape == (im.height, im.width, 3)
        photo = load_photo(im.name)
        h, w = photo.shape[:2]
        assert abs(im.width / im.height - w / h) < 0.01 * (w / h)      # aspect ratio kept
        # the content is that photo: compare at the original size
        back = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(np.int16)
        assert np.abs(back - photo).mean() < 12, im


def test_cache_is_reused(built):
    out, images = built
    stamps = {im.path: (im.path.stat().st_mtime_ns, im.path.stat().st_ino) for im in images}
    again = build_corpus(out)
    assert again == images
    assert {im.path: (im.path.stat().st_mtime_ns, im.path.stat().st_ino) for im in again} == stamps
    # a missing file is rebuilt, identical bytes, the others untouched
    victim = images[4].path
    before = victim.read_bytes()
    victim.unlink()
    third = build_corpus(out)
    assert third == images and victim.read_bytes() == before
    for im in third:
        if im.path != victim:
            assert (im.path.stat().st_mtime_ns, im.path.stat().st_ino) == stamps[im.path]
    assert not list(out.glob("*.tmp"))   # atomic writes leave nothing behind


def test_default_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERHEAD_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "corpus"
    images = build_corpus(sizes=("0.1MP",), photos=["china"])
    assert [im.path.parent for im in images] == [tmp_path / "corpus"]
    monkeypatch.delenv("OVERHEAD_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "overhead" / "corpus"


def test_subset_and_quality(tmp_path):
    q90 = build_corpus(tmp_path, sizes=("1MP",), photos=["coffee"])
    q50 = build_corpus(tmp_path, sizes=("1MP",), photos=["coffee"], quality=50)
    assert q90[0].path != q50[0].path and q50[0].nbytes < q90[0].nbytes
    with pytest.raises(ValueError):
        build_corpus(tmp_path, sizes=("2MP",))
    with pytest.raises(ValueError):
        build_corpus(tmp_path, photos=["lena"])


def test_cli(built, capsys):
    out, images = built
    assert main(["--out", str(out), "--sizes", "0.1MP", "8MP"]) == 0
    text = capsys.readouterr().out
    sizes = {ln.split()[1] for ln in text.splitlines()[1:] if ln.strip()}
    assert sizes == {"0.1MP", "8MP"} and "china" in text
    res = subprocess.run([sys.executable, "-m", "pipelines.corpus", "--out", str(out), "--photos", "rocket"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len([ln for ln in res.stdout.splitlines() if ln.startswith("rocket")]) == 3
