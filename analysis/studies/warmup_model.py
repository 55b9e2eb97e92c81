"""The warm-up model (WoSC '23 Fig. 4): first-call times per batch size predicted from system features.

    python -m analysis.studies.warmup_model [--smoke] [--out RUN_DIR] [--model mobilenetv2]
        [--batches 1,2,4,8,16,32] [--sessions 120] [--threads 1] [--test-share 0.25] [--seed 0]

Collection: ``sessions`` fresh ONNX Runtime sessions (embedded, intra-op threads pinned), each
running every batch size once in a shuffled order; every one of those calls is a first call
("warm-up") of its batch size in its session and is timed inside ``monitor.Monitor.around`` with
``keep_before``: the features are the monitor's snapshot taken *before* the call (``pre_*``:
cumulative context switches voluntary/involuntary, CPU times, RSS/VMS, threads, system context
switches and interrupts, memory utilisation, load averages, disk and network counters; GPU memory,
utilisation, clocks, temperature, power when pynvml finds a GPU) plus the batch size and the call's
position in its session. In-call deltas are not features (they would leak the answer).
Model: scikit-learn ``RandomForestRegressor``; held out: the last ``test-share`` of the sessions
(whole sessions, later in time). Reported: CVRMSE (RMSE / mean) and MAPE on the held-out calls, next
to a batch-size-only forest and a batch-size line (the features' value is the difference), and the
15 largest impurity importances plus permutation importances on the held-out calls. Writes
``calls.csv`` (every call, all features), ``scores.csv``, ``importances.csv``, ``w_by_batch.csv``
(predicted first-call ms per batch with the other features at their held-out medians, and the
measured median; read by ``planner --warmup``) and plots.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from analysis.studies.report import Study, pin_threads


def collect(onnx_path: str, hw, batches, sessions: int, threads: int, seed: int):
    from analysis.studies.monitor import Monitor
    from pipelines.inference.embedded import OrtSession
    mon = Monitor(keep_before=True)
    rng = np.random.default_rng(seed)
    xs = {b: rng.uniform(-1, 1, (b, *hw, 3)).astype(np.float32) for b in batches}
    for s in range(sessions):
        sess = OrtSession(onnx_path, intra_op_threads=threads, inter_op_threads=1)
        for pos, b in enumerate(rng.permutation(batches)):
            with mon.around(session=s, position=pos, batch=int(b)):
                sess.run(xs[int(b)])
        del sess
        if s % 20 == 0:
            print(f"[warmup_model] session {s}/{sessions}", file=sys.stderr)
    return mon.frame()


def scores(y, p) -> dict:
    y, p = np.asarray(y, float), np.asarray(p, float)
    rmse = float(np.sqrt(np.mean((y - p) ** 2)))
    return {"rmse_ms": rmse, "cvrmse_pct": 100 * rmse / float(np.mean(y)),
            "mape_pct": 100 * float(np.mean(np.abs((y - p) / y)))}


def fit_and_score(calls, test_share: float, seed: int):
    import pandas as pd
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LinearRegression
    feats = ["batch", "position"] + [c for c in calls.columns if c.startswith("pre_")]
    feats = [c for c in feats if calls[c].nunique() > 1]          # constant columns carry nothing
    cut = int(np.ceil(calls.session.max() * (1 - test_share)))
    tr, te = calls[calls.session < cut], calls[calls.session >= cut]
    rf = RandomForestRegressor(n_estimators=300, min_samples_leaf=2, random_state=seed, n_jobs=1)
    rf.fit(tr[feats], tr.ms)
    base = RandomForestRegressor(n_estimators=300, min_samples_leaf=2, random_state=seed, n_jobs=1)
    base.fit(tr[["batch"]], tr.ms)
    line = LinearRegression().fit(tr[["batch"]], tr.ms)
    rows = [{"model": "random forest, all features", "features": len(feats), **scores(te.ms, rf.predict(te[feats]))},
            {"model": "random forest, batch size only", "features": 1, **scores(te.ms, base.predict(te[["batch"]]))},
            {"model": "line on batch size", "features": 1, **scores(te.ms, line.predict(te[["batch"]]))}]
    perm = permutation_importance(rf, te[feats], te.ms, n_repeats=5, random_state=seed, n_jobs=1)
    imp = pd.DataFrame({"feature": feats, "impurity_importance": rf.feature_importances_,
                        "permutation_importance_ms2": perm.importances_mean})
    imp = imp.sort_values("impurity_importance", ascending=False).reset_index(drop=True)
    typical = te[feats].median()
    wb = []
    for b in sorted(calls.batch.unique()):
        x = typical.copy()
        x["batch"] = b
        wb.append({"batch": int(b), "w_ms": float(rf.predict(pd.DataFrame([x])[feats])[0]),
                   "measured_median_ms": float(calls[calls.batch == b].ms.median())})
    split = {"train_sessions": int(cut), "test_sessions": int(calls.session.max() + 1 - cut),
             "train_calls": len(tr), "test_calls": len(te)}
    return pd.DataFrame(rows), imp, pd.DataFrame(wb), split, (te, rf.predict(te[feats]))


def _plots(st, imp, calls, held):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    top = imp.head(15).iloc[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    axes[0].barh(top.feature, top.impurity_importance)
    axes[0].set(title="15 most important features (impurity)", xlabel="importance")
    axes[0].tick_params(axis="y", labelsize=7)
    axes[1].plot(calls.batch, calls.ms, "o", alpha=0.3)
    axes[1].set(xlabel="batch", ylabel="first-call ms", xscale="log", title="every first call")
    te, pred = held
    axes[2].plot(te.ms, pred, "o", alpha=0.4)
    lim = [0, float(max(te.ms.max(), pred.max()))]
    axes[2].plot(lim, lim, "k--", lw=1)
    axes[2].set(xlabel="measured ms", ylabel="predicted ms", title="held-out sessions")
    st.plot(fig, "warmup_model", "importances, first calls, held-out predictions")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--model", default=None, help="catalog model (default mobilenetv2; smoke custom_cnn)")
    p.add_argument("--batches", default=None, help="default 1,2,4,8,16,32 (smoke 1,2,4,8,16)")
    p.add_argument("--sessions", type=int, default=None, help="default 120 (smoke 16)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--test-share", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models-dir", default=None)
    a = p.parse_args(argv)
    pin_threads(a.threads)
    model = a.model or ("custom_cnn" if a.smoke else "mobilenetv2")
    batches = [int(x) for x in (a.batches or ("1,2,4,8,16" if a.smoke else "1,2,4,8,16,32")).split(",")]
    sessions = a.sessions or (16 if a.smoke else 120)
    if sessions < 4:
        p.error("--sessions must be >= 4 (some are held out)")
    from pipelines.models import ensure_model
    info = ensure_model(model, models_dir=a.models_dir)
    st = Study("warmup_model", a.out, a, threads=a.threads)
    calls = collect(str(info.onnx_path), info.input_hw, batches, sessions, a.threads, a.seed)
    calls.insert(0, "model", model)
    calls.to_csv(st.dir / "calls.csv", index=False)
    table, imp, wb, split, held = fit_and_score(calls, a.test_share, a.seed)
    wb.insert(0, "model", model)
    st.extra["split"] = split
    st.text(f"{model} ({info.input_hw[0]}px), embedded ONNX Runtime, {a.threads} intra-op thread(s); "
            f"{sessions} fresh sessions x batches {batches} (shuffled per session): {len(calls)} first "
            f"calls. Features: the monitor's snapshot before each call (`pre_*`), batch size, position in "
            f"the session; held out: the last {split['test_sessions']} sessions ({split['test_calls']} calls). "
            f"GPU features: {'yes' if any(c.startswith('pre_gpu') for c in calls) else 'none (no GPU here)'}. "
            f"The paper (A100 GPU, PyTorch): CVRMSE 22%, MAPE 12.5%.")
    st.table(table, "scores", "Held-out error: all features vs batch size only")
    st.table(imp.head(15), "importances", "15 most important features (all in importances.csv)")
    imp.to_csv(st.dir / "importances.csv", index=False)
    st.table(wb, "w_by_batch", "W(batch): forest prediction at the held-out medians of the other features")
    gain = table.cvrmse_pct[1] - table.cvrmse_pct[0]
    st.text(f"## What it says\n\nThe features {'lower' if gain > 0 else 'do not lower'} the held-out CVRMSE "
            f"against batch size alone ({table.cvrmse_pct[0]:.1f}% vs {table.cvrmse_pct[1]:.1f}%; MAPE "
            f"{table.mape_pct[0]:.1f}% vs {table.mape_pct[1]:.1f}%). Top features: "
            + ", ".join(imp.feature.head(4)) + ".")
    _plots(st, imp, calls, held)
    st.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
