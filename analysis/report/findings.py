"""What this says: the report's findings in prose, one small function per finding."""
from __future__ import annotations

import math

import pandas as pd

from analysis.report.attribution import UNCOVERED
from analysis.report.ceiling import ceiling_findings
from analysis.report.fmt import fmt_ms, fmt_pct, plain_users
from analysis.report.load import Run, count_check
from analysis.report.summary import Summary, size_sort_key
from analysis.report.validity import GENERATOR_CPU_WARN


def findings(run: Run, summary: Summary) -> list[str]:
    main = summary.main[summary.main["requests"] > 0] if len(summary.main) else summary.main
    if main.empty:
        return ["No successful requests in any measured window: nothing to break down."]

    def users(n) -> str:  # open-loop steps are labelled by their rate
        return summary.load_labels.get(int(n)) or plain_users(n)

    out = ceiling_findings(run, summary, users)   # first: the pipeline against its ceiling
    out += _data_handling(main, summary, users)
    out += _largest_components(main, summary, users)
    out += _broker_vs_backlog(main, summary, users)
    out += _unexplained_other(main, users)
    out += _littles_law(run, summary, users)
    out += _throughput(summary, users)
    out.append(_generator_cpu(run, summary, users))
    out.append(_counts(run))
    out += _errors(run)
    return out


def _share_of(row: pd.Series, comps: list[str]) -> float:
    vals = [row.get(f"{c}_share", math.nan) for c in comps if f"{c}_share" in row]
    vals = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) if vals else math.nan


def _data_handling(main: pd.DataFrame, summary: Summary, users) -> list[str]:
    """decode+resize, and everything but inference, at the smallest and largest size class."""
    dr = [c for c in ("decode", "resize") if f"{c}_share" in main.columns]
    if not dr:
        return []
    sizes = sorted(main["size_class"].unique(), key=size_sort_key)
    low_users = int(main["users"].min())
    low = main[main["users"] == low_users].set_index("size_class")
    small, large = sizes[0], sizes[-1]
    s_small = _share_of(low.loc[small], dr) if small in low.index else math.nan
    s_large = _share_of(low.loc[large], dr) if large in low.index else math.nan
    name = "+".join(dr)
    if small != large:
        out = [f"{name} take {fmt_pct(s_small)} of end-to-end latency at {small} and "
               f"{fmt_pct(s_large)} at {large} ({users(low_users)})."]
    else:
        out = [f"{name} take {fmt_pct(s_small)} of end-to-end latency at {small}."]
    data = [c for c in summary.components if c not in ("inference", UNCOVERED)]
    if data and small in low.index and large in low.index:
        out.append(f"Everything but inference and `other` (data handling, queues, broker) takes "
                   f"{fmt_pct(_share_of(low.loc[small], data))} at {small} and "
                   f"{fmt_pct(_share_of(low.loc[large], data))} at {large} ({users(low_users)}).")
    return out


def _largest_components(main: pd.DataFrame, summary: Summary, users) -> list[str]:
    """The largest component per size class, at the lowest and the highest load."""
    comps = [c for c in summary.components if c != UNCOVERED]
    sizes = sorted(main["size_class"].unique(), key=size_sort_key)
    out = []
    for n in sorted({int(main["users"].min()), int(main["users"].max())}):
        parts = []
        for size in sizes:
            sel = main[(main["users"] == n) & (main["size_class"] == size)]
            if sel.empty or not comps:
                continue
            row = sel.iloc[0]
            best = max(comps, key=lambda c: -1 if math.isnan(row[f"{c}_mean_ms"]) else row[f"{c}_mean_ms"])
            parts.append(f"{size}: {best} {fmt_ms(row[f'{best}_mean_ms'])} ms "
                         f"({fmt_pct(row[f'{best}_share'])})")
        if parts:
            out.append(f"Largest component at {users(n)} — " + "; ".join(parts) + ".")
    return out


def _broker_vs_backlog(main: pd.DataFrame, summary: Summary, users) -> list[str]:
    """On the critical path: the broker's own transit against the wait for a busy worker."""
    if "backlog" not in summary.components or "broker" not in summary.components or not len(main):
        return []
    parts = []
    for n in sorted({int(main["users"].min()), int(main["users"].max())}):
        sel = main[main["users"] == n]
        parts.append(f"{users(n)}: broker {fmt_ms(sel['broker_mean_ms'].mean())} ms "
                     f"({fmt_pct(sel['broker_share'].mean())}), backlog "
                     f"{fmt_ms(sel['backlog_mean_ms'].mean())} ms ({fmt_pct(sel['backlog_share'].mean())})")
    return ["Broker vs backlog on the critical path (`broker` = the broker's own transit, `backlog` = "
            "the last crop waiting for a worker busy with other crops: more workers, not another "
            "broker, cut it) — " + "; ".join(parts) + "."]


def _unexplained_other(main: pd.DataFrame, users) -> list[str]:
    other = main[f"{UNCOVERED}_share"].dropna()
    if not len(other):
        return []
    worst = main.loc[other.idxmax()]
    msg = (f"Unexplained `other` (no span covers it: the client's send and receive, HTTP parsing before admission, hand-offs) is "
           f"{fmt_pct(other.min())}–{fmt_pct(other.max())} of end-to-end "
           f"(largest at {users(worst['users'])}, {worst['size_class']}: "
           f"{fmt_ms(worst[f'{UNCOVERED}_mean_ms'])} ms).")
    if other.max() > 0.10:
        msg += " Above 10%: some time on the request path is not instrumented."
    return [msg]


def _littles_law(run: Run, summary: Summary, users) -> list[str]:
    lit = summary.steps.dropna(subset=["littles_n"])
    if not len(lit):
        return []
    if run.is_open_loop:
        return ["Open loop: requests in flight on average (Little's law, completions/s × mean "
                "latency from the intended send time): " +
                "; ".join(f"{users(r.users)}: {r.littles_n:.2f}" for r in lit.itertuples()) + "."]
    items = [f"{users(r.users)}: {r.littles_n:.2f} ({fmt_pct(r.littles_ratio)})" for r in lit.itertuples()]
    worst = lit.loc[(lit["littles_ratio"] - 1).abs().idxmax()]
    msg = ("Little's law check, all sizes and outcomes (completions/s × mean latency should equal "
           "the users of a closed loop): " + "; ".join(items) + ".")
    if abs(worst["littles_ratio"] - 1) > 0.05:
        msg += (f" Off by more than 5% at {users(worst['users'])}: time between one answer and "
                f"the next request (client overhead) or users not all running.")
    return [msg]


def _throughput(summary: Summary, users) -> list[str]:
    st = summary.steps[summary.steps["requests"] > 0]
    if len(st) <= 1:
        return []
    peak = st.loc[st["throughput_rps"].idxmax()]
    first, last = st.iloc[0], st.iloc[-1]
    msg = (f"Throughput {first['throughput_rps']:.1f} req/s at {users(first['users'])} → "
           f"{last['throughput_rps']:.1f} at {users(last['users'])} (peak {peak['throughput_rps']:.1f} "
           f"at {users(peak['users'])}); mean latency {fmt_ms(first['e2e_mean_ms'])} → "
           f"{fmt_ms(last['e2e_mean_ms'])} ms.")
    if peak["step"] == first["step"]:
        msg += " More users added only queueing: the service is saturated from the first step."
    return [msg]


def _generator_cpu(run: Run, summary: Summary, users) -> str:
    cpu = run.generator_cpu
    if not cpu:
        return "Load generator CPU was not recorded for this run."
    items = [f"{summary.load_labels.get(int(c.get('step', -2)) + 1) or users(c['users'])}: "
             f"{c['locust_cores']:.2f}" for c in cpu if c.get("locust_cores") is not None]
    worst = max((c.get("locust_cores") or 0) for c in cpu)
    msg = "Load generator (Locust) CPU, cores: " + "; ".join(items) + "."
    if worst > GENERATOR_CPU_WARN:
        msg += (f" WARNING: {worst:.2f} cores is above {GENERATOR_CPU_WARN:.0%} of a core — the load "
                f"generator may be limiting throughput and inflating latency.")
    gw = [c.get("gateway_cores") for c in cpu if c.get("gateway_cores") is not None]
    if gw:
        msg += " Gateway (with its children) used " + ", ".join(f"{g:.2f}" for g in gw) + " cores."
    return msg


def _counts(run: Run) -> str:
    cc = count_check(run)
    na = lambda x: "n/a" if x is None else x  # noqa: E731
    msg = (f"Records in requests.parquet: {cc['records']} ({cc['record_errors']} failed); "
           f"Locust's final count: {na(cc['locust_final'])} ({na(cc['locust_final_failures'])} failed); "
           f"Locust's _stats.csv: {na(cc['locust_stats_csv'])}.")
    if cc["resets"]:
        msg += (f" Locust's stats were reset {cc['resets']}× in the web UI (a new segment each time): "
                f"its count covers the last segment, {cc['comparable']} of our records.")
    if cc["locust_final"] is not None and cc["locust_final"] != cc["comparable"]:
        msg += " MISMATCH between our records and Locust's count."
    return msg


def _errors(run: Run) -> list[str]:
    req = run.requests
    errs = req[(req["status"] != 200) | req["error"].notna()]
    if not len(errs):
        return []
    top = errs["error"].fillna("HTTP " + errs["status"].astype(str)).str.slice(0, 120).value_counts().head(3)
    return [f"{len(errs)} failed requests in the run; most common: " +
            "; ".join(f"{n}× {msg}" for msg, n in top.items()) + "."]
