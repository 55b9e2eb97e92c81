"""Clocks: per process, its offset ± error estimated NTP-style; a process whose clock is off for
certain has its spans corrected, with the error shown; never a silent wrong number.

Every span is stamped by one process's clock (``overhead.contract.clock``: wall clock at start,
advanced by the monotonic clock, so durations are right whatever the offset); its ``process``
column (``HOST:PID``, absent in old runs) says whose. Two exchanges of four timestamps place the
clocks against each other:

- **gateway vs load generator**, from each request's HTTP round trip: the load generator sends at
  ``t1`` (its clock), the gateway's first span of the request starts at ``t2`` and its last ends at
  ``t3`` (gateway clock: everything but the workers' stamps; for the answer's write, its start),
  the answer arrives at ``t4``;
- **worker vs gateway**, from each crop's round trip through the broker (below).

``check_clocks`` returns the per-process table (the report's "Clocks" validity note).

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

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.report.backlog import span_roles

MIN_SHIFT_NS = 100_000   # offsets under 0.1 ms are not corrected (within span-recording noise)
CLIENT_STAGE = "client"  # spans on the load generator's clock (open loop's schedule lag)
TABLE_COLUMNS = ["process", "host", "role", "name", "reference", "theta_ns", "err_ns", "exchanges",
                 "corrected"]


@dataclass
class ClockCheck:
    spans: pd.DataFrame     # corrected (or with refused spans left out)
    notes: list[str]        # warnings: what was corrected or refused
    roles: pd.DataFrame     # span_roles of ``spans``
    table: pd.DataFrame     # one row per process estimated: TABLE_COLUMNS


def check_clocks(requests: pd.DataFrame, spans: pd.DataFrame, roles: pd.DataFrame | None = None,
                 processes: dict | None = None) -> ClockCheck:
    """The gateway against the load generator first (if it is off, every span but the generator's
    own is shifted: the workers' stamps keep their offset against the gateway), then each worker
    against the gateway (its spans put on the gateway's clock, now the generator's).
    ``processes``: RUN_DIR/processes.json by process id (hosts and roles for the table)."""
    roles = span_roles(spans) if roles is None else roles
    rows, notes = [], []
    gw = gateway_offset(requests, spans, roles)
    if gw is not None:
        theta, err, n = gw
        corrected = abs(theta) > err and abs(theta) > MIN_SHIFT_NS
        if corrected:
            spans = spans.copy()
            mine = (spans["stage"] != CLIENT_STAGE).to_numpy()
            spans.loc[mine, "start_ns"] -= int(round(theta))
            spans.loc[mine, "end_ns"] -= int(round(theta))
            notes.append(f"**Clock skew corrected**: the gateway's clock is {theta / 1e6:+.2f} ± "
                         f"{err / 1e6:.2f} ms off the load generator's (NTP-style, from the fastest "
                         f"of {n} HTTP round trips); every span was shifted by {-theta / 1e6:+.2f} ms "
                         f"before attribution.")
        rows.append(dict(process=_main_process(spans, roles), name="gateway", role="gateway",
                         reference="load generator", theta_ns=theta, err_ns=err, exchanges=n,
                         corrected=corrected))
    spans, worker_notes, roles, workers = _check_workers(requests, spans, roles)
    notes += worker_notes
    rows += [_worker_row(w, r, spans, roles) for w, r in workers.iterrows()]
    for r in rows:
        info = (processes or {}).get(r["process"]) or {}
        r["host"] = info.get("host") or (r["process"].rsplit(":", 1)[0] if r["process"] else "")
        r["role"] = info.get("role") or r["role"]
    return ClockCheck(spans, notes, roles, pd.DataFrame(rows, columns=TABLE_COLUMNS))


def clocks_note(table: pd.DataFrame) -> list[str]:
    """The report's "Clocks" line: every process's offset ± error against its reference."""
    if not len(table):
        return []
    parts = []
    for _, r in table.iterrows():
        who = r["role"] if r["name"] == r["role"] else f"{r['role']} `{r['name']}`"
        who += f" (`{r['process']}`)" if r["process"] else ""
        parts.append(f"{who} vs the {r['reference']}: {r['theta_ns'] / 1e6:+.2f} ± "
                     f"{r['err_ns'] / 1e6:.2f} ms ({int(r['exchanges'])} round trips"
                     f"{', corrected' if r['corrected'] else ''})")
    return ["**Clocks** (offset ± error per process, NTP-style from its fastest round trip; an "
            "offset whose ± interval holds 0 is left as recorded): " + "; ".join(parts) + "."]


def gateway_offset(requests: pd.DataFrame, spans: pd.DataFrame, roles: pd.DataFrame
                   ) -> tuple[float, float, int] | None:
    """(theta, err, requests) of the gateway's clock against the load generator's, from the
    successful request with the narrowest interval; None without such requests."""
    if not len(spans) or not len(requests):
        return None
    own = ((roles["worker"] == "").to_numpy() & (spans["stage"] != CLIENT_STAGE).to_numpy())
    starts = spans[own & ~roles["results_leg"].to_numpy()].groupby("request_id")["start_ns"].min()
    # The answer's write (``serialize`` leg response) ends when its last byte was handed to the
    # socket, stamped once the event loop resumes: the client may have the answer already. Its
    # start (the answer taken for writing) is the gateway's last stamp that surely precedes t4.
    sent = (spans["component"] == "serialize").to_numpy() & \
        spans["attrs"].fillna("").str.contains('"leg":"response"', regex=False).to_numpy()
    ends = spans[own].assign(end_ns=np.where(sent, spans["start_ns"], spans["end_ns"])[own]) \
        .groupby("request_id")["end_ns"].max()
    req = requests
    if "status" in req.columns:
        req = req[(req["status"] == 200) & (req["error"].isna() if "error" in req else True)]
    req = req.drop_duplicates("request_id").set_index("request_id")
    ids = req.index.intersection(starts.index).intersection(ends.index)
    if not len(ids):
        return None
    t1, t4 = (req.loc[ids, c].to_numpy(np.float64) for c in ("send_ns", "recv_ns"))
    t2, t3 = starts.loc[ids].to_numpy(np.float64), ends.loc[ids].to_numpy(np.float64)
    theta, err = ((t2 - t1) + (t3 - t4)) / 2, ((t4 - t1) - (t3 - t2)) / 2
    # err < 0 (the gateway busy for longer than the client waited) breaks causality: not an exchange
    ok = np.flatnonzero(err >= 0)
    if not len(ok):
        return None
    i = ok[int(np.argmin(err[ok]))]
    return float(theta[i]), float(err[i]), len(ok)


def _main_process(spans: pd.DataFrame, roles: pd.DataFrame) -> str:
    """The process that stamped most of the non-worker spans ("" for runs without the column)."""
    if "process" not in spans or not spans["process"].notna().any():
        return ""
    own = spans["process"][(roles["worker"] == "").to_numpy()].dropna()
    return str(own.mode().iloc[0]) if len(own) else ""


def _worker_row(worker: str, r: pd.Series, spans: pd.DataFrame, roles: pd.DataFrame) -> dict:
    proc = ""
    if "process" in spans:
        mine = (roles["worker"] == worker).to_numpy() & ~roles["crops_leg"].to_numpy()
        got = spans["process"][mine].dropna()
        proc = str(got.mode().iloc[0]) if len(got) else ""
    return dict(process=proc, name=worker, role="worker", reference="gateway",
                theta_ns=float(r["theta_ns"]), err_ns=float(r["err_ns"]),
                exchanges=int(r["trips"]), corrected=bool(r["corrected"]))


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
    spans, notes, roles, _ = _check_workers(requests, spans, roles)
    return spans, notes, roles


def _check_workers(requests: pd.DataFrame, spans: pd.DataFrame, roles: pd.DataFrame | None = None):
    """(spans, warnings, roles, per-worker offsets with ``corrected``)."""
    roles = span_roles(spans) if roles is None else roles
    if not len(spans) or not (roles["worker"] != "").any():
        return spans, [], roles, estimate_offsets(pd.DataFrame()).assign(corrected=False)
    off = estimate_offsets(round_trips(spans, roles))
    outside = _outside_counts(requests, spans, roles)
    notes, spans = [], spans.copy()
    off["corrected"] = (off["theta_ns"].abs() > off["err_ns"]) & (off["theta_ns"].abs() > MIN_SHIFT_NS)
    skewed = off[off["corrected"]]
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
    return spans, notes, roles, off


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
