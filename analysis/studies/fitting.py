"""Pure functions for the batch-latency study (no I/O): warm-up detection, linear fit, limits.

* ``detect_warmup(runs, k)``: the leading runs that are outliers above the steady state
  (run > median + k * 1.4826 * MAD of the runs after the first; MAD floored at 1% of the median
  so perfectly flat timings do not flag noise). Returns how many leading runs are warm-up.
* ``fit_linear(batch, latency)``: least squares ``latency = a * batch + c`` with R^2.
* ``largest_batch_within(medians, limit)``: the largest measured batch whose median is <= limit
  (and every smaller measured batch too, so a noisy point does not skip a gap).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_SCALE = 1.4826   # MAD -> standard deviation for a normal distribution


@dataclass(frozen=True)
class LinearFit:
    a: float          # ms per image
    c: float          # ms per batch (intercept)
    r2: float
    n: int

    def predict(self, batch) -> np.ndarray:
        return self.a * np.asarray(batch, dtype=float) + self.c

    def max_batch_for(self, limit: float) -> int:
        """Largest integer batch whose FITTED latency is <= limit (0 if even batch 1 is over)."""
        if self.a <= 0:
            return 0 if self.c > limit else np.iinfo(np.int64).max
        return max(0, int(np.floor((limit - self.c) / self.a + 1e-12)))


def robust_threshold(values, k: float = 5.0) -> float:
    v = np.asarray(values, dtype=float)
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    return med + k * MAD_SCALE * max(mad, 0.01 * abs(med))


def detect_warmup(runs, k: float = 5.0, max_warmup: int | None = None) -> int:
    """Number of leading warm-up runs: scan from the first run while it exceeds the robust
    threshold computed from the runs after the first one. At least 3 later runs are needed to
    judge; with fewer, nothing is flagged. ``max_warmup`` caps the count (default: half)."""
    r = np.asarray(runs, dtype=float)
    if r.size < 4:
        return 0
    cap = r.size // 2 if max_warmup is None else max_warmup
    thr = robust_threshold(r[1:], k)
    n = 0
    while n < cap and r[n] > thr:
        n += 1
    return n


def fit_linear(batch, latency) -> LinearFit:
    x = np.asarray(batch, dtype=float)
    y = np.asarray(latency, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("fit_linear needs at least two different batch sizes")
    A = np.column_stack([x, np.ones_like(x)])
    (a, c), *_ = np.linalg.lstsq(A, y, rcond=None)
    ss_res = float(np.sum((y - (a * x + c)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return LinearFit(float(a), float(c), r2, int(x.size))


def largest_batch_within(medians: dict, limit: float) -> int | None:
    """``medians``: {batch: median ms}. Largest b such that all measured b' <= b are <= limit."""
    best = None
    for b in sorted(medians):
        if medians[b] <= limit:
            best = b
        else:
            break
    return best
