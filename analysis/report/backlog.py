"""Which crop a span belongs to, which worker took it, and how long each crop waited for a busy
worker (``backlog``) rather than for the broker itself (``broker``).

A classifier worker puts ``{"crop": i, "worker": NAME}`` in the attrs of every span it records;
the gateway's ``classify-broker`` span of a result's trip carries ``"leg": "results"``. So:

- a worker's **busy intervals** are, per crop it took, [first start, last end] of that crop's
  worker spans (serialize, resize, normalize, queue, inference: everything but the broker legs);
- a crop's wait for the classifier is its crops-leg ``classify-broker`` span ``[produce, deliver]``;
- its **backlog** is the part of that wait during which the worker that took it was busy with
  other crops (a crop's own busy interval starts after its delivery, so it never counts); the rest
  is **broker** transit (publish, hand-over, the worker's consume/ack between crops).

Overlap with a worker's busy time is exact: ``B_w(t)`` = busy time of worker ``w`` up to ``t``
(piecewise linear through the merged intervals' ends, ``np.interp``), overlap = ``B_w(hi) - B_w(lo)``.
Spans of old runs carry no ``worker``: their waits stay ``broker`` (``Busy.known`` is False). A
crop's spans that lost the attr (Triton's trace joined in place of the client's inference span)
take the worker of the crop's other spans.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CROP_RE = r'"crop":\s*(-?\d+)'
WORKER_RE = r'"worker":\s*"((?:[^"\\]|\\.)*)"'
RESULTS_LEG_RE = r'"leg":\s*"results"'
BACKLOG = "backlog"


def span_roles(spans_df: pd.DataFrame) -> pd.DataFrame:
    """Per span row (same index): ``crop`` (int, -1 when none), ``worker`` (str, "" when none),
    ``crops_leg`` (a classify-broker span of a crop's trip to a worker) and ``results_leg``."""
    n = len(spans_df)
    out = pd.DataFrame({"crop": np.full(n, -1, np.int64), "worker": np.full(n, "", object),
                        "crops_leg": np.zeros(n, bool), "results_leg": np.zeros(n, bool)},
                       index=spans_df.index)
    if not n:
        return out
    classify = (spans_df["stage"] == "classify").to_numpy()
    attrs = spans_df["attrs"].where(classify).astype("string")
    out["crop"] = pd.to_numeric(attrs.str.extract(CROP_RE, expand=False), errors="coerce") \
        .fillna(-1).astype(np.int64).to_numpy()
    out["worker"] = attrs.str.extract(WORKER_RE, expand=False).fillna("").astype(object).to_numpy()
    results = attrs.str.contains(RESULTS_LEG_RE, regex=True).fillna(False).to_numpy(bool)
    broker = classify & (spans_df["component"] == "broker").to_numpy()
    out["results_leg"] = broker & results
    out["crops_leg"] = broker & ~results
    _fill_workers(spans_df, out)
    return out


def _fill_workers(spans_df: pd.DataFrame, roles: pd.DataFrame) -> None:
    """A crop's worker spans that lost the ``worker`` attr (a server's trace joined in their place,
    e.g. Triton's transfer/queue/inference) get the worker of the crop's other spans (in place).
    The results leg keeps none: its timestamps are not the worker's."""
    crop = roles["crop"].to_numpy()
    worker = roles["worker"].to_numpy()
    has = (crop >= 0) & (worker != "")
    need = (crop >= 0) & (worker == "") & ~roles["results_leg"].to_numpy()
    if not has.any() or not need.any():
        return
    rid = spans_df["request_id"].astype(str).to_numpy()
    key = pd.Series(worker[has], index=pd.MultiIndex.from_arrays([rid[has], crop[has]]))
    key = key[~key.index.duplicated()]
    found = key.reindex(pd.MultiIndex.from_arrays([rid[need], crop[need]])).fillna("").to_numpy()
    filled = worker.copy()
    filled[need] = found
    roles["worker"] = filled


@dataclass
class Busy:
    """Per worker, its cumulative busy time as a function of (wall-clock) time."""
    base: int = 0
    curves: dict = field(default_factory=dict)   # worker -> (x: float ns since base, cum busy ns)

    @property
    def known(self) -> bool:
        return bool(self.curves)

    def overlap(self, workers: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Per (worker, [lo, hi]): ns of the interval during which that worker was busy."""
        out = np.zeros(len(lo), np.float64)
        workers = np.asarray(workers, dtype=object)
        for w, (x, cum) in self.curves.items():
            m = workers == w
            if m.any():
                a = np.interp((lo[m] - self.base).astype(np.float64), x, cum)
                b = np.interp((hi[m] - self.base).astype(np.float64), x, cum)
                out[m] = np.maximum(b - a, 0.0)
        return out


def busy_intervals(spans_df: pd.DataFrame, roles: pd.DataFrame) -> Busy:
    """Each worker's busy intervals (see the module doc), merged, as ``Busy``."""
    m = (roles["worker"] != "").to_numpy() & (roles["crop"] >= 0).to_numpy() \
        & ~roles["crops_leg"].to_numpy() & ~roles["results_leg"].to_numpy()
    if not m.any():
        return Busy()
    d = pd.DataFrame({"rid": spans_df["request_id"].astype(str).to_numpy()[m],
                      "crop": roles["crop"].to_numpy()[m], "worker": roles["worker"].to_numpy()[m],
                      "s": spans_df["start_ns"].to_numpy(np.int64)[m],
                      "e": spans_df["end_ns"].to_numpy(np.int64)[m]})
    per_crop = d.groupby(["worker", "rid", "crop"], sort=False).agg(s=("s", "min"), e=("e", "max"))
    base = int(per_crop["s"].min())
    busy = Busy(base=base)
    for w, g in per_crop.groupby(level="worker", sort=False):
        s, e = _merge(g["s"].to_numpy(np.int64) - base, g["e"].to_numpy(np.int64) - base)
        x = np.column_stack([s, e]).ravel().astype(np.float64)
        cum = np.concatenate([[0.0], np.cumsum(e - s).astype(np.float64)])
        y = np.column_stack([cum[:-1], cum[1:]]).ravel()
        busy.curves[str(w)] = (x, y)
    return busy


def _merge(s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals [s, e) as sorted disjoint intervals."""
    order = np.argsort(s, kind="stable")
    s, e = s[order], np.maximum(e[order], s[order])
    run_end = np.maximum.accumulate(e)
    new = np.ones(len(s), bool)
    new[1:] = s[1:] > run_end[:-1]
    starts = s[new]
    idx = np.flatnonzero(new)
    ends = np.maximum.reduceat(e, idx)
    return starts, ends


def backlog_fraction(spans_df: pd.DataFrame, roles: pd.DataFrame, busy: Busy) -> np.ndarray:
    """Per span row: the fraction of a crops-leg broker span that was backlog (0 elsewhere)."""
    frac = np.zeros(len(spans_df), np.float64)
    m = roles["crops_leg"].to_numpy() & (roles["worker"] != "").to_numpy()
    if busy.known and m.any():
        s = spans_df["start_ns"].to_numpy(np.int64)[m]
        e = spans_df["end_ns"].to_numpy(np.int64)[m]
        ov = busy.overlap(roles["worker"].to_numpy()[m], s, e)
        frac[m] = np.divide(ov, (e - s), out=np.zeros(len(s)), where=e > s)
    return frac
