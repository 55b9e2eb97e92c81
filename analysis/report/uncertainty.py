"""Results with their uncertainty.

- ``mean_ci``: mean and 95% confidence half-width (Student t) of a value measured once per repeat
  of a run (as AIPerf reports repeated profiles).
- ``p99_upper_bound``: MLPerf LoadGen's early-stopping idea for a tail percentile measured with few
  samples: the smallest order statistic that bounds the true percentile from above with 99%
  confidence (distribution-free: the number of samples under the true p99 is Binomial(n, 0.99)).
  With too few samples there is none, and that is said instead of a number.
- ``repeat_table``: per (users, size class) cell of repeated runs, mean ± CI of throughput, e2e
  mean/p50/p99 and each component's critical-path mean.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided CI, n) over the finite values; half-width NaN if n < 2."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n < 2:
        return float(v[0]), math.nan, 1
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half), n


def p99_upper_bound(latencies, percentile: float = 0.99, confidence: float = 0.99) -> float:
    """The conservative ``percentile`` of the samples: the k-th smallest, k the least with
    P(Binomial(n, percentile) < k) >= confidence; NaN when n is too small for any bound."""
    from scipy import stats

    x = np.sort(np.asarray(latencies, float))
    n = len(x)
    if n == 0:
        return math.nan
    k = int(stats.binom.ppf(confidence, n, percentile)) + 1     # 1-based order statistic
    return float(x[k - 1]) if k <= n else math.nan


def min_samples(percentile: float = 0.99, confidence: float = 0.99) -> int:
    """Fewest samples for which ``p99_upper_bound`` gives a number."""
    n = 1
    while not (1 - percentile ** n >= confidence):   # P(max >= true pct) = 1 - pct^n
        n += 1
    return n


CELL_VALUES = ("throughput_rps", "e2e_mean_ms", "e2e_p50_ms", "e2e_p99_ms")


def repeat_table(mains: list[pd.DataFrame], components: list[str]) -> pd.DataFrame:
    """``mains``: each repeat's ``Summary.main``. One row per (users, size_class): ``repeats`` and,
    per value, ``<value>`` (mean) and ``<value>_ci`` (95% half-width)."""
    cols = list(CELL_VALUES) + [f"{c}_mean_ms" for c in components]
    stacked = pd.concat([m.assign(repeat=i) for i, m in enumerate(mains) if len(m)], ignore_index=True)
    stacked = stacked[stacked["requests"] > 0]
    rows = []
    for (users, size), g in stacked.groupby(["users", "size_class"], sort=True):
        row = {"users": int(users), "size_class": size, "repeats": g["repeat"].nunique()}
        for c in cols:
            mean, half, _ = mean_ci(g[c].to_numpy(float) if c in g else [])
            row[c], row[f"{c}_ci"] = mean, half
        rows.append(row)
    return pd.DataFrame(rows)


def repeat_markdown(table: pd.DataFrame, components: list[str], labels: list[str]) -> str:
    """compare.md for repeats of one configuration: mean ± 95% CI per cell."""
    def cell(r, c, digits=1):
        m, h = r.get(c, math.nan), r.get(f"{c}_ci", math.nan)
        if not np.isfinite(m):
            return "-"
        return f"{m:.{digits}f}" + (f" ± {h:.{digits}f}" if np.isfinite(h) else "")

    head = ["users", "size", "repeats", "req/s", "e2e mean ms", "p50 ms", "p99 ms"] + \
        [f"{c} ms" for c in components]
    lines = ["# Repeats of one configuration", "",
             f"Runs: {', '.join(f'`{x}`' for x in labels)}. Each cell: mean over the repeats ± the "
             f"95% confidence half-width (Student t; none with one repeat). Components: mean ms on "
             f"the critical path.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.to_dict("records"):
        lines.append("| " + " | ".join(
            [str(r["users"]), str(r["size_class"]), str(r["repeats"])]
            + [cell(r, c) for c in CELL_VALUES] + [cell(r, f"{c}_mean_ms", 2) for c in components]) + " |")
    return "\n".join(lines) + "\n"
