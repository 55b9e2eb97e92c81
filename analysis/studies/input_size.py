"""Input size x batch size (WoSC '23 Figs. 1-2): time per batch and memory, models rebuilt per size.

    python -m analysis.studies.input_size [--smoke] [--out RUN_DIR] [--models mobilenetv2]
        [--sides 96,160,224,320,416,512] [--batches 1,2,4,8,16,32] [--repeats 5] [--threads 1]
        [--explode 1.5]

For each model and input side the classifier is rebuilt at side x side (``sized_models``: the
product's builder, seeded weights, ONNX export; the rebuild time is reported) and measured in a
fresh child process (so one size's freed memory does not hide the next one's growth): one ONNX
Runtime session (intra-op threads pinned), ``repeats`` interleaved rounds over the batch sizes
(ascending), each run inside ``monitor.Monitor.around`` (every run's features: ``monitor.csv``).
Memory: process RSS after the session loads and after each batch size's first run; ORT's CPU
arena keeps what it allocated, so ``arena_mib`` = RSS after a batch size's first run minus RSS
after load (ORT's Python API exposes no arena counter). GPU memory comes with the monitor's
pynvml features when a GPU is present (none here). The first run of each batch size is warm-up
(left out of the medians). "Explodes": per side, the first batch whose ms per image (fastest kept run,
so CPU steal by other processes does not fake a jump) is more than ``--explode`` times the
smallest of the smaller batches; across sides,
ms per image per megapixel against the smallest side. Writes ``runs.csv`` (= ``monitor.csv``),
``input_size.csv``, ``builds.csv``, ``memfit.csv`` (arena = m0 + m1 x batch per side, read by the
planner for MB_i) and plots.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys

import numpy as np

from analysis.studies.fitting import fit_linear
from analysis.studies.report import Study, pin_threads


def measure_side(onnx_path: str, model: str, side: int, batches, repeats: int, threads: int, seed=0):
    """Child process: every run of one (model, side) with the monitor's features."""
    pin_threads(threads)
    from analysis.studies.monitor import Monitor
    from analysis.studies.report import rss_mib
    from pipelines.inference.embedded import OrtSession
    mon = Monitor()
    rss0 = rss_mib()
    sess = OrtSession(onnx_path, intra_op_threads=threads, inter_op_threads=1)
    rss_load = rss_mib()
    rng = np.random.default_rng(seed)
    xs = {b: rng.uniform(-1, 1, (b, side, side, 3)).astype(np.float32) for b in batches}
    for i in range(repeats):
        for b in batches:
            with mon.around(model=model, side=side, batch=b, run=i, warmup=i == 0):
                sess.run(xs[b])
    df = mon.frame()
    df["rss_start_mib"], df["rss_load_mib"] = rss0, rss_load
    return df.to_dict("records")


def summarise(runs, explode: float):
    import pandas as pd
    rows = []
    for (m, side), g in runs.groupby(["model", "side"], sort=True):
        best_before = np.inf
        exploded = None
        for b, gb in g.groupby("batch", sort=True):
            kept = gb[~gb.warmup].ms
            first = gb[gb.warmup].iloc[0]
            med = float(np.median(kept))
            per_img = float(kept.min()) / b     # fastest run: CPU steal does not fake a jump
            if exploded is None and per_img > explode * best_before:
                exploded = b
            best_before = min(best_before, per_img)
            rows.append({"model": m, "side": side, "batch": b, "median_ms": med,
                         "p95_ms": float(np.percentile(kept, 95)), "min_ms": float(kept.min()),
                         "first_run_ms": float(first.ms),
                         "ms_per_image": med / b, "min_ms_per_image": per_img,
                         "ms_per_image_per_mp": med / b / (side * side / 1e6),
                         "rss_after_first_mib": float(first.proc_rss_mib_after),
                         "arena_mib": float(first.proc_rss_mib_after - first.rss_load_mib),
                         "d_ctx_invol": float(gb[~gb.warmup].d_proc_ctx_invol.median()),
                         "explodes_here": False})
        if exploded is not None:
            rows[[i for i, r in enumerate(rows) if r["model"] == m and r["side"] == side
                  and r["batch"] == exploded][0]]["explodes_here"] = True
    t = pd.DataFrame(rows)
    t["per_mp_vs_smallest_side"] = t.ms_per_image_per_mp / t.groupby(["model", "batch"]).ms_per_image_per_mp.transform(
        lambda s: s.loc[t.loc[s.index, "side"].idxmin()])
    return t


def memory_fits(table):
    import pandas as pd
    out = []
    for (m, side), g in table.groupby(["model", "side"]):
        f = fit_linear(g.batch, g.arena_mib)
        tf = fit_linear(g.batch, g.median_ms)
        out.append({"model": m, "side": side, "m0_mib": f.c, "m1_mib_per_image": f.a, "mem_r2": f.r2,
                    "a_ms_per_image": tf.a, "c_ms": tf.c, "time_r2": tf.r2,
                    "rss_load_mib": float(g.rss_after_first_mib.iloc[0] - g.arena_mib.iloc[0])})
    return pd.DataFrame(out)


def _plots(st, table):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for (m, side), g in table.groupby(["model", "side"]):
        axes[0].plot(g.batch, g.arena_mib, "o-", label=f"{m} {side}px")
        axes[1].plot(g.batch, g.median_ms, "o-", label=f"{m} {side}px")
        axes[2].plot(g.batch, g.min_ms_per_image, "o-", label=f"{m} {side}px")
        x = g[g.explodes_here]
        axes[2].plot(x.batch, x.min_ms_per_image, "rx", ms=12)
    axes[0].set(xlabel="batch", ylabel="MiB", title="ORT arena (RSS growth over load)", xscale="log")
    axes[1].set(xlabel="batch", ylabel="ms per batch (median)", title="time per batch", xscale="log",
                yscale="log")
    axes[2].set(xlabel="batch", ylabel="ms per image", title="ms per image, fastest run (x = explodes)", xscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
    st.plot(fig, "input_size", "memory and time vs batch, one line per input side")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--models", default=None, help="default mobilenetv2 (smoke custom_cnn)")
    p.add_argument("--sides", default=None, help="default 96,160,224,320,416,512 (smoke 96,192)")
    p.add_argument("--batches", default=None, help="default 1,2,4,8,16,32 (smoke 1,4,16)")
    p.add_argument("--repeats", type=int, default=None, help="default 5 (smoke 3); run 0 is warm-up")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--explode", type=float, default=1.5, help="ms/image ratio that counts as exploding")
    p.add_argument("--models-dir", default=None)
    a = p.parse_args(argv)
    models = (a.models or ("custom_cnn" if a.smoke else "mobilenetv2")).split(",")
    sides = [int(x) for x in (a.sides or ("96,192" if a.smoke else "96,160,224,320,416,512")).split(",")]
    batches = sorted(int(x) for x in (a.batches or ("1,4,16" if a.smoke else "1,2,4,8,16,32")).split(","))
    repeats = a.repeats or (3 if a.smoke else 5)
    if repeats < 2:
        p.error("--repeats must be >= 2 (run 0 is warm-up)")
    import pandas as pd
    from analysis.studies.sized_models import ensure_sized
    st = Study("input_size", a.out, a, threads=a.threads)
    builds, runs = [], []
    ctx = mp.get_context("spawn")
    for m in models:
        for side in sides:
            print(f"[input_size] {m} {side}px: build/cache, then batches {batches} x {repeats}", file=sys.stderr)
            onnx, meta = ensure_sized(m, side, a.models_dir)
            builds.append({"model": m, "side": side, "cached": meta["cached"], "child_wall_s": meta["child_wall_s"],
                           "tf_import_s": meta["tf_import_s"], "build_export_s": meta["build_s"],
                           "params": meta["params"], "onnx_mib": meta["onnx_mib"]})
            with ctx.Pool(1) as pool:
                runs += pool.apply(measure_side, (str(onnx), m, side, batches, repeats, a.threads))
    runs_df = pd.DataFrame(runs)
    runs_df.to_csv(st.dir / "monitor.csv", index=False)
    runs_df.to_csv(st.dir / "runs.csv", index=False)
    table = summarise(runs_df, a.explode)
    fits = memory_fits(table)
    st.text(f"Models {models} rebuilt at sides {sides} (seeded, uncalibrated weights; product builder "
            f"and ONNX export); embedded ONNX Runtime, {a.threads} intra-op thread(s); batches {batches}; "
            f"{repeats} interleaved rounds, round 0 = warm-up (out of the medians). Each (model, side) in a "
            f"fresh process. `arena_mib` = RSS after the batch size's first run minus RSS after session "
            f"load (ORT keeps its arena, so it is the largest need so far). Every run with the monitor's "
            f"features: `monitor.csv`. Explosion rule: ms/image of the fastest kept run > {a.explode}x the "
            f"best of the smaller batches at that side.")
    st.table(pd.DataFrame(builds), "builds", "Rebuild cost per input side (child wall includes the TF import)")
    st.table(table.drop(columns=["explodes_here"]).assign(explodes=table.explodes_here.map({True: "**yes**", False: ""})),
             "input_size", "Time and memory per (side, batch)")
    st.table(fits, "memfit", "Fits per side: arena = m0 + m1*batch; time = a*batch + c")
    st.text("## Where it explodes\n\n" + _explode_text(table, fits))
    _plots(st, table)
    st.finish()
    return 0


def _explode_text(table, fits) -> str:
    lines = []
    for (m, side), g in table.groupby(["model", "side"]):
        x = g[g.explodes_here]
        lines.append(f"- {m} {side}px: " + (f"ms/image jumps at batch {int(x.batch.iloc[0])} "
                                            f"({x.min_ms_per_image.iloc[0]:.2f} ms, fastest run)" if len(x) else
                                            "no jump within the measured batches"))
    for m, f in fits.groupby("model"):
        lines.append(f"- {m}: arena per image grows from {f.m1_mib_per_image.iloc[0]:.1f} MiB at "
                     f"{f.side.iloc[0]}px to {f.m1_mib_per_image.iloc[-1]:.1f} MiB at {f.side.iloc[-1]}px; "
                     f"ms per image {f.a_ms_per_image.iloc[0]:.2f} -> {f.a_ms_per_image.iloc[-1]:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
