"""The image corpus: real photographs that ship inside installed packages, as JPEG files.

Photos: ``china`` and ``flower`` from ``sklearn.datasets.load_sample_images()`` (427x640), and
``astronaut`` (512x512), ``coffee`` (400x600), ``chelsea`` (300x451) and ``rocket`` (427x640)
from ``skimage.data``. Nothing is downloaded.

Each photo is rendered, keeping its aspect ratio, at three size classes and encoded as JPEG
(Pillow, quality 90, 4:2:0, baseline):

- ``0.1MP`` — about 100 000 pixels (downscaled, ``INTER_AREA``);
- ``1MP``   — about 1 000 000 pixels;
- ``8MP``   — about 8 000 000 pixels.

The originals are 0.14-0.27 MP, so **1MP and 8MP are upscales** (bicubic) of these photos, not
camera images: they are smooth, and their JPEGs are smaller than a real 8 MP photo at the same
quality (0.6-1.1 bits/pixel here against 2-4 for a camera). Entropy decoding, which is
proportional to the compressed size and cannot be skipped by a DCT-reduced decode, is therefore
a smaller share of decode time than with camera photos; ``python -m pipelines.corpus`` prints
bits per pixel so reports can say so.

Files are cached in ``$OVERHEAD_CACHE_DIR/corpus`` (default ``~/.cache/overhead/corpus``), written
atomically (temporary file + rename) and built only when missing. The file name carries the
photo, size class, quality and a corpus version, so changing any of them makes new files.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SIZE_CLASSES = ("0.1MP", "1MP", "8MP")
SIZE_PIXELS = {"0.1MP": 100_000, "1MP": 1_000_000, "8MP": 8_000_000}
PHOTOS = ("china", "flower", "astronaut", "coffee", "chelsea", "rocket")
CORPUS_VERSION = 1


@dataclass(frozen=True)
class CorpusImage:
    name: str          # photo name, e.g. "china"
    size_class: str    # "0.1MP" | "1MP" | "8MP"
    path: Path
    width: int
    height: int
    nbytes: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def bits_per_pixel(self) -> float:
        return 8.0 * self.nbytes / (self.width * self.height)


def default_cache_dir() -> Path:
    root = os.environ.get("OVERHEAD_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "overhead"
    return base / "corpus"


def load_photo(name: str):
    """The original photo as an HxWx3 uint8 RGB array."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images
        ds = load_sample_images()
        return ds.images[[Path(f).stem for f in ds.filenames].index(name)]
    if name in ("astronaut", "coffee", "chelsea", "rocket"):
        import skimage.data
        return getattr(skimage.data, name)()
    raise ValueError(f"unknown photo {name!r}; choose from {PHOTOS}")


def target_size(h: int, w: int, pixels: int) -> tuple[int, int]:
    """(height, width) with about ``pixels`` pixels and the aspect ratio of h x w."""
    scale = math.sqrt(pixels / (h * w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def render(photo, size_class: str, quality: int = 90) -> bytes:
    """Resize ``photo`` to the size class and encode it as JPEG."""
    import cv2
    from PIL import Image
    h, w = photo.shape[:2]
    th, tw = target_size(h, w, SIZE_PIXELS[size_class])
    interp = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_CUBIC
    img = cv2.resize(photo, (tw, th), interpolation=interp)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _probe(path: Path, name: str, size_class: str) -> CorpusImage:
    from .preprocess.formats import parse_jpeg_header
    data = path.read_bytes()
    h = parse_jpeg_header(data, need_sos=False)
    return CorpusImage(name, size_class, path, h.width, h.height, len(data))


def build_corpus(out_dir: Path | None = None, sizes=SIZE_CLASSES, photos=None,
                 quality: int = 90) -> list[CorpusImage]:
    """Render (or reuse from the cache) every photo at every size class; ordered by size, photo."""
    out = Path(out_dir) if out_dir is not None else default_cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    photos = tuple(photos) if photos is not None else PHOTOS
    for s in sizes:
        if s not in SIZE_PIXELS:
            raise ValueError(f"unknown size class {s!r}; choose from {SIZE_CLASSES}")
    images = []
    originals = {}
    for size_class in sizes:
        for name in photos:
            path = out / f"{name}_{size_class}_q{quality}_v{CORPUS_VERSION}.jpg"
            if not path.exists():
                if name not in originals:
                    originals[name] = load_photo(name)
                _write_atomic(path, render(originals[name], size_class, quality))
            images.append(_probe(path, name, size_class))
    return images


def load_corpus_bytes(images) -> list[tuple[CorpusImage, bytes]]:
    """Read the files of ``images`` into memory (the load generator sends these bytes)."""
    return [(img, Path(img.path).read_bytes()) for img in images]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.corpus", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help=f"directory (default {default_cache_dir()})")
    ap.add_argument("--sizes", nargs="+", default=list(SIZE_CLASSES), choices=SIZE_CLASSES)
    ap.add_argument("--photos", nargs="+", default=None, choices=PHOTOS)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args(argv)
    images = build_corpus(args.out, sizes=args.sizes, photos=args.photos, quality=args.quality)
    print(f"{'name':<10} {'size':<6} {'WxH':>11} {'MP':>6} {'bytes':>9} {'bpp':>5}  path")
    for im in images:
        print(f"{im.name:<10} {im.size_class:<6} {f'{im.width}x{im.height}':>11} {im.megapixels:6.2f} "
              f"{im.nbytes:9d} {im.bits_per_pixel:5.2f}  {im.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
