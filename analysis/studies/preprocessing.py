"""Decode / resize / normalize share of end-to-end vs the detector's inference-only ceiling.

    python -m analysis.studies.preprocessing [--smoke] [--out RUN_DIR] [--repeats 5]
        [--decoders opencv,pil,simplejpeg,dali] [--model ssd_mobilenetv2]

Single thread throughout (cv2/BLAS/ORT pinned to 1 thread). For each corpus size class (0.1, 1,
8 MP; the six photos, one in --smoke) and each decoder with reduced (DCT-scaled) decode ``auto``
and ``off`` (``dali`` only if importable), times decode -> resize to the detector input ->
normalize per image (median over repeats, after one untimed warm-up run per image). The detector's inference-only time at batch 1 gives
its ceiling (1/t_inf images/s); the pipeline (preprocess + inference, one thread, back to back)
reaches ``t_inf / (t_pre + t_inf)`` of it. Writes ``preprocessing.csv`` and a stacked bar plot.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from analysis.studies.report import Study, pin_threads


def time_preprocess(pre, data: bytes, hw, mode: str, repeats: int) -> dict:
    d, r, n = [], [], []
    pre.normalize(pre.resize(pre.decode(data, hw)[0], hw), mode)    # untimed warm-up (DALI builds here)
    for _ in range(repeats):
        t0 = time.perf_counter()
        img, info = pre.decode(data, hw)
        t1 = time.perf_counter()
        img = pre.resize(img, hw)
        t2 = time.perf_counter()
        pre.normalize(img, mode)
        t3 = time.perf_counter()
        d.append(t1 - t0)
        r.append(t2 - t1)
        n.append(t3 - t2)
    return {"decode_ms": 1e3 * float(np.median(d)), "resize_ms": 1e3 * float(np.median(r)),
            "normalize_ms": 1e3 * float(np.median(n)), "reduced": info.get("reduced")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--repeats", type=int, default=None, help="default 5 (smoke 2)")
    p.add_argument("--decoders", default="opencv,pil,simplejpeg,dali")
    p.add_argument("--model", default="ssd_mobilenetv2")
    p.add_argument("--models-dir", default=None)
    a = p.parse_args(argv)
    pin_threads(1)
    repeats = a.repeats or (2 if a.smoke else 5)
    import pandas as pd

    from pipelines.corpus import PHOTOS, SIZE_CLASSES, build_corpus
    from pipelines.inference.embedded import OrtSession
    from pipelines.models import ensure_model
    from pipelines.preprocess import BackendUnavailable, get_preprocessor

    st = Study("preprocessing", a.out, a, threads=1)
    info = ensure_model(a.model, models_dir=a.models_dir)
    hw, mode = tuple(info.input_hw), info.normalization
    sess = OrtSession(info.onnx_path, 1, 1)
    x = np.random.default_rng(0).uniform(-1, 1, (1, *hw, 3)).astype(np.float32)
    inf = []
    for i in range(3 + (5 if a.smoke else 20)):
        t0 = time.perf_counter()
        sess.run(x)
        if i >= 3:                       # first runs are warm-up
            inf.append(time.perf_counter() - t0)
    t_inf = 1e3 * float(np.median(inf))

    photos = PHOTOS[:1] if a.smoke else PHOTOS
    images = build_corpus(photos=photos)
    skipped, rows = [], []
    for dec in [d.strip() for d in a.decoders.split(",") if d.strip()]:
        for reduced in ("auto", "off"):
            try:
                pre = get_preprocessor(dec, reduced=reduced)
            except (BackendUnavailable, ImportError) as e:
                skipped.append(f"{dec}: {str(e).splitlines()[0][:120]}")
                break
            for size in SIZE_CLASSES:
                per = [time_preprocess(pre, img.path.read_bytes(), hw, mode, repeats)
                       for img in images if img.size_class == size]
                dm = {k: float(np.mean([q[k] for q in per])) for k in ("decode_ms", "resize_ms", "normalize_ms")}
                t_pre = sum(dm.values())
                e2e = t_pre + t_inf
                rows.append({"size": size, "decoder": dec, "reduced": reduced, **dm,
                             "inference_ms": t_inf, "e2e_ms": e2e,
                             "decode_share": dm["decode_ms"] / e2e, "resize_share": dm["resize_ms"] / e2e,
                             "normalize_share": dm["normalize_ms"] / e2e, "inference_share": t_inf / e2e,
                             "pipeline_img_s": 1e3 / e2e, "ceiling_img_s": 1e3 / t_inf,
                             "of_ceiling": t_inf / e2e})
                print(f"[preprocessing] {size} {dec}/{reduced}: pre {t_pre:.2f} ms, inf {t_inf:.2f} ms",
                      file=sys.stderr)
    df = pd.DataFrame(rows)
    st.text(f"Detector `{a.model}` ({hw[0]}x{hw[1]}, normalization `{mode}`), ONNX Runtime 1 thread, "
            f"batch 1: inference-only {t_inf:.2f} ms = ceiling {1e3 / t_inf:.1f} images/s. "
            f"Preprocessing single thread, median of {repeats} repeats per image, mean over "
            f"{len(photos)} photo(s) per size class ({', '.join(photos)}). `of_ceiling` = share of "
            f"the inference-only throughput the single-thread pipeline (preprocess + inference) reaches."
            + (f"\n\nSkipped: {'; '.join(skipped)}" if skipped else ""))
    st.table(df, "preprocessing", "Per size class and decoder (ms; shares of e2e)")
    best = df.loc[df.groupby("size").e2e_ms.idxmin()]
    st.text("## What it says\n\n" + "\n".join(
        f"- {r.size}: fastest `{r.decoder}` reduced={r.reduced}: preprocess "
        f"{r.e2e_ms - r.inference_ms:.2f} ms ({100 * (1 - r.inference_share):.0f}% of e2e), pipeline "
        f"reaches {100 * r.of_ceiling:.0f}% of the {r.ceiling_img_s:.0f} img/s ceiling"
        for r in best.itertuples()))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(SIZE_CLASSES), figsize=(5 * len(SIZE_CLASSES), 4.5), sharey=False)
    colors = {"decode_ms": "#d62728", "resize_ms": "#ff7f0e", "normalize_ms": "#bcbd22",
              "inference_ms": "#1f77b4"}
    for ax, size in zip(np.atleast_1d(axes), SIZE_CLASSES):
        d = df[df["size"] == size]
        labels = [f"{r.decoder}\n{r.reduced}" for r in d.itertuples()]
        bottom = np.zeros(len(d))
        for col, colr in colors.items():
            ax.bar(labels, d[col].values, bottom=bottom, color=colr, label=col.replace("_ms", ""))
            bottom += d[col].values
        for i, r in enumerate(d.itertuples()):
            ax.text(i, bottom[i], f"{100 * r.of_ceiling:.0f}%", ha="center", va="bottom", fontsize=8)
        ax.set(title=f"{size} (label: % of inference ceiling)", ylabel="ms per image")
        ax.tick_params(axis="x", labelsize=7)
    np.atleast_1d(axes)[0].legend()
    st.plot(fig, "preprocessing_stacked", "stacked ms per image")
    st.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
