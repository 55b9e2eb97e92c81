"""Triton (real local tritonserver, python flavour): no batching vs dynamic batching.

    python -m analysis.studies.server_batching [--smoke] [--out RUN_DIR] [--models mobilenetv2,custom_cnn]
        [--max-batches 1,2,4,8] [--requests 1000] [--concurrency 10] [--protocol grpc|http]
        [--queue-delay-us 1000]

For each max batch size (1 = no batching: the dynamic batcher can only form batches of 1) a model
repository is written (``deploy.triton.repository``, python flavour, 1 instance, 1 ORT thread), a
server started (``deploy.triton.server.TritonServer``, 1 thread) and, per model, ``--requests``
single-image requests are sent by ``--concurrency`` client threads through the ``triton``
inference backend (one client per thread). Reported: client avg/p95 latency and throughput, and
from ``/v2/models/<m>/stats`` (delta over the measured requests) the mean server queue and
compute (input + infer + output) per request and the batch sizes executed. ``rest_vs_grpc``
(``analysis/studies/rest_vs_grpc.py``) reuses ``load``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from analysis.studies.closed_loop import closed_loop
from analysis.studies.report import Study, pin_threads


def load(backend, x: np.ndarray, n: int, concurrency: int) -> dict:
    """``n`` single-item requests from ``concurrency`` threads (closed loop). Per request:
    round-trip ms and client serialize ms."""
    done, errors, wall = closed_loop(lambda: backend.infer(x), n, concurrency)
    lat = [c.ms for c in done]
    ser = [sum((e - s) / 1e6 for comp, s, e, _ in getattr(c.result, "spans", []) if comp == "serialize")
           for c in done]
    lat = np.array(lat) if lat else np.array([np.nan])
    return {"requests": int(np.isfinite(lat).sum()), "errors": len(errors), "wall_s": wall,
            "throughput_rps": np.isfinite(lat).sum() / wall, "avg_ms": float(np.nanmean(lat)),
            "p50_ms": float(np.nanpercentile(lat, 50)), "p95_ms": float(np.nanpercentile(lat, 95)),
            "serialize_ms": float(np.mean(ser)) if ser else float("nan"),
            "first_error": errors[0] if errors else ""}


def measure(info, url: str, n: int, concurrency: int, warmup: int = 5) -> dict:
    from pipelines.inference import make_backend
    from pipelines.inference.triton import stats_delta
    b = make_backend("triton", info, url=url, timeout_s=60)
    try:
        h, w = info.input_hw
        x = np.random.default_rng(0).uniform(-1, 1, (h, w, 3)).astype(np.float32)
        for _ in range(warmup):
            b.infer(x)
        s0 = b.model_stats()
        res = load(b, x, n, concurrency)
        d = stats_delta(s0, b.model_stats())
    finally:
        b.close()
    compute = (d["compute_input_mean_ns"] + d["compute_infer_mean_ns"] + d["compute_output_mean_ns"]) / 1e6
    res.update({"server_queue_ms": d["queue_mean_ns"] / 1e6, "server_compute_ms": compute,
                "server_infer_ms": d["compute_infer_mean_ns"] / 1e6,
                "client_minus_server_ms": res["avg_ms"] - d["queue_mean_ns"] / 1e6 - compute,
                "executions": d["execution_count"],
                "avg_batch": d["inference_count"] / d["execution_count"] if d["execution_count"] else float("nan"),
                "batches": " ".join(f"{k}:{v}" for k, v in d["batches"].items())})
    return res


def serve(models_info, max_batch: int, queue_delay_us: int, workdir: Path):
    from deploy.triton.repository import write_repository
    from deploy.triton.server import TritonServer
    repo = workdir / f"repo-mb{max_batch}"
    write_repository(repo, models_info, flavour="python", max_batch=max_batch,
                     queue_delay_us=queue_delay_us, instances=1, intra_op_threads=1)
    return TritonServer(repo, log_path=workdir / f"tritonserver-mb{max_batch}.log", threads=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--models", default="mobilenetv2,custom_cnn")
    p.add_argument("--max-batches", default=None, help="default 1,2,4,8 (smoke 1,4)")
    p.add_argument("--requests", type=int, default=None, help="default 1000 (smoke 40)")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--queue-delay-us", type=int, default=1000)
    p.add_argument("--models-dir", default=None)
    a = p.parse_args(argv)
    pin_threads(1)
    import pandas as pd

    from pipelines.models import ensure_model
    mbs = [int(v) for v in (a.max_batches or ("1,4" if a.smoke else "1,2,4,8")).split(",")]
    n = a.requests or (40 if a.smoke else 1000)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    infos = [ensure_model(m, models_dir=a.models_dir) for m in models]
    st = Study("server_batching", a.out, a, threads=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="overhead-sb-") as tmp:
        for mb in mbs:
            srv = serve(infos, mb, a.queue_delay_us, Path(tmp))
            with srv:
                url = f"{a.protocol}://" + (srv.grpc_url if a.protocol == "grpc" else srv.http_url)
                for info in infos:
                    print(f"[server_batching] {info.name} max batch {mb}: {n} requests x{a.concurrency}",
                          file=sys.stderr)
                    rows.append({"model": info.name, "max_batch": mb,
                                 "batching": "none" if mb == 1 else f"dynamic <= {mb}",
                                 **measure(info, url, n, a.concurrency)})
    df = pd.DataFrame(rows)
    st.text(f"Real tritonserver (python backend running ONNX Runtime, 1 instance, 1 ORT thread, "
            f"server --threads 1), {a.protocol.upper()}, {a.concurrency} client threads, {n} single-image "
            f"requests per configuration after 5 warm-up requests; dynamic batching "
            f"max_queue_delay {a.queue_delay_us} us. Client, server and ORT share the same 2 cores. "
            f"`server_queue_ms`/`server_compute_ms`: Triton's stats endpoint, mean per request over the "
            f"measured requests; `client_minus_server_ms` = client avg - queue - compute "
            f"(transfer, (de)serialisation, client threads).")
    st.table(df.drop(columns=["first_error"]), "server_batching", "No batching vs dynamic batching")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        d = df[df.model == m]
        lbl = [str(v) for v in d.max_batch]
        ax.bar(lbl, d.server_queue_ms, label="server queue", color="#ff7f0e")
        ax.bar(lbl, d.server_compute_ms, bottom=d.server_queue_ms, label="server compute", color="#1f77b4")
        ax.bar(lbl, d.client_minus_server_ms.clip(lower=0), bottom=d.server_queue_ms + d.server_compute_ms,
               label="client - server", color="#7f7f7f")
        for i, r in enumerate(d.itertuples()):
            ax.text(i, r.avg_ms, f"{r.throughput_rps:.0f} rps", ha="center", va="bottom", fontsize=8)
        ax.set(title=f"{m}: mean latency split", xlabel="max batch (1 = none)", ylabel="ms")
        ax.legend()
    st.plot(fig, "server_batching", "queue vs compute per max batch")
    st.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
