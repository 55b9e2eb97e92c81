"""Where the time goes: the breakdown report of one run directory.

    python analysis/breakdown.py RUN_DIR        (from any directory; needs only RUN_DIR's files)

Per concurrency step and image size class: requests measured (after the step's warm-up, status
200), errors, throughput, end-to-end mean/p50/p95/p99 from the load generator's exact records,
and for every component its mean and median time and its share of end-to-end.

Closure (docs/architecture.md): each nanosecond of a request's ``[send_ns, recv_ns)`` is given to
the spans covering it, split evenly where spans overlap (k crops in flight at once); what no span
covers is ``other``. So per request the components plus ``other`` equal end-to-end exactly.

Open loop (``--arrivals``/``--rates`` in the sweep): end-to-end runs from each request's intended
send time (``intended_ns``) to ``recv_ns``; the wait before the real send is a ``client-schedule_lag``
component, so closure still holds and the lag is shown.

Validity (top of the report): every step judged by ``analysis/stability.py`` (last 3 windows
within 10% in throughput and p50, enough successful requests), and the load generator checked
(Locust above 0.8 of a core, or an open-loop schedule lag p99 above 20 ms: "measuring the
generator").

Writes report.md, report.html (self-contained), breakdown.csv and plots/ into RUN_DIR; prints the
tables. API for tests and studies: ``load_run``, ``attribute``, ``summarize``, ``write_report``.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from overhead.contract.runconfig import read_config
from overhead.contract.rundir import (
    RunDir, read_json, read_locust_stats_csv, read_requests, read_spans, read_steps,
)
from overhead.contract.stability import StabilityRule, assess, run_validity

COMPONENT_ORDER = ("decode", "resize", "normalize", "serialize", "transfer", "queue",
                   "inference", "postprocess", "broker", "other")
UNCOVERED = "other"        # attribute() column for time no span covers
E2E = "e2e"                # attribute() column for recv_ns - send_ns
STAGE_UNCOVERED = "uncovered"  # the per-stage table's name for UNCOVERED (by_component adds
                               # spans whose component is "other" to it)
GENERATOR_CPU_WARN = 0.8   # cores: above this the load generator may be the bottleneck
SCHEDULE_LAG_WARN_MS = 20.0  # open loop: schedule lag p99 above this = the generator fell behind
LAG_STAGE, LAG_COMPONENT = "client", "schedule_lag"  # the synthetic span of open-loop lag


# --- loading --------------------------------------------------------------------------------

@dataclass
class Run:
    path: Path
    config: dict
    steps: pd.DataFrame
    requests: pd.DataFrame
    spans: pd.DataFrame
    cpu: pd.DataFrame | None = None
    locust_final: dict | None = None
    locust_stats_csv: dict | None = None
    stability_live: dict | None = None
    open_loop: dict | None = None      # locust/openloop.json (or config load) when open loop

    @property
    def is_open_loop(self) -> bool:
        return bool(self.open_loop) or bool((self.config.get("load") or {}).get("arrivals"))


def load_run(run_dir) -> Run:
    """Read a run directory (only its own files)."""
    run = RunDir(run_dir)
    if not run.requests.exists():
        raise FileNotFoundError(f"{run.requests} not found: is {run.path} a run directory?")
    cpu = pd.read_parquet(run.cpu) if run.cpu.exists() else None
    return Run(path=run.path, config=read_config(run.path), steps=read_steps(run.path),
               requests=read_requests(run.path), spans=read_spans(run.path), cpu=cpu,
               locust_final=read_json(run.locust_final), locust_stats_csv=read_locust_stats_csv(run.path),
               stability_live=read_json(run.locust_stability), open_loop=read_json(run.locust_openloop))


def open_loop_view(requests_df: pd.DataFrame, spans_df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Requests and spans for an open-loop run: ``send_ns`` becomes the intended send time (so
    e2e = intended → recv) and a ``client-schedule_lag`` span covers intended → real send."""
    req = requests_df.copy()
    real_send = req["send_ns"].astype(np.int64)
    intended = req["intended_ns"].fillna(real_send).astype(np.int64).clip(upper=real_send)
    req["send_ns"] = intended
    lag = req.loc[real_send > intended, ["request_id"]].copy()
    lag["stage"], lag["component"] = LAG_STAGE, LAG_COMPONENT
    lag["start_ns"], lag["end_ns"] = intended[real_send > intended], real_send[real_send > intended]
    lag["attrs"] = None
    return req, pd.concat([spans_df, lag[list(spans_df.columns)]], ignore_index=True) if len(lag) else spans_df


# --- closure: per-request attribution ---------------------------------------------------------

def attribute(requests_df: pd.DataFrame, spans_df: pd.DataFrame) -> pd.DataFrame:
    """Split each request's end-to-end time over its spans (closure rule).

    Returns one row per request (index ``request_id``), float nanoseconds: ``e2e``, ``other``
    (covered by no span) and one column per ``"<stage>-<component>"`` seen in the spans.
    Per row, the stage-component columns plus ``other`` sum to ``e2e``.

    One sweep line over all requests at once: the span boundaries (clipped to the request's
    ``[send_ns, recv_ns]``) and the request's own send/recv are sorted by (request, time);
    a running sum of +1/-1 gives how many spans cover each elementary interval; each interval's
    length divided by that count accumulates into a prefix sum, and a span's share is the prefix
    sum between its start and end events.
    """
    req = requests_df.drop_duplicates("request_id")
    rids = pd.Index(req["request_id"].astype(str))
    send = req["send_ns"].to_numpy(np.int64)
    recv = np.maximum(req["recv_ns"].to_numpy(np.int64), send)
    n_req = len(rids)

    sp = spans_df
    ri = rids.get_indexer(sp["request_id"].astype(str)) if len(sp) else np.empty(0, np.int64)
    ok = ri >= 0
    ri = ri[ok]
    s = np.maximum(sp["start_ns"].to_numpy(np.int64)[ok], send[ri])
    e = np.minimum(sp["end_ns"].to_numpy(np.int64)[ok], recv[ri])
    keys = (sp["stage"].astype(str) + "-" + sp["component"].astype(str)).to_numpy()[ok]
    keep = e > s
    ri, s, e, keys = ri[keep], s[keep], e[keep], keys[keep]
    key_codes, key_names = pd.factorize(keys, sort=False)
    n_sp = len(s)

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
    share = prefix[pos[n_sp:2 * n_sp]] - prefix[pos[:n_sp]]

    mat = np.zeros((n_req, len(key_names)), np.float64)
    np.add.at(mat, (ri, key_codes), share)
    out = pd.DataFrame(mat, index=rids, columns=[str(k) for k in key_names])
    out = out[sorted(out.columns, key=_stage_component_sort_key)]
    out.insert(0, UNCOVERED, uncovered)
    out.insert(0, E2E, (recv - send).astype(np.float64))
    out.index.name = "request_id"
    return out


def _stage_component_sort_key(key: str):
    stage, _, comp = key.partition("-")
    stages = (LAG_STAGE, "gateway", "detect", "classify")
    return (stages.index(stage) if stage in stages else len(stages), stage,
            COMPONENT_ORDER.index(comp) if comp in COMPONENT_ORDER else len(COMPONENT_ORDER), comp)


def by_component(attr: pd.DataFrame) -> pd.DataFrame:
    """Sum the stage-component columns of ``attribute()`` by component (plus ``other``, ``e2e``).
    Spans whose component is literally ``other`` are added to the uncovered ``other``."""
    cols = {}
    for key in attr.columns:
        if key in (E2E, UNCOVERED):
            continue
        comp = key.partition("-")[2]
        cols.setdefault(comp, []).append(key)
    out = pd.DataFrame(index=attr.index)
    for comp in sorted(cols, key=lambda c: COMPONENT_ORDER.index(c) if c in COMPONENT_ORDER else 99):
        if comp != UNCOVERED:
            out[comp] = attr[cols[comp]].sum(axis=1)
    out[UNCOVERED] = attr[UNCOVERED] + (attr[cols[UNCOVERED]].sum(axis=1) if UNCOVERED in cols else 0)
    out[E2E] = attr[E2E]
    return out


# --- summary ----------------------------------------------------------------------------------

@dataclass
class Summary:
    main: pd.DataFrame          # per (step, size): counts, throughput, e2e, per component
    stages: pd.DataFrame        # per (step, size): per stage-component (and "uncovered") mean ms, share
    steps: pd.DataFrame         # per step, all sizes: throughput, mean e2e, Little's law
    components: list[str] = field(default_factory=list)
    stage_keys: list[str] = field(default_factory=list)
    load_labels: dict = field(default_factory=dict)   # steps' "users" value -> label (open loop)


def size_sort_key(size: str):
    m = re.match(r"([0-9.]+)\s*([kKMG]?)", str(size))
    if not m:
        return (1, str(size))
    scale = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
    return (0, float(m.group(1)) * scale)


def assign_steps(requests_df: pd.DataFrame, steps_df: pd.DataFrame) -> pd.Series:
    """Step of each request: the step whose measured window [measure_start_ns, end_ns) holds its
    completion (recv_ns); -1 for warm-up, between steps, or after the end."""
    step = np.full(len(requests_df), -1, np.int64)
    recv = requests_df["recv_ns"].to_numpy(np.int64)
    for row in steps_df.itertuples():
        inside = (recv >= row.measure_start_ns) & (recv < row.end_ns)
        step[inside] = row.step
    return pd.Series(step, index=requests_df.index, name="step")


def summarize(requests_df: pd.DataFrame, attr: pd.DataFrame, steps_df: pd.DataFrame) -> Summary:
    """Per step and size class, over each step's measured window (see ``assign_steps``)."""
    req = requests_df.copy()
    if steps_df is None or steps_df.empty:  # no steps recorded: the whole run is one step
        steps_df = pd.DataFrame([dict(step=0, users=int(req["user"].nunique()) if len(req) else 0,
                                      start_ns=int(req["send_ns"].min()) if len(req) else 0,
                                      measure_start_ns=int(req["send_ns"].min()) if len(req) else 0,
                                      end_ns=int(req["recv_ns"].max()) + 1 if len(req) else 1)])
    steps_df = steps_df.sort_values("step").reset_index(drop=True)
    req["step"] = assign_steps(req, steps_df).to_numpy()
    req["ok"] = (req["status"] == 200) & req["error"].isna()
    req = req[req["step"] >= 0]
    window_s = {r.step: max(r.end_ns - r.measure_start_ns, 1) / 1e9 for r in steps_df.itertuples()}
    users = dict(zip(steps_df["step"], steps_df["users"]))

    comp = by_component(attr)
    components = [c for c in comp.columns if c not in (E2E, UNCOVERED)]
    components = [c for c in components if comp[c].abs().sum() > 0] + [UNCOVERED]
    stage_keys = [c for c in attr.columns if c not in (E2E, UNCOVERED)] + [STAGE_UNCOVERED]

    ok = req[req["ok"]]
    okc = comp.reindex(ok["request_id"].astype(str).to_numpy())
    oka = attr.reindex(ok["request_id"].astype(str).to_numpy())
    okc.index = oka.index = ok.index

    rows, stage_rows, step_rows = [], [], []
    sizes = sorted(req["size_class"].dropna().unique(), key=size_sort_key)
    for step in steps_df["step"]:
        w = window_s[step]
        in_step = req[req["step"] == step]
        ok_step = ok[ok["step"] == step]
        e2e_all = okc.loc[ok_step.index, E2E] / 1e6
        n = len(ok_step)
        x = n / w
        # Little's law over every completed request (failures occupy a user too)
        e2e_every = (in_step["recv_ns"] - in_step["send_ns"]) / 1e6
        x_every = len(in_step) / w
        step_rows.append(dict(
            step=int(step), users=int(users[step]), window_s=w, requests=n,
            errors=int((~in_step["ok"]).sum()), throughput_rps=x,
            e2e_mean_ms=e2e_all.mean() if n else math.nan,
            completed_rps=x_every,
            littles_n=x_every * e2e_every.mean() / 1e3 if len(in_step) else math.nan,
        ))
        step_rows[-1]["littles_ratio"] = step_rows[-1]["littles_n"] / max(int(users[step]), 1)
        for size in sizes:
            sel = ok_step.index[ok_step["size_class"] == size]
            c = okc.loc[sel] / 1e6
            a = oka.loc[sel] / 1e6
            n_s = len(sel)
            e2e = c[E2E]
            mean_e2e = e2e.mean() if n_s else math.nan
            row = dict(step=int(step), users=int(users[step]), size_class=size, requests=n_s,
                       errors=int(((in_step["size_class"] == size) & ~in_step["ok"]).sum()),
                       window_s=w, throughput_rps=n_s / w,
                       e2e_mean_ms=mean_e2e,
                       e2e_p50_ms=e2e.quantile(0.50) if n_s else math.nan,
                       e2e_p95_ms=e2e.quantile(0.95) if n_s else math.nan,
                       e2e_p99_ms=e2e.quantile(0.99) if n_s else math.nan)
            for comp_name in components:
                m = c[comp_name].mean() if n_s else math.nan
                row[f"{comp_name}_mean_ms"] = m
                row[f"{comp_name}_p50_ms"] = c[comp_name].median() if n_s else math.nan
                row[f"{comp_name}_share"] = m / mean_e2e if n_s and mean_e2e > 0 else math.nan
            rows.append(row)
            srow = dict(step=int(step), users=int(users[step]), size_class=size, requests=n_s)
            for key in stage_keys:
                m = a[UNCOVERED if key == STAGE_UNCOVERED else key].mean() if n_s else math.nan
                label = key
                srow[f"{label}_mean_ms"] = m
                srow[f"{label}_share"] = m / mean_e2e if n_s and mean_e2e > 0 else math.nan
            stage_rows.append(srow)
    return Summary(main=pd.DataFrame(rows), stages=pd.DataFrame(stage_rows),
                   steps=pd.DataFrame(step_rows), components=components, stage_keys=stage_keys)


# --- findings: "what this says" ------------------------------------------------------------------

def _plain_users(n) -> str:
    return f"{int(n)} user" + ("" if int(n) == 1 else "s")


def _fmt_pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _fmt_ms(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def generator_cpu(config: dict) -> list[dict]:
    return list(config.get("load_generator_cpu") or [])


def count_check(run: Run) -> dict:
    final = run.locust_final or {}
    return dict(records=len(run.requests), locust_final=final.get("requests"),
                locust_final_failures=final.get("failures"),
                locust_stats_csv=(run.locust_stats_csv or {}).get("requests"),
                record_errors=int(((run.requests["status"] != 200) | run.requests["error"].notna()).sum()))


# --- validity: stable steps, enough requests, a load generator that kept up --------------------

def stability_rule(config: dict) -> StabilityRule:
    try:
        return StabilityRule.from_dict((config.get("load") or {}).get("stability"))
    except (TypeError, ValueError):
        return StabilityRule()


def _step_table(requests_df: pd.DataFrame, steps_df: pd.DataFrame) -> pd.DataFrame:
    if steps_df is not None and not steps_df.empty:
        return steps_df.sort_values("step").reset_index(drop=True)
    req = requests_df
    return pd.DataFrame([dict(step=0, users=int(req["user"].nunique()) if len(req) else 0,
                              start_ns=int(req["send_ns"].min()) if len(req) else 0,
                              measure_start_ns=int(req["send_ns"].min()) if len(req) else 0,
                              end_ns=int(req["recv_ns"].max()) + 1 if len(req) else 1)])


def validity_checks(run: Run, view: pd.DataFrame, summary: Summary) -> list[str]:
    """Judge every step (``analysis/stability.py``) and the load generator; add the verdicts to
    ``summary.steps`` (columns ``stable``, ``valid``, ``stability``, and for open loop
    ``target_rps``, ``lag_p50_ms``, ``lag_p99_ms``, ``slot_waits``); return the report's top lines.
    ``view``: the requests as attributed (send_ns = intended send time in open loop)."""
    rule = stability_rule(run.config)
    steps_df = _step_table(view, run.steps)
    ok = view[(view["status"] == 200) & view["error"].isna()]
    recv = ok["recv_ns"].to_numpy(np.int64)
    lat = (recv - ok["send_ns"].to_numpy(np.int64)) / 1e6
    verdicts = {}
    for st in steps_df.itertuples():
        sel = (recv >= st.measure_start_ns) & (recv < st.end_ns)
        verdicts[int(st.step)] = assess(list(zip(recv[sel].tolist(), lat[sel].tolist())),
                                        int(st.measure_start_ns), int(st.end_ns), rule)
    rv = run_validity(verdicts)
    sdf = summary.steps
    if len(sdf):
        sdf["stable"] = [verdicts[int(x)].stable if int(x) in verdicts else None for x in sdf["step"]]
        sdf["valid"] = [verdicts[int(x)].valid if int(x) in verdicts else None for x in sdf["step"]]
        sdf["stability"] = [verdicts[int(x)].reason if int(x) in verdicts else "" for x in sdf["step"]]

    lines = [f"**{rv.headline()}**"]
    lab = lambda st: summary.load_labels.get(int(users.get(st, 0))) or _plain_users(users.get(st, 0))  # noqa: E731
    users = dict(zip(steps_df["step"].astype(int), steps_df["users"].astype(int)))
    live = ((run.stability_live or {}).get("live_verdicts") or {})
    for st, v in sorted(verdicts.items()):
        ext = (live.get(str(st)) or {}).get("extended_s") or 0
        if not v.valid:
            lines.append(f"Step {st} ({lab(st)}): {v.reason}" +
                         (f" (extended by {ext:.0f} s)" if ext else "") + ".")
        elif ext:
            lines.append(f"Step {st} ({lab(st)}): stable after being extended by {ext:.0f} s.")
    extend = ((run.config.get("load") or {}).get("stability") or {}).get("extend_up_to_s") \
        or (run.stability_live or {}).get("extend_up_to_s")
    lines.append(f"Rule: a step is stable when its last {rule.windows} windows of {rule.window_s:g} s "
                 f"agree within {100 * rule.tolerance:.0f}% in throughput and in p50 latency; valid "
                 f"with at least {rule.min_requests} successful requests. Unstable steps were "
                 + (f"extended up to {extend:g} s." if extend else "not extended (--stability-max-seconds)."))

    problems, fine = [], []
    cpu = [c for c in generator_cpu(run.config) if c.get("locust_cores") is not None]
    for c in cpu:
        if c["locust_cores"] > GENERATOR_CPU_WARN:
            problems.append(f"Locust used {c['locust_cores']:.2f} cores in step {c.get('step')} "
                            f"({lab(c.get('step'))}), above {GENERATOR_CPU_WARN:.0%} of a core")
    if cpu:
        fine.append(f"Locust ≤ {max(c['locust_cores'] for c in cpu):.2f} cores")
    if run.is_open_loop:
        orig = run.requests
        lag_ms = (orig["send_ns"] - orig["intended_ns"]) / 1e6
        step_of = assign_steps(orig, steps_df)
        rates = (run.config.get("load") or {}).get("rates") or (run.open_loop or {}).get("rates") or []
        ol_steps = (run.open_loop or {}).get("steps") or {}
        cap = (run.open_loop or {}).get("max_in_flight") or (run.config.get("load") or {}).get("max_in_flight")
        cols = {"target_rps": [], "lag_p50_ms": [], "lag_p99_ms": [], "slot_waits": []}
        worst, overloaded = 0.0, []
        for x in sdf["step"] if len(sdf) else []:
            lg = lag_ms[step_of == int(x)]
            p50 = float(lg.quantile(0.5)) if len(lg) else math.nan
            p99 = float(lg.quantile(0.99)) if len(lg) else math.nan
            waits = int((ol_steps.get(str(int(x))) or {}).get("slot_waits", 0))
            cols["target_rps"].append(rates[int(x)] if int(x) < len(rates) else math.nan)
            cols["lag_p50_ms"].append(p50)
            cols["lag_p99_ms"].append(p99)
            cols["slot_waits"].append(waits)
            if waits:
                overloaded.append(int(x))
            elif not math.isnan(p99):
                worst = max(worst, p99)
            if not math.isnan(p99) and p99 > SCHEDULE_LAG_WARN_MS:
                if waits:
                    lines.append(f"Step {int(x)} ({lab(int(x))}): all {cap} in-flight slots were busy "
                                 f"{waits} times — the service did not keep up with the offered load; "
                                 f"schedule lag p99 {p99:.1f} ms includes waiting for a slot "
                                 f"(overload, not the generator).")
                else:
                    problems.append(f"open-loop schedule lag p99 {p99:.1f} ms in step {int(x)} "
                                    f"({lab(int(x))}), above {SCHEDULE_LAG_WARN_MS:g} ms: Locust fell "
                                    f"behind its own schedule")
        for k, v in cols.items():
            sdf[k] = v
        fine.append(f"open-loop schedule lag p99 ≤ {worst:.1f} ms" +
                    (f" outside the overloaded step(s) {', '.join(map(str, overloaded))}" if overloaded else ""))
    if problems:
        lines.append("**MEASURING THE GENERATOR**: " + "; ".join(problems) +
                     ". Latency and throughput here may describe the load generator, not the service.")
    elif fine:
        lines.append("Load generator kept up: " + ", ".join(fine) + ".")
    else:
        lines.append("Load generator CPU was not recorded: cannot rule out measuring the generator.")
    return lines


def findings(run: Run, summary: Summary) -> list[str]:
    def _users(n) -> str:  # noqa: F811  (open-loop steps are labelled by their rate)
        return summary.load_labels.get(int(n)) or _plain_users(n)

    out: list[str] = []
    main = summary.main[summary.main["requests"] > 0]
    if main.empty:
        return ["No successful requests in any measured window: nothing to break down."]
    sizes = sorted(main["size_class"].unique(), key=size_sort_key)
    low_users = int(main["users"].min())
    high_users = int(main["users"].max())
    low = main[main["users"] == low_users].set_index("size_class")

    def share_of(row, comps):
        vals = [row.get(f"{c}_share", math.nan) for c in comps if f"{c}_share" in row]
        vals = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
        return sum(vals) if vals else math.nan

    dr = [c for c in ("decode", "resize") if f"{c}_share" in main.columns]
    if dr and len(sizes) >= 1:
        small, large = sizes[0], sizes[-1]
        s_small = share_of(low.loc[small], dr) if small in low.index else math.nan
        s_large = share_of(low.loc[large], dr) if large in low.index else math.nan
        name = "+".join(dr)
        if small != large:
            out.append(f"{name} take {_fmt_pct(s_small)} of end-to-end latency at {small} and "
                       f"{_fmt_pct(s_large)} at {large} ({_users(low_users)}).")
        else:
            out.append(f"{name} take {_fmt_pct(s_small)} of end-to-end latency at {small}.")
        data = [c for c in summary.components if c not in ("inference", UNCOVERED)]
        if data and small in low.index and large in low.index:
            out.append(f"Everything but inference and `other` (data handling, queues, broker) takes "
                       f"{_fmt_pct(share_of(low.loc[small], data))} at {small} and "
                       f"{_fmt_pct(share_of(low.loc[large], data))} at {large} ({_users(low_users)}).")

    for users in sorted({low_users, high_users}):
        parts = []
        for size in sizes:
            sel = main[(main["users"] == users) & (main["size_class"] == size)]
            if sel.empty:
                continue
            row = sel.iloc[0]
            comps = [c for c in summary.components if c != UNCOVERED]
            if not comps:
                continue
            best = max(comps, key=lambda c: -1 if math.isnan(row[f"{c}_mean_ms"]) else row[f"{c}_mean_ms"])
            parts.append(f"{size}: {best} {_fmt_ms(row[f'{best}_mean_ms'])} ms "
                         f"({_fmt_pct(row[f'{best}_share'])})")
        if parts:
            out.append(f"Largest component at {_users(users)} — " + "; ".join(parts) + ".")

    other = main[f"{UNCOVERED}_share"].dropna()
    if len(other):
        worst = main.loc[other.idxmax()]
        msg = (f"Unexplained `other` (no span covers it: HTTP transfer, event loop, hand-offs) is "
               f"{_fmt_pct(other.min())}–{_fmt_pct(other.max())} of end-to-end "
               f"(largest at {_users(worst['users'])}, {worst['size_class']}: "
               f"{_fmt_ms(worst[f'{UNCOVERED}_mean_ms'])} ms).")
        if other.max() > 0.10:
            msg += " Above 10%: some time on the request path is not instrumented."
        out.append(msg)

    lit = summary.steps.dropna(subset=["littles_n"])
    if len(lit) and run.is_open_loop:
        out.append("Open loop: requests in flight on average (Little's law, completions/s × mean "
                   "latency from the intended send time): " +
                   "; ".join(f"{_users(r.users)}: {r.littles_n:.2f}" for r in lit.itertuples()) + ".")
    elif len(lit):
        items = [f"{_users(r.users)}: {r.littles_n:.2f} ({_fmt_pct(r.littles_ratio)})"
                 for r in lit.itertuples()]
        worst = lit.loc[(lit["littles_ratio"] - 1).abs().idxmax()]
        msg = ("Little's law check, all sizes and outcomes (completions/s × mean latency should equal "
               "the users of a closed loop): " + "; ".join(items) + ".")
        if abs(worst["littles_ratio"] - 1) > 0.05:
            msg += (f" Off by more than 5% at {_users(worst['users'])}: time between one answer and "
                    f"the next request (client overhead) or users not all running.")
        out.append(msg)

    st = summary.steps[summary.steps["requests"] > 0]
    if len(st) > 1:
        peak = st.loc[st["throughput_rps"].idxmax()]
        first, last = st.iloc[0], st.iloc[-1]
        msg = (f"Throughput {first['throughput_rps']:.1f} req/s at {_users(first['users'])} → "
               f"{last['throughput_rps']:.1f} at {_users(last['users'])} (peak {peak['throughput_rps']:.1f} "
               f"at {_users(peak['users'])}); mean latency {_fmt_ms(first['e2e_mean_ms'])} → "
               f"{_fmt_ms(last['e2e_mean_ms'])} ms.")
        if peak["step"] == first["step"]:
            msg += " More users added only queueing: the service is saturated from the first step."
        out.append(msg)

    cpu = generator_cpu(run.config)
    if cpu:
        items = [f"{summary.load_labels.get(int(c.get('step', -2)) + 1) or _users(c['users'])}: "
                 f"{c['locust_cores']:.2f}" for c in cpu
                 if c.get("locust_cores") is not None]
        worst = max((c.get("locust_cores") or 0) for c in cpu)
        msg = "Load generator (Locust) CPU, cores: " + "; ".join(items) + "."
        if worst > GENERATOR_CPU_WARN:
            msg += (f" WARNING: {worst:.2f} cores is above {GENERATOR_CPU_WARN:.0%} of a core — the load generator may be "
                    f"limiting throughput and inflating latency.")
        gw = [c.get("gateway_cores") for c in cpu if c.get("gateway_cores") is not None]
        if gw:
            msg += " Gateway (with its children) used " + ", ".join(f"{g:.2f}" for g in gw) + " cores."
        out.append(msg)
    else:
        out.append("Load generator CPU was not recorded for this run.")

    cc = count_check(run)
    msg = (f"Records in requests.parquet: {cc['records']} ({cc['record_errors']} failed); "
           f"Locust's final count: {cc['locust_final'] if cc['locust_final'] is not None else 'n/a'}"
           f" ({cc['locust_final_failures'] if cc['locust_final_failures'] is not None else 'n/a'} failed); "
           f"Locust's _stats.csv: {cc['locust_stats_csv'] if cc['locust_stats_csv'] is not None else 'n/a'}.")
    if cc["locust_final"] is not None and cc["locust_final"] != cc["records"]:
        msg += " MISMATCH between our records and Locust's count."
    out.append(msg)

    errs = run.requests[(run.requests["status"] != 200) | run.requests["error"].notna()]
    if len(errs):
        top = errs["error"].fillna("HTTP " + errs["status"].astype(str)).str.slice(0, 120).value_counts().head(3)
        out.append(f"{len(errs)} failed requests in the run; most common: " +
                   "; ".join(f"{n}× {msg}" for msg, n in top.items()) + ".")
    return out


# --- rendering --------------------------------------------------------------------------------

def _what_ran(config: dict, run: Run) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    r = config.get("run", {})
    if r:
        items.append(("started", str(r.get("started", ""))))
        if r.get("command"):
            items.append(("command", " ".join(map(str, r["command"]))))
        items.append(("target", f"{r.get('host', '')} ({'gateway started by the sweep' if r.get('managed_gateway') else 'external'})"))
    load = config.get("load", {})
    if load:
        steps = ", ".join(f"{s['rate']:g}/s×{s['seconds']:g}s" if "rate" in s else
                          f"{s['users']}u×{s['seconds']:g}s" for s in load.get("schedule", []))
        loop = (f"open loop ({load['arrivals']} arrivals, at most {load.get('max_in_flight')} in flight, "
                f"seed {load.get('seed')})" if load.get("arrivals") else "closed loop")
        items.append(("load", f"{load.get('tool', 'locust')} {load.get('user_class', '')}, {loop}, "
                              f"steps {steps}, warm-up {load.get('warmup_seconds', 0):g} s per step, "
                              f"sizes {', '.join(load.get('sizes') or []) or 'all'}"))
    gw = config.get("gateway") or {}
    if gw:
        settings = gw.get("settings") if isinstance(gw.get("settings"), dict) else gw
        skip = {"host", "port", "spans_dir", "log_level", "access_log", "pid", "started_ns", "ready",
                "git_rev", "models_dir"}
        flat = [f"{k}={v}" for k, v in settings.items()
                if k not in skip and not isinstance(v, (dict, list))]
        if isinstance(gw.get("preprocessor"), str):
            flat.append(f"preprocessor object {gw['preprocessor']}")
        items.append(("gateway", "; ".join(flat) or json.dumps(gw)[:500]))
        models = gw.get("models")
        if isinstance(models, dict):
            items.append(("models", "; ".join(
                f"{role}: {m.get('name', '?')}" + (f" {m['input_hw'][0]}x{m['input_hw'][1]}"
                                                   if isinstance(m, dict) and m.get("input_hw") else "")
                for role, m in models.items() if isinstance(m, dict))))
    corpus = config.get("corpus") or {}
    if corpus.get("by_size"):
        items.append(("corpus", "; ".join(
            f"{s}: {v.get('count')} images, mean {v.get('mean_bytes', 0) / 1e3:.0f} kB"
            for s, v in sorted(corpus["by_size"].items(), key=lambda kv: size_sort_key(kv[0])))))
    m = config.get("machine") or {}
    if m:
        items.append(("machine", f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, "
                                 f"{m.get('mem_gib', '?')} GiB, {m.get('platform', '')}"))
    v = config.get("versions") or {}
    if v:
        items.append(("versions", ", ".join(f"{k} {val}" for k, val in v.items() if val)))
    g = config.get("git") or {}
    if g.get("rev"):
        items.append(("git", f"{g['rev'][:12]}{' (dirty)' if g.get('dirty') else ''}"))
    if not items:
        items.append(("run", f"{run.path.name} (no config.json)"))
    return items


def _main_table(summary: Summary, with_p50: bool) -> tuple[list[str], list[list[str]]]:
    head = ["users", "size", "requests", "errors", "req/s", "e2e mean", "p50", "p95", "p99"]
    head += [f"{c} ms" for c in summary.components]
    rows = []
    bad = set()
    if "valid" in summary.steps.columns:
        bad = {int(x) for x, v in zip(summary.steps["step"], summary.steps["valid"]) if v is False}
    if summary.load_labels:
        head[0] = "load"
    for r in summary.main.to_dict("records"):
        load = summary.load_labels.get(int(r["users"])) or str(r["users"])
        if int(r["step"]) in bad:
            load += " ⚠ not valid"
        row = [load, r["size_class"], str(r["requests"]), str(r["errors"]),
               f"{r['throughput_rps']:.1f}", _fmt_ms(r["e2e_mean_ms"]), _fmt_ms(r["e2e_p50_ms"]),
               _fmt_ms(r["e2e_p95_ms"]), _fmt_ms(r["e2e_p99_ms"])]
        for c in summary.components:
            cell = f"{_fmt_ms(r[f'{c}_mean_ms'])}"
            if with_p50:
                cell += f" / {_fmt_ms(r[f'{c}_p50_ms'])}"
            cell += f" ({_fmt_pct(r[f'{c}_share'])})"
            row.append(cell)
        rows.append(row)
    return head, rows


def _stage_table(summary: Summary) -> tuple[list[str], list[list[str]]]:
    keys = [k for k in summary.stage_keys
            if k == STAGE_UNCOVERED or summary.stages[f"{k}_mean_ms"].fillna(0).abs().sum() > 0]
    head = ["load" if summary.load_labels else "users", "size"] + [f"{k} ms" for k in keys]
    rows = []
    for r in summary.stages.to_dict("records"):
        rows.append([summary.load_labels.get(int(r["users"])) or str(r["users"]), r["size_class"]] +
                    [f"{_fmt_ms(r[f'{k}_mean_ms'])} ({_fmt_pct(r[f'{k}_share'])})" for k in keys])
    return head, rows


def _steps_table(summary: Summary, config: dict) -> tuple[list[str], list[list[str]]]:
    cpu = {c.get("step"): c for c in generator_cpu(config)}
    head = ["step", "users", "window s", "requests", "errors", "req/s", "mean ms",
            "X·W (users)", "Locust cores", "gateway cores"]
    open_loop = "lag_p99_ms" in summary.steps.columns
    if open_loop:
        head[1:2] = ["target req/s"]
        head[6:7] = ["mean ms (from intended)", "lag p50 ms", "lag p99 ms", "slot waits"]
        head[head.index("X·W (users)")] = "X·W (in flight)"
    if "valid" in summary.steps.columns:
        head.append("stable")
    rows = []
    for r in summary.steps.to_dict("records"):
        c = cpu.get(r["step"], {})
        row = [str(r["step"]), str(r["users"]), f"{r['window_s']:.1f}", str(r["requests"]),
               str(r["errors"]), f"{r['throughput_rps']:.1f}", _fmt_ms(r["e2e_mean_ms"]),
               "–" if math.isnan(r["littles_n"]) else f"{r['littles_n']:.2f}",
               "–" if c.get("locust_cores") is None else f"{c['locust_cores']:.2f}",
               "–" if c.get("gateway_cores") is None else f"{c['gateway_cores']:.2f}"]
        if open_loop:
            row[1:2] = ["–" if math.isnan(r["target_rps"]) else f"{r['target_rps']:g}"]
            row[6:7] = [_fmt_ms(r["e2e_mean_ms"]), _fmt_ms(r["lag_p50_ms"]), _fmt_ms(r["lag_p99_ms"]),
                        str(r["slot_waits"])]
        if "valid" in r:
            row.append("yes" if r["stable"] and r["valid"] else
                       ("–" if r["stable"] is None else f"NO: {r['stability']}"))
        rows.append(row)
    return head, rows


def _md_table(head, rows) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(head, rows) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


_COLORS = {"decode": "#1f77b4", "resize": "#aec7e8", "normalize": "#17becf", "serialize": "#9467bd",
           "transfer": "#c5b0d5", "queue": "#ff7f0e", "inference": "#2ca02c", "postprocess": "#98df8a",
           "broker": "#d62728", "other": "#7f7f7f"}


def plot(summary: Summary, plots_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    main = summary.main
    sizes = sorted(main["size_class"].unique(), key=size_sort_key)
    for size in sizes:
        d = main[(main["size_class"] == size) & (main["requests"] > 0)]
        if d.empty:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.2))
        x = np.arange(len(d))
        bottom = np.zeros(len(d))
        for c in summary.components:
            vals = d[f"{c}_mean_ms"].fillna(0).to_numpy()
            ax.bar(x, vals, bottom=bottom, label=c, color=_COLORS.get(c))
            bottom += vals
        ax.plot(x, d["e2e_p50_ms"], "k_", markersize=18, mew=2, label="e2e p50")
        ax.set_xticks(x, [summary.load_labels.get(int(u)) or f"{u}" for u in d["users"]])
        ax.set_xlabel("offered load" if summary.load_labels else "concurrent users")
        ax.set_ylabel("mean ms per request")
        ax.set_title(f"Where the time goes — {size}")
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        path = plots_dir / f"stacked_{size}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, size in enumerate(sizes):
        d = main[(main["size_class"] == size) & (main["requests"] > 0)]
        if d.empty:
            continue
        color = f"C{i}"
        ax.plot(d["throughput_rps"], d["e2e_p50_ms"], "o-", color=color, label=f"{size} p50")
        ax.plot(d["throughput_rps"], d["e2e_p99_ms"], "s--", color=color, alpha=0.7, label=f"{size} p99")
        for r in d.itertuples():
            ax.annotate(summary.load_labels.get(int(r.users)) or f"{r.users}u", (r.throughput_rps, r.e2e_p50_ms), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
    ax.set_xlabel("throughput of that size class (req/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    if len(main) and (main["e2e_p99_ms"].max() / max(main["e2e_p50_ms"].min(), 1e-9)) > 20:
        ax.set_yscale("log")
    ax.set_title("Latency vs throughput (labels: concurrent users)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = plots_dir / "latency_throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


@dataclass
class Report:
    run: Run
    attr: pd.DataFrame
    summary: Summary
    findings: list[str]
    files: dict
    validity: list[str] = field(default_factory=list)


def _md_inline(text: str) -> str:
    return html.escape(text).replace("**", "")


def write_report(run: Run, attr: pd.DataFrame, summary: Summary, notes: list[str],
                 validity: list[str] | None = None) -> dict:
    rd = RunDir(run.path)
    files = {}
    summary.main.merge(summary.stages.drop(columns=["requests"]),
                       on=["step", "users", "size_class"], how="left").to_csv(rd.breakdown_csv, index=False)
    files["csv"] = rd.breakdown_csv
    plots = plot(summary, rd.plots)
    files["plots"] = plots

    what = _what_ran(run.config, run)
    main_t = _main_table(summary, with_p50=True)
    stage_t = _stage_table(summary)
    steps_t = _steps_table(summary, run.config)
    title = f"Overhead breakdown — {run.path.name}"
    closure = (attr[[c for c in attr.columns if c != E2E]].sum(axis=1) - attr[E2E]).abs().max() if len(attr) else 0.0

    md = [f"# {title}", ""]
    if validity:
        md += ["## Validity", ""] + [f"- {v}" for v in validity] + [""]
    md += ["## What ran", ""]
    md += [f"- **{k}**: {v}" for k, v in what]
    md += ["", "## What this says", ""] + [f"- {n}" for n in notes]
    md += ["", "## Breakdown per concurrency and size class", "",
           "Measured window = each step after its warm-up, successful requests only. Component cells: "
           "mean / p50 ms (share of mean end-to-end). Components + other = end-to-end per request "
           f"(largest closure error {closure:.3g} ns).", "", _md_table(*main_t),
           "", "## Per stage", "", "Mean ms (share of end-to-end), by stage-component; `uncovered` is "
           "time no span covers.", "", _md_table(*stage_t),
           "", "## Steps (all sizes)", "", _md_table(*steps_t), "", "## Plots", ""]
    md += [f"![{p.stem}](plots/{p.name})" for p in plots]
    if run.config.get("serving"):  # which server each stage used, Triton trace vs stats cross-check
        from deploy.triton.sweep_server import serving_section

        md += serving_section(run.config["serving"]).splitlines()
    md += ["", "## config.json", "", "<details><summary>everything recorded about this run</summary>", "",
           "```json", json.dumps(run.config, indent=2, default=str), "```", "", "</details>"]
    rd.report_md.write_text("\n".join(md) + "\n")
    files["md"] = rd.report_md

    imgs = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.name)}</figcaption></figure>'
        for p in plots)
    css = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
           "table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
           "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}"
           "th{background:#f2f2f2}figure{display:inline-block;margin:.5em}img{max-width:640px}"
           "li{margin:.3em 0}code{background:#f4f4f4}")
    body = [f"<h1>{html.escape(title)}</h1>"]
    if validity:
        body += ["<h2>Validity</h2><ul>"] + [
            f"<li>{'<b>' if i == 0 or 'GENERATOR' in v else ''}{_md_inline(v)}"
            f"{'</b>' if i == 0 or 'GENERATOR' in v else ''}</li>" for i, v in enumerate(validity)] + ["</ul>"]
    body += ["<h2>What ran</h2><ul>"]
    body += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in what]
    body += ["</ul><h2>What this says</h2><ul>"]
    body += [f"<li>{html.escape(n)}</li>" for n in notes]
    body += ["</ul><h2>Breakdown per concurrency and size class</h2>",
             f"<p>Measured window = each step after its warm-up, successful requests only. Component "
             f"cells: mean / p50 ms (share of mean end-to-end). Largest closure error {closure:.3g} ns.</p>",
             _html_table(*main_t), "<h2>Per stage</h2>", _html_table(*stage_t),
             "<h2>Steps (all sizes)</h2>", _html_table(*steps_t), "<h2>Plots</h2>", imgs,
             "<h2>config.json</h2><details><summary>everything recorded about this run</summary><pre>",
             html.escape(json.dumps(run.config, indent=2, default=str)), "</pre></details>"]
    rd.report_html.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                              f"</title><style>{css}</style></head><body>{''.join(body)}</body></html>\n")
    files["html"] = rd.report_html
    return files


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or logged: rich would squeeze the table into 80 columns
        console = Console(width=max(console.width, 200))
    return console


def print_tables(report: Report, console=None) -> None:
    from rich.table import Table

    console = console or _console()
    s = report.summary
    head, rows = _main_table(s, with_p50=False)
    head = [h.removesuffix(" ms") for h in head]
    # The console shows the components that matter somewhere (>= 1% of e2e) and `other`;
    # report.md has them all.
    keep = [i for i, h in enumerate(head)
            if i < 9 and h not in ("errors", "p95") or h == "other"
            or i >= 9 and (s.main[f"{h}_share"].fillna(0).max() >= 0.01)]
    dropped = [h for i, h in enumerate(head) if i >= 9 and i not in keep]
    head = [head[i] for i in keep]
    rows = [[r[i] for i in keep] for r in rows]
    t = Table(title=f"Where the time goes — {report.run.path.name} (mean ms, share of e2e)",
              title_justify="left")
    for h in head:
        t.add_column(h, justify="right", no_wrap=False)
    last_users = None
    for r in rows:
        if last_users is not None and r[0] != last_users:
            t.add_section()
        last_users = r[0]
        t.add_row(*r)
    console.print(t)
    if dropped:
        console.print(f"(under 1% of e2e at every step, in report.md: {', '.join(dropped)})",
                      highlight=False)
    console.print("[bold]Validity[/bold]")
    for v in report.validity:
        console.print(f" • {v.replace('**', '')}", highlight=False)
    console.print("[bold]What this says[/bold]")
    for n in report.findings:
        console.print(f" • {n}", highlight=False)


def report(run_dir, console=None, quiet: bool = False) -> Report:
    """Load, attribute, summarize, write report files; print unless quiet."""
    t0 = time.perf_counter()
    run = load_run(run_dir)
    requests, spans, steps = run.requests, run.spans, run.steps
    labels = {}
    if run.is_open_loop:  # e2e from the intended send time; steps labelled by their target rate
        requests, spans = open_loop_view(run.requests, run.spans)
        rates = (run.config.get("load") or {}).get("rates") or (run.open_loop or {}).get("rates") or []
        if len(steps):
            steps = steps.copy()
            steps["users"] = steps["step"] + 1   # a distinct load level per step
            labels = {int(st) + 1: (f"{rates[int(st)]:g} req/s" if int(st) < len(rates) else f"step {st}")
                      for st in steps["step"]}
    attr = attribute(requests, spans)
    summary = summarize(requests, attr, steps)
    summary.load_labels = labels
    run_view = Run(**{**run.__dict__, "steps": steps})
    checks = validity_checks(run_view, requests, summary)
    notes = findings(run_view, summary)
    files = write_report(run_view, attr, summary, notes, checks)
    rep = Report(run=run, attr=attr, summary=summary, findings=notes, files=files, validity=checks)
    if not quiet:
        console = console or _console()
        print_tables(rep, console)
        console.print(f"report: {files['md']}  (html: {files['html']}; "
                      f"{len(run.requests)} requests, {len(run.spans)} spans, "
                      f"{time.perf_counter() - t0:.1f} s)", highlight=False)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="analysis/breakdown.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run directory written by loadtest/sweep.py")
    ap.add_argument("-q", "--quiet", action="store_true", help="write the files, print only the path")
    args = ap.parse_args(argv)
    try:
        rep = report(args.run_dir, quiet=args.quiet)
    except FileNotFoundError as exc:
        print(f"breakdown: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print(rep.files["md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
