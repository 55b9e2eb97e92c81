"""Faults injected inside the measurement (config.json ``faults``, the sweep's ``--fault``): for
each, latency and throughput before, during (strike -> its piece back) and after.

Requests fall in a window by their completion time (``recv_ns``), as in the step summary; the run
spans from its first step's measured start to its last step's end. Latency is end-to-end (from the
intended send time in open loop) of the successful requests.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.report.fmt import fmt_ms

HEAD = ["fault", "window", "seconds", "requests", "errors", "ok req/s", "p50 ms", "p99 ms"]


def fault_windows(fault: dict, start_ns: int, end_ns: int) -> list[tuple[str, int, int]]:
    struck = int(fault["time_ns"])
    back = int(fault.get("recovered_ns") or end_ns)
    return [("before", start_ns, struck), ("during", struck, back), ("after", back, end_ns)]


def fault_table(faults: list[dict], view: pd.DataFrame, steps: pd.DataFrame):
    """(head, rows) of the before/during/after comparison; None when no fault struck."""
    struck = [f for f in faults or [] if f.get("time_ns")]
    if not struck or not len(view):
        return None
    start = int(steps["measure_start_ns"].min()) if len(steps) else int(view["send_ns"].min())
    end = int(steps["end_ns"].max()) if len(steps) else int(view["recv_ns"].max()) + 1
    recv = view["recv_ns"].to_numpy(np.int64)
    ok = ((view["status"] == 200) & view["error"].isna()).to_numpy()
    send = view["send_ns"].to_numpy(np.int64)
    intended = view["intended_ns"].fillna(view["send_ns"]).to_numpy(np.int64)
    lat = (recv - np.minimum(intended, send)) / 1e6     # from the intended send time
    rows = []
    for f in struck:
        name = f"{f['kind']} {f.get('target') or ''}".strip()
        if f.get("error"):
            name += f" (not recovered: {f['error']})"
        for label, a, b in fault_windows(f, start, end):
            sel = (recv >= a) & (recv < b)
            secs = max(b - a, 1) / 1e9
            good = lat[sel & ok]
            p50, p99 = (np.percentile(good, 50), np.percentile(good, 99)) if len(good) else (None, None)
            rows.append([name, label, f"{secs:.1f}", str(int(sel.sum())), str(int((sel & ~ok).sum())),
                         f"{len(good) / secs:.1f}", fmt_ms(p50), fmt_ms(p99)])
    return HEAD, rows


def fault_notes(faults: list[dict]) -> list[str]:
    """One line per fault for the Validity section."""
    out = []
    for f in faults or []:
        if not f.get("time_ns"):
            out.append(f"Fault {f['kind']}@{f['at_s']:g}s was planned but never struck (the load "
                       "ended first).")
            continue
        back = (f"; {f.get('target')} was back after {(f['recovered_ns'] - f['time_ns']) / 1e9:.1f} s"
                if f.get("recovered_ns") else f"; it did not recover ({f.get('error')})")
        out.append(f"**Fault injected**: {f['kind']} ({f.get('target')}) at {f['at_s']:g} s into the "
                   f"load{back}. Latency and throughput before/during/after: see Faults.")
    return out
