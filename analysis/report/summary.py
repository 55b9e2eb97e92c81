"""Per concurrency step and size class, over each step's measured window: counts, throughput,
end-to-end mean/p50/p95/p99 (and ``e2e_p99_ub_ms``, the p99 bound at 99% confidence, NaN with
fewer than 459 requests: ``analysis.report.uncertainty``), and per component its mean, median and
share of end-to-end."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.report.attribution import E2E, STAGE_UNCOVERED, UNCOVERED, by_component
from analysis.report.uncertainty import p99_upper_bound

KEYS = ["step", "size_class"]
QUANTILES = {"e2e_p50_ms": 0.50, "e2e_p95_ms": 0.95, "e2e_p99_ms": 0.99}


@dataclass
class Summary:
    main: pd.DataFrame          # per (step, size): counts, throughput, e2e, per component
    stages: pd.DataFrame        # per (step, size): per stage-component (and "uncovered") mean ms, share
    steps: pd.DataFrame         # per step, all sizes: throughput, mean e2e, Little's law
    components: list[str] = field(default_factory=list)
    stage_keys: list[str] = field(default_factory=list)
    load_labels: dict = field(default_factory=dict)   # steps' "users" value -> label (open loop)
    slo_ms: float | None = None                        # goodput's latency objective

    def load_label(self, users) -> str | None:
        """Open loop: the label of a load level (a step's "users" value); None in closed loop."""
        return self.load_labels.get(int(users))


def size_sort_key(size: str):
    m = re.match(r"([0-9.]+)\s*([kKMG]?)", str(size))
    if not m:
        return (1, str(size))
    scale = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
    return (0, float(m.group(1)) * scale)


def step_table(requests_df: pd.DataFrame, steps_df: pd.DataFrame | None) -> pd.DataFrame:
    """The run's steps sorted; with none recorded, the whole run is one step."""
    if steps_df is not None and not steps_df.empty:
        return steps_df.sort_values("step").reset_index(drop=True)
    req = requests_df
    return pd.DataFrame([dict(step=0, users=int(req["user"].nunique()) if len(req) else 0,
                              start_ns=int(req["send_ns"].min()) if len(req) else 0,
                              measure_start_ns=int(req["send_ns"].min()) if len(req) else 0,
                              end_ns=int(req["recv_ns"].max()) + 1 if len(req) else 1)])


def assign_steps(requests_df: pd.DataFrame, steps_df: pd.DataFrame) -> pd.Series:
    """Step of each request: the step whose measured window [measure_start_ns, end_ns) holds its
    completion (recv_ns) — for a request never answered in its step (``incomplete``) its intended
    send time, the step that made it due; -1 for warm-up, between steps, or after the end."""
    step = np.full(len(requests_df), -1, np.int64)
    recv = np.where(requests_df["error"] == "incomplete",
                    requests_df["intended_ns"].fillna(requests_df["send_ns"]),
                    requests_df["recv_ns"]).astype(np.int64)
    for row in steps_df.itertuples():
        inside = (recv >= row.measure_start_ns) & (recv < row.end_ns)
        step[inside] = row.step
    return pd.Series(step, index=requests_df.index, name="step")


def summarize(requests_df: pd.DataFrame, attr: pd.DataFrame, steps_df: pd.DataFrame,
              slo_ms: float | None = None) -> Summary:
    """Per step and size class, over each step's measured window (see ``assign_steps``);
    ``slo_ms``: goodput counts the successes within it (None: every success)."""
    steps_df = step_table(requests_df, steps_df)
    req = requests_df.copy()
    req["step"] = assign_steps(req, steps_df).to_numpy()
    req["ok"] = (req["status"] == 200) & req["error"].isna()
    req = req[req["step"] >= 0]
    steps = steps_df.set_index("step")
    steps["window_s"] = (steps["end_ns"] - steps["measure_start_ns"]).clip(lower=1) / 1e9

    comp = by_component(attr)
    components = [c for c in comp.columns if c not in (E2E, UNCOVERED)]
    components = [c for c in components if comp[c].abs().sum() > 0] + [UNCOVERED]
    stage_keys = [c for c in attr.columns if c not in (E2E, UNCOVERED)] + [STAGE_UNCOVERED]

    ok = req[req["ok"]]
    ids = ok["request_id"].astype(str).to_numpy()
    okc = _per_request_ms(comp.reindex(ids), ok)
    oka = _per_request_ms(attr.reindex(ids).rename(columns={UNCOVERED: STAGE_UNCOVERED}), ok)
    sizes = sorted(req["size_class"].dropna().unique(), key=size_sort_key)
    cells = pd.MultiIndex.from_product([steps.index, sizes], names=KEYS)
    counts = pd.DataFrame({
        "requests": ok.groupby(KEYS).size().reindex(cells, fill_value=0),
        "errors": req[~req["ok"]].groupby(KEYS).size().reindex(cells, fill_value=0)})
    e2e = okc.groupby(KEYS)[E2E]
    main = _cells(steps, counts).assign(
        throughput_rps=lambda d: d["requests"] / d["window_s"],
        e2e_mean_ms=e2e.mean().reindex(cells),
        **{name: e2e.quantile(q).reindex(cells) for name, q in QUANTILES.items()},
        e2e_p99_ub_ms=e2e.agg(p99_upper_bound).reindex(cells))
    main = _with_components(main, okc.groupby(KEYS), components, cells, with_p50=True)
    stages = _with_components(_cells(steps, counts)[["users", "requests"]], oka.groupby(KEYS),
                              stage_keys, cells, with_p50=False, e2e_mean=main["e2e_mean_ms"])
    return Summary(main=_flat(main), stages=_flat(stages),
                   steps=_step_rows(req, okc, steps, slo_ms), components=components, stage_keys=stage_keys,
                   slo_ms=slo_ms)


def _flat(table: pd.DataFrame) -> pd.DataFrame:
    """(step, size class) index to columns, in the report's column order: step, users, size_class."""
    out = table.reset_index()
    first = ["step", "users", "size_class"]
    return out[first + [c for c in out.columns if c not in first]]


def _per_request_ms(df: pd.DataFrame, ok: pd.DataFrame) -> pd.DataFrame:
    """Per successful request: its attribution in ms, with its step and size class."""
    df = df / 1e6
    df.index = ok.index
    return df.assign(step=ok["step"], size_class=ok["size_class"])


def _cells(steps: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    """One row per (step, size class): users, requests, errors, window_s."""
    per_step = steps[["users", "window_s"]].reindex(counts.index.get_level_values("step"))
    per_step.index = counts.index
    out = counts.assign(users=per_step["users"].astype(int), window_s=per_step["window_s"])
    return out[["users", "requests", "errors", "window_s"]]


def _with_components(table: pd.DataFrame, groups, names: list[str], cells: pd.MultiIndex,
                     with_p50: bool, e2e_mean: pd.Series | None = None) -> pd.DataFrame:
    """Add ``<name>_mean_ms`` (and ``_p50_ms``) and ``<name>_share`` (of the mean e2e) columns."""
    e2e_mean = table["e2e_mean_ms"] if e2e_mean is None else e2e_mean
    mean = groups[names].mean().reindex(cells)
    p50 = groups[names].median().reindex(cells) if with_p50 else None
    denom = e2e_mean.where(e2e_mean > 0)
    cols = {}
    for name in names:
        cols[f"{name}_mean_ms"] = mean[name]
        if with_p50:
            cols[f"{name}_p50_ms"] = p50[name]
        cols[f"{name}_share"] = mean[name] / denom
    return pd.concat([table, pd.DataFrame(cols, index=cells)], axis=1)


def _step_rows(req: pd.DataFrame, okc: pd.DataFrame, steps: pd.DataFrame,
               slo_ms: float | None = None) -> pd.DataFrame:
    """Per step, all sizes: throughput, goodput (successes within ``slo_ms`` per second), mean
    e2e, and Little's law over every completed request (failures occupy a user too)."""
    every = req.assign(e2e_ms=(req["recv_ns"] - req["send_ns"]) / 1e6).groupby("step")
    out = pd.DataFrame({
        "users": steps["users"].astype(int), "window_s": steps["window_s"],
        "requests": okc.groupby("step").size().reindex(steps.index, fill_value=0),
        "errors": (~req["ok"]).groupby(req["step"]).sum().reindex(steps.index, fill_value=0).astype(int)})
    out["throughput_rps"] = out["requests"] / out["window_s"]
    good = okc[E2E] <= slo_ms if slo_ms else pd.Series(True, index=okc.index)
    out["goodput_rps"] = (good.groupby(okc["step"]).sum().reindex(steps.index, fill_value=0)
                          / out["window_s"])
    out["e2e_mean_ms"] = okc.groupby("step")[E2E].mean().reindex(steps.index)
    out["completed_rps"] = every.size().reindex(steps.index, fill_value=0) / out["window_s"]
    out["littles_n"] = out["completed_rps"] * every["e2e_ms"].mean().reindex(steps.index) / 1e3
    out["littles_ratio"] = out["littles_n"] / out["users"].clip(lower=1)
    out.index = out.index.astype(int)
    return out.reset_index()
