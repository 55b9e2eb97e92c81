"""Real photos that ship inside installed packages (no downloads), for calibration and tests."""
from __future__ import annotations

import numpy as np

# sklearn's two sample images (china, flower) and colour photos from skimage.data.
PHOTO_NAMES = (
    "china", "flower", "astronaut", "coffee", "chelsea", "rocket",
    "immunohistochemistry", "hubble_deep_field",
)


def sample_photos(names: tuple[str, ...] = PHOTO_NAMES) -> dict[str, np.ndarray]:
    """name -> RGB uint8 array ``[H, W, 3]``."""
    out: dict[str, np.ndarray] = {}
    if any(n in ("china", "flower") for n in names):
        from sklearn.datasets import load_sample_images
        sk = load_sample_images()
        for fname, img in zip(sk.filenames, sk.images):
            key = fname.rsplit("/", 1)[-1].split(".")[0]
            if key in names:
                out[key] = np.ascontiguousarray(img[..., :3], dtype=np.uint8)
    rest = [n for n in names if n not in out]
    if rest:
        import skimage.data
        for n in rest:
            out[n] = np.ascontiguousarray(getattr(skimage.data, n)()[..., :3], dtype=np.uint8)
    return {n: out[n] for n in names}


def fit_square(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Centre-crop to a square and resize (bilinear) to ``hw``; uint8 RGB out."""
    from PIL import Image
    h, w = rgb.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    img = Image.fromarray(rgb[y:y + s, x:x + s])
    return np.asarray(img.resize((hw[1], hw[0]), Image.BILINEAR), dtype=np.uint8)


def photo_batch(hw: tuple[int, int], flips: bool = False,
                names: tuple[str, ...] = PHOTO_NAMES) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` of the sample photos (and their mirror images if ``flips``)."""
    x = np.stack([fit_square(p, hw) for p in sample_photos(names).values()])
    if flips:
        x = np.concatenate([x, x[:, :, ::-1]])
    return x
