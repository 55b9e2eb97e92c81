"""Latency vs batch size through embedded ONNX Runtime (pinned threads), per model.

    python -m analysis.studies.batch_latency [--smoke] [--out RUN_DIR] [--models mobilenetv2,custom_cnn]
        [--batches 1,2,4,8,16,32] [--repeats 12] [--threads 1] [--limit-ms 100] [--k 5]

For each model: one ORT session (intra-op threads pinned, spinning off); for each batch size,
``repeats`` runs on a seeded random batch (CNN cost does not depend on pixel values), interleaved:
round i runs every batch size once, so load from other processes hits every size alike. The
leading warm-up run(s) of each batch size are detected (run > median + k*1.4826*MAD of the later
runs, ``fitting.detect_warmup``), excluded and reported. Later runs above median + k*1.4826*MAD
of the batch size's kept runs are CPU steal on a shared machine (another process had the core),
flagged ``outlier`` in runs.csv and left out of the fit (the medians keep them).
``latency = a*batch + c`` is fitted by least squares on the kept, non-outlier runs. Memory:
process RSS (``/proc/self/statm``) right before and after the first run of a batch size (round 1,
sizes in the given order); ORT's CPU arena keeps what it allocated, so the delta is the growth
beyond what earlier (smaller) batches already reserved. Writes ``runs.csv`` (every run),
``batch_latency.csv``, ``fits.csv`` (read by the planner) and plots.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from analysis.studies.fitting import detect_warmup, fit_linear, largest_batch_within, robust_threshold
from analysis.studies.report import Study, pin_threads, rss_mib

DEFAULT_MODELS = ("mobilenetv2", "custom_cnn")


def measure_model(info, batches, repeats: int, threads: int, k: float, seed: int = 0):
    from pipelines.inference.embedded import OrtSession

    rss_before_session = rss_mib()
    sess = OrtSession(info.onnx_path, intra_op_threads=threads, inter_op_threads=1)
    rss_session = rss_mib()
    h, w = info.input_hw
    rng = np.random.default_rng(seed)
    runs, rows = [], []
    xs = {b: rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32) for b in batches}
    times_of = {b: [] for b in batches}
    rss_of = {}
    # interleaved (every batch size once per round): load from other processes that comes and
    # goes then slows every batch size alike instead of one whole block of runs
    for i in range(repeats):
        for b in batches:
            rss0 = rss_mib() if i == 0 else None
            t0 = time.perf_counter()
            sess.run(xs[b])
            times_of[b].append((time.perf_counter() - t0) * 1e3)
            if i == 0:        # ORT's arena grows on a batch size's first run
                rss_of[b] = (rss0, rss_mib())
    for b in batches:
        times = times_of[b]
        rss0, rss1 = rss_of[b]
        nw = detect_warmup(times, k)
        kept = times[nw:]
        med = float(np.median(kept))
        steal = robust_threshold(kept, k)
        for i, t in enumerate(times):
            runs.append({"model": info.name, "batch": b, "run": i, "ms": t, "warmup": i < nw,
                         "outlier": i >= nw and t > steal})
        rows.append({"model": info.name, "batch": b, "runs": repeats, "warmup_runs": nw,
                     "outlier_runs": sum(1 for t in kept if t > steal),
                     "first_run_ms": times[0],
                     "warmup_excess_ms": float(sum(times[:nw]) - nw * med),
                     "median_ms": med, "p95_ms": float(np.percentile(kept, 95)),
                     "min_ms": float(min(kept)), "ms_per_image": med / b, "images_per_s": 1e3 * b / med,
                     "rss_before_mib": rss0, "rss_after_mib": rss1, "rss_delta_mib": rss1 - rss0})
    meta = {"rss_session_load_mib": rss_session - rss_before_session}
    return runs, rows, meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    p.add_argument("--out", default=None)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--batches", default=None, help="default 1,2,4,8,16,32 (smoke 1,2,4)")
    p.add_argument("--repeats", type=int, default=None, help="default 12 (smoke 5)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (pinned)")
    p.add_argument("--limit-ms", type=float, default=100.0)
    p.add_argument("--k", type=float, default=5.0, help="warm-up rule: median + k*MAD")
    p.add_argument("--models-dir", default=None)
    a = p.parse_args(argv)
    pin_threads(a.threads)
    batches = [int(x) for x in (a.batches or ("1,2,4" if a.smoke else "1,2,4,8,16,32")).split(",")]
    repeats = a.repeats or (5 if a.smoke else 12)
    models = [m.strip() for m in a.models.split(",") if m.strip()]

    from pipelines.models import MODEL_NAMES, ensure_model
    for m in models:
        if m not in MODEL_NAMES:
            p.error(f"unknown model {m!r}; known: {', '.join(MODEL_NAMES)}")
    import pandas as pd

    st = Study("batch_latency", a.out, a, threads=a.threads)
    all_runs, all_rows, fits, metas = [], [], [], {}
    for m in models:
        info = ensure_model(m, models_dir=a.models_dir)
        print(f"[batch_latency] {m}: batches {batches} x {repeats} runs, {a.threads} thread(s)",
              file=sys.stderr)
        runs, rows, meta = measure_model(info, batches, repeats, a.threads, a.k)
        metas[m] = meta
        all_runs += runs
        all_rows += rows
        kept = [r for r in runs if not r["warmup"] and not r["outlier"]]
        fit = fit_linear([r["batch"] for r in kept], [r["ms"] for r in kept])
        meds = {r["batch"]: r["median_ms"] for r in rows}
        warm = [r["warmup_excess_ms"] for r in rows]
        fits.append({"model": m, "a_ms_per_image": fit.a, "c_ms": fit.c, "r2": fit.r2, "n": fit.n,
                     "warmup_ms": float(np.median(warm)), "warmup_first_session_ms": rows[0]["warmup_excess_ms"],
                     "max_batch_measured": max(batches), "limit_ms": a.limit_ms,
                     "largest_batch_within_limit_measured": largest_batch_within(meds, a.limit_ms),
                     "largest_batch_within_limit_fitted": fit.max_batch_for(a.limit_ms),
                     "threads": a.threads})
    runs_df, table, fits_df = pd.DataFrame(all_runs), pd.DataFrame(all_rows), pd.DataFrame(fits)
    runs_df.to_csv(st.dir / "runs.csv", index=False)
    st.extra["session_load_rss_mib"] = metas
    st.text(f"Embedded ONNX Runtime, intra-op threads {a.threads}, inter-op 1, spinning off; "
            f"batches {batches}, {repeats} runs each on a seeded random batch. Warm-up rule: leading "
            f"runs above median + {a.k} x 1.4826 x MAD of the later runs (MAD floored at 1% of the "
            f"median) are excluded; `warmup_excess_ms` = their time minus as many medians. Later runs "
            f"above the same bound over the kept runs are CPU steal (`outlier_runs`): out of the fit, "
            f"kept in the medians. Memory is "
            f"process RSS (/proc/self/statm) before and after the first run of each batch "
            f"size (runs are interleaved: one run of every size per round): ORT's CPU arena keeps its allocations, so the delta is growth beyond earlier "
            f"batches. Every run: `runs.csv`.")
    st.table(table[["model", "batch", "warmup_runs", "outlier_runs", "first_run_ms", "warmup_excess_ms", "median_ms",
                    "p95_ms", "ms_per_image", "images_per_s", "rss_after_mib", "rss_delta_mib"]],
             "batch_latency", "Latency per batch size (warm-up excluded)")
    st.table(fits_df, "fits", f"Fit latency = a*batch + c (least squares on kept runs, outliers out); limit {a.limit_ms} ms")
    lines = []
    for f in fits:
        lines.append(f"- **{f['model']}**: {f['a_ms_per_image']:.2f} ms/image + {f['c_ms']:.2f} ms per "
                     f"batch (R^2 {f['r2']:.4f}); warm-up ~{f['warmup_ms']:.1f} ms per new batch size "
                     f"({f['warmup_first_session_ms']:.1f} ms for the session's first run); largest "
                     f"batch within {a.limit_ms:g} ms: measured {f['largest_batch_within_limit_measured']}, "
                     f"fitted {f['largest_batch_within_limit_fitted']}"
                     + (" (beyond the measured range: extrapolated)"
                        if f["largest_batch_within_limit_fitted"] > max(batches) else ""))
    st.text("## What it says\n\n" + "\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for f in fits:
        m = f["model"]
        r = runs_df[runs_df.model == m]
        kept, warm = r[~r.warmup & ~r.outlier], r[r.warmup | r.outlier]
        l, = axes[0].plot(kept.batch, kept.ms, "o", alpha=0.4, label=m)
        axes[0].plot(warm.batch, warm.ms, "x", color=l.get_color(), ms=9)
        xs = np.array([0, max(batches)])
        axes[0].plot(xs, f["a_ms_per_image"] * xs + f["c_ms"], "-", color=l.get_color())
        t = table[table.model == m]
        axes[1].plot(t.batch, t.images_per_s, "o-", label=m)
        axes[2].plot(t.batch, t.rss_after_mib, "o-", label=m)
    axes[0].axhline(a.limit_ms, ls="--", color="grey", lw=1)
    axes[0].set(xlabel="batch", ylabel="ms per run", title="latency (x = warm-up or outlier, line = fit)")
    axes[1].set(xlabel="batch", ylabel="images/s", title="throughput (median)", xscale="log")
    axes[2].set(xlabel="batch", ylabel="MiB", title="process RSS after batch size", xscale="log")
    for ax in axes:
        ax.legend()
    st.plot(fig, "batch_latency", "latency, throughput, RSS vs batch")
    st.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
