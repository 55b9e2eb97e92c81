"""The headline attribution: each request's end-to-end time along its critical path.

One image fans out to k crops; the request ends when the last crop's result is back. Walking back
from ``recv_ns`` (as tracing tools compute a critical path), at each point ``t`` the path goes
through the item that ended last at or before ``t``:

- items are the request's spans, except that the classify spans of one crop (crops-leg
  ``classify-broker``, the worker's serialize / resize / normalize / queue / inference, the
  results-leg ``classify-broker``) form one **crop chain**; a chain is a candidate only once it
  has ended (``end <= t``), so the path enters the crop that finished last and follows that chain
  back to its start (its publish), never a crop that was still running;
- a plain span is a candidate when it started before ``t`` (its end is taken as ``min(end, t)``);
  ties go to the span that started later (the innermost), and a span is left where a span that
  started inside it ended (so nested spans keep their own time; crop chains overlap each other
  without nesting, so they neither cut nor are cut);
- time between the chosen item's end and ``t`` is ``other`` (no span on the path covers it).

Inside a chain the same walk runs over the chain's spans. The crops-leg broker segment on the path
is split into ``backlog`` (its worker busy with other crops, ``analysis.report.backlog``) and
``broker`` (the broker's own transit). Segments are disjoint and inside ``[send, recv]``, so per
request the columns plus ``other`` equal ``e2e`` exactly (integer ns).

The result has the same shape as ``attribution.attribute`` (the even-split "work view"), so the
summary, tables and plots take either.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.report.attribution import E2E, UNCOVERED, stage_component_sort_key
from analysis.report.backlog import BACKLOG, Busy, busy_intervals, span_roles

CHAIN = -1   # the "code" of a crop-chain item


def critical_path(requests_df: pd.DataFrame, spans_df: pd.DataFrame, roles: pd.DataFrame | None = None,
                  busy: Busy | None = None) -> pd.DataFrame:
    """One row per request (index ``request_id``), float ns: ``e2e``, ``other`` and one column
    per ``"<stage>-<component>"`` on the critical path (with ``classify-backlog``)."""
    req = requests_df.drop_duplicates("request_id")
    rids = pd.Index(req["request_id"].astype(str))
    send = req["send_ns"].to_numpy(np.int64)
    recv = np.maximum(req["recv_ns"].to_numpy(np.int64), send)
    roles = span_roles(spans_df) if roles is None else roles
    busy = busy_intervals(spans_df, roles) if busy is None else busy

    ri = rids.get_indexer(spans_df["request_id"].astype(str)) if len(spans_df) else np.empty(0, np.int64)
    s = spans_df["start_ns"].to_numpy(np.int64)
    e = spans_df["end_ns"].to_numpy(np.int64)
    ok = (ri >= 0)
    s = np.where(ok, np.maximum(s, send[ri]), 0)
    e = np.where(ok, np.minimum(e, recv[ri]), 0)
    ok &= e > s
    keys = (spans_df["stage"].astype(str) + "-" + spans_df["component"].astype(str)).to_numpy()
    codes, names = pd.factorize(keys)
    crop = roles["crop"].to_numpy()
    chain = ok & (spans_df["stage"] == "classify").to_numpy() & (crop >= 0)

    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(ri[idx], kind="stable")]
    bounds = np.searchsorted(ri[idx], np.arange(len(rids) + 1))
    seg_req, seg_lo, seg_hi, seg_span = [], [], [], []
    for r in range(len(rids)):
        rows = idx[bounds[r]:bounds[r + 1]]
        if not len(rows):
            continue
        segs = _request_path(rows, s, e, chain, crop, send[r], recv[r])
        for lo, hi, row in segs:
            seg_req.append(r)
            seg_lo.append(lo)
            seg_hi.append(hi)
            seg_span.append(row)
    return _assemble(rids, send, recv, names, codes, roles, busy,
                     np.asarray(seg_req, np.int64), np.asarray(seg_lo, np.int64),
                     np.asarray(seg_hi, np.int64), np.asarray(seg_span, np.int64))


def _request_path(rows, s, e, chain, crop, send: int, recv: int) -> list[tuple[int, int, int]]:
    """(lo, hi, span row) segments of one request's critical path."""
    items, chains = [], {}
    for row in rows.tolist():
        if chain[row]:
            chains.setdefault(int(crop[row]), []).append((int(s[row]), int(e[row]), row))
        else:
            items.append((int(s[row]), int(e[row]), row))
    for members in chains.values():
        items.append((min(m[0] for m in members), max(m[1] for m in members), CHAIN, members))
    out: list[tuple[int, int, int]] = []
    _walk(items, int(recv), int(send), out)
    return out


def _walk(items: list, t: int, floor: int, out: list) -> None:
    """Walk back from ``t`` to ``floor`` (see the module doc), appending (lo, hi, row)."""
    while t > floor:
        best, best_end = None, None
        for it in items:
            st, en = it[0], it[1]
            if st >= t or (it[2] == CHAIN and en > t):
                continue
            en = min(en, t)
            if best is None or en > best_end or (en == best_end and st > best[0]):
                best, best_end = it, en
        if best is None or best_end <= floor:
            return
        t = best_end
        lo = max(best[0], floor)
        if best[2] != CHAIN:   # leave a span where a (plain) span that started inside it ended
            for it in items:
                if it[2] != CHAIN and it[0] > best[0] and lo < it[1] < t:
                    lo = it[1]
        if best[2] == CHAIN:
            _walk(best[3], t, lo, out)
        else:
            out.append((lo, t, best[2]))
        t = lo


def _assemble(rids, send, recv, names, codes, roles: pd.DataFrame, busy: Busy, seg_req, seg_lo,
              seg_hi, seg_span) -> pd.DataFrame:
    """Segments to the per-request table; crops-leg broker segments split into backlog/broker."""
    length = (seg_hi - seg_lo).astype(np.float64)
    seg_code = codes[seg_span] if len(seg_span) else np.empty(0, np.int64)
    cols = [str(n) for n in names]
    backlog_key = f"classify-{BACKLOG}"
    if backlog_key not in cols:
        cols.append(backlog_key)
    bcode = cols.index(backlog_key)
    mat = np.zeros((len(rids), len(cols)), np.float64)
    crops_leg = roles["crops_leg"].to_numpy()[seg_span] if len(seg_span) else np.zeros(0, bool)
    backlog = np.zeros(len(seg_span), np.float64)
    if crops_leg.any() and busy.known:
        w = roles["worker"].to_numpy()[seg_span][crops_leg]
        backlog[crops_leg] = busy.overlap(w, seg_lo[crops_leg], seg_hi[crops_leg])
    np.add.at(mat, (seg_req, seg_code), length - backlog)
    np.add.at(mat[:, bcode], seg_req, backlog)
    out = pd.DataFrame(mat, index=rids, columns=cols)
    out = out[sorted(out.columns, key=stage_component_sort_key)]
    e2e = (recv - send).astype(np.float64)
    out.insert(0, UNCOVERED, e2e - mat.sum(axis=1))
    out.insert(0, E2E, e2e)
    out.index.name = "request_id"
    return out
