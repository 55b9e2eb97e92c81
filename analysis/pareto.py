"""Pareto view of a sweep family: every (run, load level) of a size class is one configuration
point (throughput, p99 latency); a point is Pareto-optimal when no other point of that size class
has at least its throughput and at most its p99, one of them strictly. Under a p99 budget the best
configuration is the one with the highest throughput whose p99 stays within it.

Used by ``analysis/compare.py`` (a section of compare.md and ``compare_pareto.png``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

X, Y = "throughput_rps", "e2e_p99_ms"


def points(runs) -> pd.DataFrame:
    """One row per (run, load level, size class) with requests: run, users, size_class,
    throughput_rps, e2e_p50_ms, e2e_p99_ms, broker, workers. ``runs``: compare.RunSummary list."""
    rows = []
    for r in runs:
        m = r.main[r.main["requests"] > 0] if len(r.main) else r.main
        for row in m.to_dict("records"):
            rows.append({"run": r.label, "users": int(row["users"]), "size_class": row["size_class"],
                         X: row[X], "e2e_p50_ms": row["e2e_p50_ms"], Y: row[Y],
                         "broker": r.broker, "workers": r.workers})
    out = pd.DataFrame(rows, columns=["run", "users", "size_class", X, "e2e_p50_ms", Y, "broker", "workers"])
    return out.assign(pareto=pareto_mask(out))


def pareto_mask(df: pd.DataFrame) -> np.ndarray:
    """Per row: no other row of its size class dominates it (more or equal throughput, less or
    equal p99, one strictly)."""
    mask = np.zeros(len(df), bool)
    for _, g in df.groupby("size_class", sort=False):
        x, y = g[X].to_numpy(float), g[Y].to_numpy(float)
        ge_x = x[None, :] >= x[:, None]
        le_y = y[None, :] <= y[:, None]
        strict = (x[None, :] > x[:, None]) | (y[None, :] < y[:, None])
        dominated = (ge_x & le_y & strict).any(axis=1)
        mask[df.index.get_indexer(g.index)] = ~dominated & ~np.isnan(x) & ~np.isnan(y)
    return mask


def best_under(df: pd.DataFrame, p99_budget_ms: float) -> pd.DataFrame:
    """Per size class, the point with the highest throughput whose p99 <= the budget (none: absent)."""
    ok = df[df[Y] <= p99_budget_ms]
    if not len(ok):
        return ok
    return ok.loc[ok.groupby("size_class")[X].idxmax()].reset_index(drop=True)


def markdown(df: pd.DataFrame, p99_budget_ms: float | None) -> list[str]:
    lines = ["", "## Pareto view (throughput vs p99)", "",
             "Each run × load level is a configuration point; ★ = Pareto-optimal for its size "
             "class (no other point has more throughput and a lower p99).", "",
             "| size | run | users | req/s | p50 ms | p99 ms | broker | workers | Pareto |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in df.sort_values(["size_class", X]).to_dict("records"):
        lines.append(f"| {r['size_class']} | {r['run']} | {r['users']} | {r[X]:.1f} | "
                     f"{r['e2e_p50_ms']:.1f} | {r[Y]:.1f} | `{r['broker']}` | {r['workers']} | "
                     f"{'★' if r['pareto'] else ''} |")
    if p99_budget_ms is not None:
        best = best_under(df, p99_budget_ms)
        lines += ["", f"Best configuration under a p99 budget of {p99_budget_ms:g} ms:"]
        if not len(best):
            lines.append("- none: every point's p99 is over the budget.")
        for r in best.to_dict("records"):
            lines.append(f"- {r['size_class']}: **{r['run']}** at {r['users']} users — "
                         f"{r[X]:.1f} req/s, p99 {r[Y]:.1f} ms (broker `{r['broker']}`, "
                         f"workers {r['workers']})")
    return lines


def plot(df: pd.DataFrame, path: Path, p99_budget_ms: float | None = None) -> Path:
    """Latency vs throughput, one colour per run, Pareto points ringed and the front drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(df["size_class"]))
    fig, axes = plt.subplots(1, max(1, len(sizes)), figsize=(5.5 * max(1, len(sizes)), 4.2),
                             squeeze=False)
    colors = {run: f"C{i}" for i, run in enumerate(dict.fromkeys(df["run"]))}
    for ax, size in zip(axes[0], sizes):
        d = df[df["size_class"] == size]
        for run, g in d.groupby("run", sort=False):
            g = g.sort_values("users")
            ax.plot(g[X], g[Y], "o-", color=colors[run], label=run, alpha=0.8)
        front = d[d["pareto"]].sort_values(X)
        ax.plot(front[X], front[Y], "k--", lw=1)
        ax.scatter(front[X], front[Y], s=140, facecolors="none", edgecolors="k", label="Pareto-optimal")
        if p99_budget_ms is not None:
            ax.axhline(p99_budget_ms, color="r", lw=1, ls=":", label=f"p99 budget {p99_budget_ms:g} ms")
        ax.set_xlabel("throughput (req/s)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_title(f"Pareto view — {size}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
