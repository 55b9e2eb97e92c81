"""plots/: per size class, the stacked components (critical path) per load level; latency vs
throughput."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.report.summary import Summary, size_sort_key

COLORS = {"decode": "#1f77b4", "resize": "#aec7e8", "normalize": "#17becf", "serialize": "#9467bd",
          "transfer": "#c5b0d5", "queue": "#ff7f0e", "inference": "#2ca02c", "postprocess": "#98df8a",
          "broker": "#d62728", "backlog": "#ff9896", "other": "#7f7f7f"}
DPI = 110


def plot(summary: Summary, plots_dir: Path) -> list[Path]:
    """Write the plots; return their paths (stacked_<size>.png..., latency_throughput.png)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    main = summary.main
    sizes = sorted(main["size_class"].unique(), key=size_sort_key)
    written = []
    for size in sizes:
        d = main[(main["size_class"] == size) & (main["requests"] > 0)]
        if not d.empty:
            fig = _stacked(plt, summary, d, size)
            written.append(_save(plt, fig, plots_dir / f"stacked_{size}.png"))
    fig = _latency_throughput(plt, summary, sizes)
    written.append(_save(plt, fig, plots_dir / "latency_throughput.png"))
    return written


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _label(summary: Summary, users, suffix: str = "") -> str:
    return summary.load_labels.get(int(users)) or f"{users}{suffix}"


def _stacked(plt, summary: Summary, d: pd.DataFrame, size: str):
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = np.arange(len(d))
    bottom = np.zeros(len(d))
    for c in summary.components:
        vals = d[f"{c}_mean_ms"].fillna(0).to_numpy()
        ax.bar(x, vals, bottom=bottom, label=c, color=COLORS.get(c))
        bottom += vals
    ax.plot(x, d["e2e_p50_ms"], "k_", markersize=18, mew=2, label="e2e p50")
    ax.set_xticks(x, [_label(summary, u) for u in d["users"]])
    ax.set_xlabel("offered load" if summary.load_labels else "concurrent users")
    ax.set_ylabel("mean ms per request (critical path)")
    ax.set_title(f"Where the time goes — {size}")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _latency_throughput(plt, summary: Summary, sizes: list):
    main = summary.main
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, size in enumerate(sizes):
        d = main[(main["size_class"] == size) & (main["requests"] > 0)]
        if d.empty:
            continue
        color = f"C{i}"
        ax.plot(d["throughput_rps"], d["e2e_p50_ms"], "o-", color=color, label=f"{size} p50")
        ax.plot(d["throughput_rps"], d["e2e_p99_ms"], "s--", color=color, alpha=0.7, label=f"{size} p99")
        for r in d.itertuples():
            ax.annotate(_label(summary, r.users, "u"), (r.throughput_rps, r.e2e_p50_ms),
                        textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("throughput of that size class (req/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    if len(main) and (main["e2e_p99_ms"].max() / max(main["e2e_p50_ms"].min(), 1e-9)) > 20:
        ax.set_yscale("log")
    ax.set_title("Latency vs throughput (labels: concurrent users)")
    ax.legend(fontsize=8)
    return fig
