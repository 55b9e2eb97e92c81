"""NVIDIA DALI backend (optional: ``pip install 'overhead[dali]'``), CPU pipelines at batch size 1.

Each operation is one small DALI pipeline fed through ``external_source``:
``decoders.image(device="cpu")`` (nvImageCodec / libjpeg-turbo) and ``resize`` (linear,
antialiased: DALI's default). Pipelines are built with ``device_id=None`` (CPU only; the
``CPU_ONLY_DEVICE_ID`` constant fails), synchronous execution, one DALI worker thread by
default, one set per calling thread (a DALI pipeline is not thread-safe), one resize pipeline
per target size. A pipeline that raised is discarded and rebuilt (DALI marks it invalid).

- Reduced decode: DALI has no DCT-scaled JPEG decode, so ``info["reduced"]`` is always 1 and
  ``reduced="auto"`` decodes at full size. This is part of what the benchmark shows.
- Normalize is the shared numpy/cv2 one (a DALI ``crop_mirror_normalize`` pipeline costs a
  pipeline round trip for what is one table lookup).
- The outputs are copied out of DALI's buffers, which DALI reuses on the next run.
"""
from __future__ import annotations

import threading

import numpy as np

try:
    from nvidia.dali import fn, pipeline_def, types
except ImportError as e:  # pragma: no cover - exercised only without DALI
    raise ImportError(
        "The 'dali' preprocessor needs NVIDIA DALI: pip install 'overhead[dali]' "
        f"(package nvidia-dali-cuda120). Import failed: {e}") from e

from .base import Prepared, Preprocessor


def _build_decode(num_threads: int):
    @pipeline_def(batch_size=1, num_threads=num_threads, device_id=None, prefetch_queue_depth=1,
                  exec_async=False, exec_pipelined=False)
    def decode_pipe():
        enc = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(enc, device="cpu", output_type=types.RGB, adjust_orientation=False)

    pipe = decode_pipe()
    pipe.build()
    return pipe


def _build_resize(num_threads: int, h: int, w: int):
    @pipeline_def(batch_size=1, num_threads=num_threads, device_id=None, prefetch_queue_depth=1,
                  exec_async=False, exec_pipelined=False)
    def resize_pipe():
        img = fn.external_source(name="image", dtype=types.UINT8, ndim=3, layout="HWC")
        return fn.resize(img, resize_x=w, resize_y=h, interp_type=types.INTERP_LINEAR, antialias=True)

    pipe = resize_pipe()
    pipe.build()
    return pipe


class DALIPreprocessor(Preprocessor):
    name = "dali"

    def __init__(self, reduced: str = "auto", num_threads: int = 1, **kwargs):
        super().__init__(reduced, **kwargs)
        self.num_threads = int(num_threads)
        self._local = threading.local()

    def _pipes(self) -> dict:
        pipes = getattr(self._local, "pipes", None)
        if pipes is None:
            pipes = self._local.pipes = {}
        return pipes

    def _run(self, key, build, input_name: str, array: np.ndarray) -> np.ndarray:
        pipes = self._pipes()
        pipe = pipes.get(key)
        if pipe is None:
            pipe = pipes[key] = build()
        try:
            pipe.feed_input(input_name, [array])
            (out,) = pipe.run()
        except Exception as e:
            pipes.pop(key, None)  # DALI: "Current pipeline object is no longer valid"
            lines = [ln.strip() for ln in str(e).splitlines()
                     if ln.strip() and "no longer valid" not in ln]
            raise RuntimeError(f"DALI {key if isinstance(key, str) else key[0]} failed: "
                               f"{lines[-1] if lines else type(e).__name__}") from e
        return np.array(out[0], copy=True)

    def _decode(self, data: bytes, p: Prepared) -> tuple[np.ndarray, int]:
        img = self._run("decode", lambda: _build_decode(self.num_threads), "encoded",
                        np.frombuffer(data, dtype=np.uint8))
        return img, 1

    def resize(self, img: np.ndarray, hw: tuple) -> np.ndarray:
        th, tw = int(hw[0]), int(hw[1])
        if th < 1 or tw < 1:
            raise ValueError(f"resize target must be at least 1x1, got {hw}")
        if img.shape[:2] == (th, tw):
            return np.ascontiguousarray(img)
        return self._run(("resize", th, tw), lambda: _build_resize(self.num_threads, th, tw), "image",
                         np.ascontiguousarray(img))
