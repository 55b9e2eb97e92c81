"""Validity, the top of the report: every step judged by ``overhead.contract.stability`` (last 3
windows within 10% in throughput and p50, enough successful requests), and the load generator
checked (Locust above 0.8 of a core, or an open-loop schedule lag p99 above 20 ms: "measuring the
generator")."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.report.faults import fault_notes
from analysis.report.fmt import plain_users
from analysis.report.load import Run
from analysis.report.summary import Summary, assign_steps, step_table
from overhead.contract.stability import StabilityRule, assess, run_validity

GENERATOR_CPU_WARN = 0.8   # cores: above this the load generator may be the bottleneck
SCHEDULE_LAG_WARN_MS = 20.0  # open loop: schedule lag p99 above this = the generator fell behind
SATURATED_SHARE = 0.01     # a step with more of its requests rejected (503) or incomplete: saturated


@dataclass
class Validity:
    notes: list[str]          # the report's top lines
    steps: pd.DataFrame       # index step: stable, valid, stability (and open loop: target_rps,
                              # lag_p50_ms, lag_p99_ms, slot_waits)
    problems: list[str] = field(default_factory=list)   # "measuring the generator" reasons
    fine: list[str] = field(default_factory=list)       # what says the generator kept up


def stability_rule(config: dict) -> StabilityRule:
    try:
        return StabilityRule.from_dict((config.get("load") or {}).get("stability"))
    except (TypeError, ValueError):
        return StabilityRule()


def validity_checks(run: Run, view: pd.DataFrame, summary: Summary) -> Validity:
    """Judge every step and the load generator; ``view``: the requests as attributed (send_ns =
    intended send time in open loop). Leaves ``summary`` as it is."""
    rule = stability_rule(run.config)
    steps_df = step_table(view, run.steps)
    users = dict(zip(steps_df["step"].astype(int), steps_df["users"].astype(int)))

    def label(st) -> str:
        return summary.load_labels.get(int(users.get(st, 0))) or plain_users(users.get(st, 0))

    verdicts = judge_steps(view, steps_df, rule)
    step_ids = [int(x) for x in summary.steps["step"]] if len(summary.steps) else []
    out = Validity(notes=[f"**{run_validity(verdicts).headline()}**"],
                   steps=pd.DataFrame({
                       "stable": [verdicts[x].stable if x in verdicts else None for x in step_ids],
                       "valid": [verdicts[x].valid if x in verdicts else None for x in step_ids],
                       "stability": [verdicts[x].reason if x in verdicts else "" for x in step_ids]},
                       index=pd.Index(step_ids, name="step")))
    out.notes += _stability_notes(run, verdicts, rule, label)
    _check_saturation(view, steps_df, step_ids, out, label)
    out.notes += fault_notes(run.config.get("faults") or [])
    _check_generator_cpu(run, out, label)
    if run.is_open_loop:
        _check_open_loop(run, steps_df, step_ids, out, label)
    out.notes.append(_generator_verdict(out))
    return out


def judge_steps(view: pd.DataFrame, steps_df: pd.DataFrame, rule: StabilityRule) -> dict:
    """Step -> its ``StabilityVerdict`` over the successful requests of its measured window."""
    ok = view[(view["status"] == 200) & view["error"].isna()]
    recv = ok["recv_ns"].to_numpy(np.int64)
    lat = (recv - ok["send_ns"].to_numpy(np.int64)) / 1e6
    verdicts = {}
    for st in steps_df.itertuples():
        sel = (recv >= st.measure_start_ns) & (recv < st.end_ns)
        verdicts[int(st.step)] = assess(list(zip(recv[sel].tolist(), lat[sel].tolist())),
                                        int(st.measure_start_ns), int(st.end_ns), rule)
    return verdicts


def _stability_notes(run: Run, verdicts: dict, rule: StabilityRule, label) -> list[str]:
    lines = []
    live = (run.stability_live or {}).get("live_verdicts") or {}
    for st, v in sorted(verdicts.items()):
        ext = (live.get(str(st)) or {}).get("extended_s") or 0
        if not v.valid:
            lines.append(f"Step {st} ({label(st)}): {v.reason}" +
                         (f" (extended by {ext:.0f} s)" if ext else "") + ".")
        elif ext:
            lines.append(f"Step {st} ({label(st)}): stable after being extended by {ext:.0f} s.")
    extend = (run.load.get("stability") or {}).get("extend_up_to_s") \
        or (run.stability_live or {}).get("extend_up_to_s")
    lines.append(f"Rule: a step is stable when its last {rule.windows} windows of {rule.window_s:g} s "
                 f"agree within {100 * rule.tolerance:.0f}% in throughput and in p50 latency; valid "
                 f"with at least {rule.min_requests} successful requests. Unstable steps were "
                 + (f"extended up to {extend:g} s." if extend else "not extended (--stability-max-seconds)."))
    return lines


def _check_saturation(view: pd.DataFrame, steps_df: pd.DataFrame, step_ids: list[int],
                      out: Validity, label) -> None:
    """Per step: requests rejected (503) and incomplete (no answer by the end of the run); over
    ``SATURATED_SHARE`` of the step's requests the step is "saturated" (the service shed load)."""
    step = assign_steps(view, steps_df)
    rejected = (view["status"] == 503).groupby(step).sum()
    incomplete = (view["error"] == "incomplete").groupby(step).sum()
    total = step.groupby(step).size()
    cols = pd.DataFrame({"rejected": rejected.reindex(step_ids, fill_value=0).astype(int).to_numpy(),
                         "incomplete": incomplete.reindex(step_ids, fill_value=0).astype(int).to_numpy(),
                         "sent": total.reindex(step_ids, fill_value=0).astype(int).to_numpy()},
                        index=out.steps.index)
    cols["saturated"] = (cols["rejected"] + cols["incomplete"]) > SATURATED_SHARE * cols["sent"]
    out.steps = out.steps.join(cols)
    for x, r in zip(step_ids, cols.itertuples()):
        if r.saturated:
            out.notes.append(
                f"Step {x} ({label(x)}): **saturated** — {r.rejected} of {r.sent} requests rejected "
                f"(503) and {r.incomplete} incomplete ({(r.rejected + r.incomplete) / r.sent:.1%}, "
                f"over {SATURATED_SHARE:.0%}): the service shed or could not finish the offered "
                "load; its latency describes the admitted requests only.")


def _check_generator_cpu(run: Run, out: Validity, label) -> None:
    cpu = [c for c in run.generator_cpu if c.get("locust_cores") is not None]
    for c in cpu:
        if c["locust_cores"] > GENERATOR_CPU_WARN:
            out.problems.append(f"Locust used {c['locust_cores']:.2f} cores in step {c.get('step')} "
                                f"({label(c.get('step'))}), above {GENERATOR_CPU_WARN:.0%} of a core")
    if cpu:
        out.fine.append(f"Locust ≤ {max(c['locust_cores'] for c in cpu):.2f} cores")


def _check_open_loop(run: Run, steps_df: pd.DataFrame, step_ids: list[int], out: Validity, label) -> None:
    """Schedule lag per step: from the generator falling behind (a problem) or, when every
    in-flight slot was busy, from the service not keeping up (overload, a note)."""
    lag = pd.DataFrame({"step": assign_steps(run.requests, steps_df),
                        "lag_ms": (run.requests["send_ns"] - run.requests["intended_ns"]) / 1e6})
    by_step = lag.groupby("step")["lag_ms"]
    ol_steps = (run.open_loop or {}).get("steps") or {}
    cap = (run.open_loop or {}).get("max_in_flight") or run.load.get("max_in_flight")
    cols = pd.DataFrame({
        "target_rps": [run.rates[x] if x < len(run.rates) else math.nan for x in step_ids],
        "lag_p50_ms": by_step.quantile(0.5).reindex(step_ids).to_numpy(),
        "lag_p99_ms": by_step.quantile(0.99).reindex(step_ids).to_numpy(),
        "slot_waits": [int((ol_steps.get(str(x)) or {}).get("slot_waits", 0)) for x in step_ids]},
        index=out.steps.index)
    out.steps = out.steps.join(cols)
    worst, overloaded = 0.0, []
    for x, r in zip(step_ids, cols.itertuples()):
        if r.slot_waits:
            overloaded.append(x)
        elif not math.isnan(r.lag_p99_ms):
            worst = max(worst, r.lag_p99_ms)
        if math.isnan(r.lag_p99_ms) or r.lag_p99_ms <= SCHEDULE_LAG_WARN_MS:
            continue
        if r.slot_waits:
            out.notes.append(f"Step {x} ({label(x)}): all {cap} in-flight slots were busy "
                             f"{r.slot_waits} times — the service did not keep up with the offered load; "
                             f"schedule lag p99 {r.lag_p99_ms:.1f} ms includes waiting for a slot "
                             f"(overload, not the generator).")
        else:
            out.problems.append(f"open-loop schedule lag p99 {r.lag_p99_ms:.1f} ms in step {x} "
                                f"({label(x)}), above {SCHEDULE_LAG_WARN_MS:g} ms: Locust fell "
                                f"behind its own schedule")
    out.fine.append(f"open-loop schedule lag p99 ≤ {worst:.1f} ms" +
                    (f" outside the overloaded step(s) {', '.join(map(str, overloaded))}" if overloaded else ""))


def _generator_verdict(v: Validity) -> str:
    if v.problems:
        return ("**MEASURING THE GENERATOR**: " + "; ".join(v.problems) +
                ". Latency and throughput here may describe the load generator, not the service.")
    if v.fine:
        return "Load generator kept up: " + ", ".join(v.fine) + "."
    return "Load generator CPU was not recorded: cannot rule out measuring the generator."
