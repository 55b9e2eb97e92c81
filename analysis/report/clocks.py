"""Worker clocks: detect a worker whose wall clock is off the gateway's and correct its spans, with
the error shown; never a silent wrong number.

A crop's round trip gives the four timestamps of an NTP exchange: the gateway publishes the crop
at ``t1`` (gateway clock, the crops-leg ``classify-broker`` start), the worker takes it at ``t2``
(worker clock, that span's end), publishes the result at ``t3`` (worker clock, the results-leg
start) and the gateway receives it at ``t4`` (gateway clock, its end). With one-way delays
``d1, d2 >= 0`` the worker's offset ``θ`` satisfies ``-(t4 - t3) <= θ <= t2 - t1``; NTP's estimate
is the middle of that interval, ``((t2 - t1) + (t3 - t4)) / 2``, ± half its width
``((t4 - t1) - (t3 - t2)) / 2``. The crop with the narrowest interval (the fastest round trip, as
NTP's clock filter picks) gives each worker's estimate.

A worker whose interval excludes 0 has a skewed clock for certain: its spans are shifted by ``-θ``
(its own spans both ends, the crops-leg end, the results-leg start) and a warning names it with
``θ ± error``. A worker whose spans leave their request (end after the answer, broker legs of
negative length) but that cannot be estimated (no round trip) has those spans dropped, with a
warning.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.report.backlog import span_roles

MIN_SHIFT_NS = 100_000   # offsets under 0.1 ms are not corrected (within span-recording noise)


def round_trips(spans: pd.DataFrame, roles: pd.DataFrame) -> pd.DataFrame:
    """Per crop with both broker legs: worker, t1..t4, theta, err (ns)."""
    key = ["request_id", "crop"]
    base = spans.assign(crop=roles["crop"].to_numpy(), worker=roles["worker"].to_numpy())
    crops = base[roles["crops_leg"].to_numpy() & (roles["worker"] != "").to_numpy()]
    results = base[roles["results_leg"].to_numpy()]
    m = crops[key + ["worker", "start_ns", "end_ns"]].rename(columns={"start_ns": "t1", "end_ns": "t2"}) \
        .merge(results[key + ["start_ns", "end_ns"]].rename(columns={"start_ns": "t3", "end_ns": "t4"}),
               on=key).drop_duplicates(key)
    t1, t2, t3, t4 = (m[c].to_numpy(np.int64).astype(np.float64) for c in ("t1", "t2", "t3", "t4"))
    return m.assign(theta=((t2 - t1) + (t3 - t4)) / 2, err=((t4 - t1) - (t3 - t2)) / 2)


def estimate_offsets(trips: pd.DataFrame) -> pd.DataFrame:
    """Per worker: theta_ns, err_ns (from its narrowest round trip) and the number of trips."""
    if not len(trips):
        return pd.DataFrame(columns=["theta_ns", "err_ns", "trips"])
    best = trips.loc[trips.groupby("worker")["err"].idxmin()].set_index("worker")
    return pd.DataFrame({"theta_ns": best["theta"], "err_ns": best["err"],
                         "trips": trips.groupby("worker").size()})


def correct_worker_clocks(requests: pd.DataFrame, spans: pd.DataFrame, roles: pd.DataFrame | None = None
                          ) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """(spans with skewed workers' timestamps corrected or refused, warnings, their roles)."""
    roles = span_roles(spans) if roles is None else roles
    if not len(spans) or not (roles["worker"] != "").any():
        return spans, [], roles
    off = estimate_offsets(round_trips(spans, roles))
    outside = _outside_counts(requests, spans, roles)
    notes, spans = [], spans.copy()
    skewed = off[(off["theta_ns"].abs() > off["err_ns"]) & (off["theta_ns"].abs() > MIN_SHIFT_NS)]
    for w, r in skewed.iterrows():
        _shift(spans, roles, str(w), int(round(float(r["theta_ns"]))))
        notes.append(
            f"**Clock skew corrected**: worker `{w}`'s clock is {r['theta_ns'] / 1e6:+.2f} ± "
            f"{r['err_ns'] / 1e6:.2f} ms off the gateway's (NTP-style, from the fastest of its "
            f"{int(r['trips'])} crop round trips); {outside.get(w, 0)} of its spans lay outside "
            f"their request. Its spans were shifted by {-r['theta_ns'] / 1e6:+.2f} ms before "
            f"attribution; its classify times carry that ± error.")
    for w, n in outside.items():
        if n and w not in off.index:
            bad = _outside_mask(requests, spans, roles) & (roles["worker"] == w).to_numpy()
            spans = spans[~bad]
            roles = roles[~bad]
            notes.append(f"**Clock skew, spans refused**: {int(bad.sum())} spans of worker `{w}` lie "
                         f"outside their request (ending after the answer arrived or before it "
                         f"was sent) and its offset cannot be estimated (no crop round trips): "
                         f"they were left out of the attribution.")
    return spans, notes, roles


def _shift(spans: pd.DataFrame, roles: pd.DataFrame, worker: str, theta: int) -> None:
    """Put worker ``worker``'s timestamps on the gateway's clock (in place)."""
    mine = (roles["worker"] == worker).to_numpy()
    own = mine & ~roles["crops_leg"].to_numpy()
    spans.loc[own, "start_ns"] -= theta
    spans.loc[own, "end_ns"] -= theta
    spans.loc[mine & roles["crops_leg"].to_numpy(), "end_ns"] -= theta
    taken = pd.MultiIndex.from_arrays([spans["request_id"][mine & roles["crops_leg"].to_numpy()],
                                       roles["crop"][mine & roles["crops_leg"].to_numpy()]])
    res = roles["results_leg"].to_numpy().copy()
    res &= pd.MultiIndex.from_arrays([spans["request_id"], roles["crop"]]).isin(taken)
    spans.loc[res, "start_ns"] -= theta


def _outside_mask(requests: pd.DataFrame, spans: pd.DataFrame, roles: pd.DataFrame) -> np.ndarray:
    """Worker spans (and their broker legs) that end after their request's answer, start before
    it was sent, or have negative length."""
    req = requests.drop_duplicates("request_id").set_index("request_id")
    send = spans["request_id"].map(req["send_ns"]).to_numpy(np.float64)
    recv = spans["request_id"].map(req["recv_ns"]).to_numpy(np.float64)
    s = spans["start_ns"].to_numpy(np.float64)
    e = spans["end_ns"].to_numpy(np.float64)
    bad = (e > recv) | (s < send) | (e < s)
    return bad & (roles["worker"] != "").to_numpy()


def _outside_counts(requests: pd.DataFrame, spans: pd.DataFrame, roles: pd.DataFrame) -> dict:
    bad = _outside_mask(requests, spans, roles)
    return roles["worker"][bad].value_counts().to_dict()
