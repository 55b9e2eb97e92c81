"""Same model and concurrency over Triton HTTP (REST) vs gRPC, side by side.

    python -m analysis.studies.rest_vs_grpc [--smoke] [--out RUN_DIR] [--models mobilenetv2]
        [--requests 1000] [--concurrency 10] [--max-batch 4] [--queue-delay-us 1000]

One server (``server_batching.serve``), both protocols measured back to back per model with
``server_batching.measure``: wall time, throughput, avg/p95, client serialize ms, server queue and
compute (stats endpoint) and the rest (transfer + deserialise + client threads).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from analysis.studies.report import Study, pin_threads
from analysis.studies.server_batching import measure, serve


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--models", default="mobilenetv2")
    p.add_argument("--requests", type=int, default=None, help="default 1000 (smoke 40)")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--queue-delay-us", type=int, default=1000)
    p.add_argument("--models-dir", default=None)
    a = p.parse_args(argv)
    pin_threads(1)
    import pandas as pd

    from pipelines.models import ensure_model
    n = a.requests or (40 if a.smoke else 1000)
    infos = [ensure_model(m.strip(), models_dir=a.models_dir) for m in a.models.split(",") if m.strip()]
    st = Study("rest_vs_grpc", a.out, a, threads=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="overhead-rg-") as tmp:
        with serve(infos, a.max_batch, a.queue_delay_us, Path(tmp)) as srv:
            for info in infos:
                for proto, url in (("http", "http://" + srv.http_url), ("grpc", "grpc://" + srv.grpc_url)):
                    print(f"[rest_vs_grpc] {info.name} {proto}", file=sys.stderr)
                    rows.append({"model": info.name, "protocol": proto, **measure(info, url, n, a.concurrency)})
    df = pd.DataFrame(rows)
    st.text(f"Real tritonserver (python backend, 1 instance, dynamic batching <= {a.max_batch}, delay "
            f"{a.queue_delay_us} us), {a.concurrency} client threads, {n} single-image requests per "
            f"protocol (binary tensors on both). `client_minus_server_ms` = transfer + deserialise + "
            f"client-side time not in Triton's queue/compute.")
    st.table(df.drop(columns=["first_error"]), "rest_vs_grpc", "HTTP vs gRPC")
    st.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
