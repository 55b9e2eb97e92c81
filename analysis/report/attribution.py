"""The work view: each nanosecond of a request's ``[send_ns, recv_ns)`` goes to the spans covering
it, split evenly where spans overlap; what no span covers is ``other``. Per request the components
plus ``other`` equal end-to-end exactly (docs/architecture.md). With k crops in flight at once this
answers "how much work went where"; the headline ("where did this request's latency come from") is
the critical path (``analysis.report.critical_path``)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.report.load import LAG_STAGE
from overhead.contract.records import COMPONENTS as COMPONENT_ORDER
STAGE_ORDER = (LAG_STAGE, "gateway", "detect", "classify")
UNCOVERED = "other"        # attribute() column for time no span covers
E2E = "e2e"                # attribute() column for recv_ns - send_ns
STAGE_UNCOVERED = "uncovered"  # the per-stage table's name for UNCOVERED (by_component adds
                               # spans whose component is "other" to it)


def attribute(requests_df: pd.DataFrame, spans_df: pd.DataFrame,
              backlog_frac: np.ndarray | None = None) -> pd.DataFrame:
    """Split each request's end-to-end time over its spans (closure rule).

    ``backlog_frac`` (per span row, ``analysis.report.backlog.backlog_fraction``): that fraction
    of a span's share goes to ``<stage>-backlog`` instead of its own component.

    Returns one row per request (index ``request_id``), float nanoseconds: ``e2e``, ``other``
    (covered by no span) and one column per ``"<stage>-<component>"`` seen in the spans.
    Per row, the stage-component columns plus ``other`` sum to ``e2e``.
    """
    req = requests_df.drop_duplicates("request_id")
    rids = pd.Index(req["request_id"].astype(str))
    send = req["send_ns"].to_numpy(np.int64)
    recv = np.maximum(req["recv_ns"].to_numpy(np.int64), send)
    ri, s, e, keys, kept = _clipped_spans(spans_df, rids, send, recv)
    share, uncovered = _sweep(ri, s, e, send, recv)
    if backlog_frac is not None and len(kept) and np.any(backlog_frac[kept] > 0):
        frac = backlog_frac[kept]
        stage = spans_df["stage"].astype(str).to_numpy()[kept]
        moved = frac > 0
        ri = np.concatenate([ri, ri[moved]])
        keys = np.concatenate([keys, stage[moved] + "-backlog"])
        share = np.concatenate([share * (1 - frac), share[moved] * frac[moved]])
    key_codes, key_names = pd.factorize(keys, sort=False)

    mat = np.zeros((len(rids), len(key_names)), np.float64)
    np.add.at(mat, (ri, key_codes), share)
    out = pd.DataFrame(mat, index=rids, columns=[str(k) for k in key_names])
    out = out[sorted(out.columns, key=stage_component_sort_key)]
    out.insert(0, UNCOVERED, uncovered)
    out.insert(0, E2E, (recv - send).astype(np.float64))
    out.index.name = "request_id"
    return out


def _clipped_spans(sp: pd.DataFrame, rids: pd.Index, send: np.ndarray, recv: np.ndarray):
    """(request index, start, end, "stage-component", span row) of the spans of known requests,
    clipped to their request's ``[send_ns, recv_ns]``; empty ones dropped."""
    ri = rids.get_indexer(sp["request_id"].astype(str)) if len(sp) else np.empty(0, np.int64)
    ok = ri >= 0
    rows = np.flatnonzero(ok)
    ri = ri[ok]
    s = np.maximum(sp["start_ns"].to_numpy(np.int64)[ok], send[ri])
    e = np.minimum(sp["end_ns"].to_numpy(np.int64)[ok], recv[ri])
    keys = (sp["stage"].astype(str) + "-" + sp["component"].astype(str)).to_numpy()[ok]
    keep = e > s
    return ri[keep], s[keep], e[keep], keys[keep], rows[keep]


def _sweep(ri, s, e, send, recv) -> tuple[np.ndarray, np.ndarray]:
    """Each span's share and each request's uncovered time, for all requests at once.

    The span boundaries and the requests' own send/recv are sorted by (request, time); a running
    sum of +1/-1 gives how many spans cover each elementary interval; each interval's length
    divided by that count accumulates into a prefix sum, and a span's share is the prefix sum
    between its start and end events."""
    n_req, n_sp = len(send), len(s)
    req_idx = np.arange(n_req)
    ev_req = np.concatenate([ri, ri, req_idx, req_idx])
    ev_t = np.concatenate([s, e, send, recv])
    ev_d = np.concatenate([np.ones(n_sp, np.int64), -np.ones(n_sp, np.int64),
                           np.zeros(2 * n_req, np.int64)])
    order = np.lexsort((ev_t, ev_req))
    t_sorted, r_sorted = ev_t[order], ev_req[order]
    count = np.cumsum(ev_d[order])                       # spans covering [t_i, t_{i+1})
    length = np.zeros(len(order), np.float64)
    if len(order) > 1:
        same = r_sorted[1:] == r_sorted[:-1]
        length[:-1] = np.where(same, np.diff(t_sorted), 0).astype(np.float64)
    density = np.divide(length, count, out=np.zeros_like(length), where=count > 0)
    uncovered = np.bincount(r_sorted, weights=np.where(count == 0, length, 0.0), minlength=n_req)
    prefix = np.concatenate([[0.0], np.cumsum(density)])
    pos = np.empty(len(order), np.int64)
    pos[order] = np.arange(len(order))
    return prefix[pos[n_sp:2 * n_sp]] - prefix[pos[:n_sp]], uncovered


def _order(seq: tuple, name: str) -> int:
    return seq.index(name) if name in seq else len(seq)


def stage_component_sort_key(key: str):
    stage, _, comp = key.partition("-")
    return (_order(STAGE_ORDER, stage), stage, _order(COMPONENT_ORDER, comp), comp)


def by_component(attr: pd.DataFrame) -> pd.DataFrame:
    """Sum the stage-component columns of ``attribute()`` by component (plus ``other``, ``e2e``).
    Spans whose component is literally ``other`` are added to the uncovered ``other``."""
    cols: dict[str, list[str]] = {}
    for key in attr.columns:
        if key not in (E2E, UNCOVERED):
            cols.setdefault(key.partition("-")[2], []).append(key)
    out = pd.DataFrame(index=attr.index)
    for comp in sorted(cols, key=lambda c: COMPONENT_ORDER.index(c) if c in COMPONENT_ORDER else 99):
        if comp != UNCOVERED:
            out[comp] = attr[cols[comp]].sum(axis=1)
    out[UNCOVERED] = attr[UNCOVERED] + (attr[cols[UNCOVERED]].sum(axis=1) if UNCOVERED in cols else 0)
    out[E2E] = attr[E2E]
    return out
