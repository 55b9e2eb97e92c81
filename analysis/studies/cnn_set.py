"""The TF Serving batching study's CNN set (its Tables 1 and 2), served here by Triton.

    python -m analysis.studies.cnn_set [--smoke] [--out RUN_DIR]
        [--models resnet50,inceptionv3,mobilenetv2,efficientnetb0,custom_cnn,custom_cnn_small]
        [--max-batches 1,2,4,8] [--requests 1000] [--concurrency 10] [--protocol grpc|http]
        [--server triton | --server tfserving --url grpc://127.0.0.1:8500 --max-batches B]

The study: four pretrained CNNs and two self-trained ones, no batching vs server-side batching
with max batch 2, 1,000 requests from 10 client threads; Table 1 = average and 95th-percentile
latency, Table 2 = average and 95th-percentile throughput (images per second). Here: the catalog's
ResNet-50, InceptionV3, MobileNetV2, EfficientNet-B0 (seeded weights, not ImageNet-trained: cost
does not depend on the weights) and two custom CNNs (``custom_cnn``: four conv/pool blocks + two
dense layers, as the study describes its own; ``custom_cnn_small``, ``sized_models.ensure_small_cnn``:
the study does not describe its second). ``--server triton`` (default): for each max batch a real
tritonserver (``server_batching.serve``: python backend running ONNX Runtime, 1 instance, 1 thread;
max batch 1 = no batching) serves every model in turn. ``--server tfserving --url URL``: an
already running TF Serving (e.g. the Compose service, started with the batching file for
``--max-batches B``, one value) measured with the same client, so a user's machine gives the same
tables. Throughput per one-second window of completions (full windows from the first completion);
average and p95 over the windows, as the study reports it; the overall rate is ``images_per_s``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from analysis.studies.closed_loop import closed_loop
from analysis.studies.report import Study, pin_threads

DEFAULT_MODELS = "resnet50,inceptionv3,mobilenetv2,efficientnetb0,custom_cnn,custom_cnn_small"


def timed_load(backend, x, n: int, concurrency: int):
    """``n`` single-image requests from ``concurrency`` threads: (done_s since start, ms) per request."""
    done, errors, wall = closed_loop(lambda: backend.infer(x), n, concurrency)
    return np.array([(c.end_s, c.ms) for c in done]).reshape(-1, 2), errors, wall


def windows(done_s, width: float = 1.0) -> np.ndarray:
    """Completions per full ``width``-second window, from the first completion."""
    if len(done_s) < 2:
        return np.array([])
    k = int((done_s[-1] - done_s[0]) // width)
    if k < 1:
        return np.array([])
    counts = np.histogram(done_s, bins=done_s[0] + width * np.arange(k + 1))[0]
    return counts / width


def measure(kind: str, info, url: str, n: int, concurrency: int, warmup: int = 5, window_s: float = 1.0) -> dict:
    from pipelines.inference import make_backend
    b = make_backend(kind, info, url=url, timeout_s=120)
    try:
        h, w = info.input_hw
        x = np.random.default_rng(0).uniform(0, 1, (h, w, 3)).astype(np.float32)
        for _ in range(warmup):
            b.infer(x)
        done, errors, wall = timed_load(b, x, n, concurrency)
    finally:
        b.close()
    lat, win = done[:, 1], windows(done[:, 0], window_s)
    return {"requests": len(lat), "errors": len(errors), "wall_s": wall,
            "avg_latency_ms": float(lat.mean()) if len(lat) else np.nan,
            "p95_latency_ms": float(np.percentile(lat, 95)) if len(lat) else np.nan,
            "avg_throughput_ips": float(win.mean()) if len(win) else np.nan,
            "p95_throughput_ips": float(np.percentile(win, 95)) if len(win) else np.nan,
            "windows": len(win), "window_s": window_s, "images_per_s": len(lat) / wall, "first_error": errors[0] if errors else ""}


def _infos(models, models_dir):
    from analysis.studies.sized_models import SMALL_CNN, ensure_small_cnn
    from pipelines.models import ensure_model
    return [ensure_small_cnn(models_dir) if m == SMALL_CNN else ensure_model(m, models_dir=models_dir)
            for m in models]


def run_triton(infos, mbs, a, n) -> list[dict]:
    from analysis.studies.server_batching import serve
    rows = []
    with tempfile.TemporaryDirectory(prefix="overhead-cnnset-") as tmp:
        for mb in mbs:
            with serve(infos, mb, a.queue_delay_us, Path(tmp)) as srv:
                url = f"{a.protocol}://" + (srv.grpc_url if a.protocol == "grpc" else srv.http_url)
                for info in infos:
                    print(f"[cnn_set] {info.name} max batch {mb}: {n} x{a.concurrency}", file=sys.stderr)
                    rows.append({"model": info.name, "batch_size": mb,
                                 **measure("triton", info, url, n, a.concurrency, window_s=a.window_s)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--models", default=None, help=f"default {DEFAULT_MODELS} (smoke: the two custom CNNs)")
    p.add_argument("--max-batches", default=None, help="default 1,2,4,8 (smoke 1,2)")
    p.add_argument("--requests", type=int, default=None, help="default 1000 (smoke 60)")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--queue-delay-us", type=int, default=1000)
    p.add_argument("--server", choices=("triton", "tfserving"), default="triton")
    p.add_argument("--url", default=None, help="--server tfserving: the running server (grpc:// or http://)")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--window-s", type=float, default=None, help="throughput window (default 1 s; smoke 0.05)")
    a = p.parse_args(argv)
    a.window_s = a.window_s or (0.05 if a.smoke else 1.0)
    pin_threads(1)
    models = (a.models or ("custom_cnn,custom_cnn_small" if a.smoke else DEFAULT_MODELS)).split(",")
    mbs = [int(v) for v in (a.max_batches or ("1,2" if a.smoke else "1,2,4,8")).split(",")]
    n = a.requests or (60 if a.smoke else 1000)
    if a.server == "tfserving" and (not a.url or len(mbs) != 1):
        p.error("--server tfserving needs --url and one --max-batches value (the server's batching file)")
    import pandas as pd
    infos = _infos(models, a.models_dir)
    st = Study("cnn_set", a.out, a, threads=1)
    if a.server == "triton":
        rows = run_triton(infos, mbs, a, n)
    else:
        rows = [{"model": i.name, "batch_size": mbs[0],
                 **measure("tfserving", i, a.url, n, a.concurrency, window_s=a.window_s)} for i in infos]
    df = pd.DataFrame(rows)
    df.to_csv(st.dir / "cnn_set.csv", index=False)
    st.text(f"{a.server} ({'real tritonserver here, python backend + ONNX Runtime, 1 instance, 1 thread' if a.server == 'triton' else a.url}), "
            f"{a.protocol.upper()}, {a.concurrency} client threads, {n} single-image requests per "
            f"configuration after 5 warm-up requests; batch size 1 = no batching, else dynamic batching up "
            f"to it (max queue delay {a.queue_delay_us} us). Client and server share the 2 cores. Every "
            f"column: `cnn_set.csv`.")
    t1 = df[["model", "batch_size", "avg_latency_ms", "p95_latency_ms", "errors"]]
    st.table(t1, "table1_latency", "Table 1. Average and 95th percentile latency (ms)", floatfmt=".2f")
    t2 = df[["model", "batch_size", "avg_throughput_ips", "p95_throughput_ips", "images_per_s", "windows"]]
    st.table(t2, "table2_throughput", f"Table 2. Throughput (images per second, per {a.window_s:g}-s window of completions)",
             floatfmt=".2f")
    _plot(st, df)
    st.finish()
    return 0


def _plot(st, df) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for m, g in df.groupby("model", sort=False):
        axes[0].plot(g.batch_size, g.avg_latency_ms, "o-", label=m)
        axes[1].plot(g.batch_size, g.avg_throughput_ips, "o-", label=m)
    axes[0].set(xlabel="max batch (1 = none)", ylabel="ms", title="average latency", yscale="log")
    axes[1].set(xlabel="max batch (1 = none)", ylabel="images/s", title="average throughput (1-s windows)")
    for ax in axes:
        ax.legend(fontsize=7)
    st.plot(fig, "cnn_set", "latency and throughput per model and max batch")


if __name__ == "__main__":
    sys.exit(main())
