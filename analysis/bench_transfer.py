"""Transfer time of one 1 MP float32 tensor (1000x1000, 4 MB) into the REAL tritonserver:
HTTP (binary tensor), gRPC, and system shared memory (``tritonclient.utils.shared_memory``,
region registered once, the tensor copied into it per request), side by side.

    .venv/bin/python analysis/bench_transfer.py [--requests 50 --megapixels 1] [--json out.json]

The model (Python backend) only answers the input's element count, so the server's own time is
small; it is measured by Triton (``/v2/models/<m>/stats``: ``success`` = request start to end
inside the server) and subtracted: transfer = client round trip - server time (means). Ratios
are what to read; the 2 cores are shared with the server.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = "sink"
MODEL_PY = '''import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("n", np.array([x.size], np.float32))]))
        return out
'''
CONFIG = f'''name: "{MODEL}"
backend: "python"
max_batch_size: 0
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1, -1 ] }} ]
output [ {{ name: "n" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
'''


def write_repo(d: Path) -> Path:
    (d / MODEL / "1").mkdir(parents=True, exist_ok=True)
    (d / MODEL / "config.pbtxt").write_text(CONFIG)
    (d / MODEL / "1" / "model.py").write_text(MODEL_PY)
    return d


def success_ns(client, as_json: bool) -> tuple[int, int]:
    st = client.get_inference_statistics(MODEL, **({"as_json": True} if as_json else {}))
    s = st["model_stats"][0]["inference_stats"]["success"]
    return int(s.get("count", 0)), int(s.get("ns", 0))


def run_mode(mode: str, srv, x: np.ndarray, n: int) -> dict:
    import tritonclient.grpc as tg
    import tritonclient.http as th

    grpc = mode.startswith("grpc")
    tc = tg if grpc else th
    client = tc.InferenceServerClient(srv.grpc_url if grpc else srv.http_url)
    nbytes = x.nbytes
    shm_handle = None
    if mode.endswith("shm"):
        import tritonclient.utils.shared_memory as shm

        key = f"/overhead_bench_{mode}"
        shm_handle = shm.create_shared_memory_region(f"in_{mode}", key, nbytes)
        client.unregister_system_shared_memory(f"in_{mode}")
        client.register_system_shared_memory(f"in_{mode}", key, nbytes)

    def once() -> int:
        t0 = time.perf_counter_ns()
        inp = tc.InferInput("x", list(x.shape), "FP32")
        if shm_handle is not None:
            shm.set_shared_memory_region(shm_handle, [x])
            inp.set_shared_memory(f"in_{mode}", nbytes)
        elif grpc:
            inp.set_data_from_numpy(x)
        else:
            inp.set_data_from_numpy(x, binary_data=True)
        outs = [tc.InferRequestedOutput("n")] if grpc else [tc.InferRequestedOutput("n", binary_data=True)]
        r = client.infer(MODEL, [inp], outputs=outs)
        assert int(r.as_numpy("n")[0]) == x.size
        return time.perf_counter_ns() - t0

    try:
        for _ in range(3):
            once()
        c0, n0 = success_ns(client, grpc)
        times = [once() for _ in range(n)]
        time.sleep(0.1)        # stats are updated just after the response
        c1, n1 = success_ns(client, grpc)
    finally:
        if shm_handle is not None:
            client.unregister_system_shared_memory(f"in_{mode}")
            shm.destroy_shared_memory_region(shm_handle)
        client.close()
    server_ms = (n1 - n0) / max(c1 - c0, 1) / 1e6
    mean_ms = statistics.fmean(times) / 1e6
    return {"mode": mode, "p50_ms": statistics.median(times) / 1e6, "mean_ms": mean_ms,
            "server_ms": server_ms, "transfer_ms": mean_ms - server_ms,
            "MB_s": x.nbytes / 1e6 / max((mean_ms - server_ms) / 1e3, 1e-9)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--megapixels", type=float, default=1.0)
    ap.add_argument("--modes", default="http,grpc,http-shm,grpc-shm")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    from deploy.triton.server import TritonServer

    side = int(round((a.megapixels * 1e6) ** 0.5))
    x = np.random.default_rng(0).random((side, side), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="overhead-bench-transfer-") as d:
        repo = write_repo(Path(d) / "repo")
        with TritonServer(repo, log_path=Path(d) / "tritonserver.log") as srv:
            rows = [run_mode(m, srv, x, a.requests) for m in a.modes.split(",")]
    print(f"{side}x{side} float32 ({x.nbytes / 1e6:.1f} MB), {a.requests} requests each, "
          f"tritonserver (Python backend) on loopback")
    print(f"{'mode':<10}{'p50 ms':>9}{'mean ms':>9}{'server ms':>11}{'transfer ms':>13}{'MB/s':>9}")
    for r in rows:
        print(f"{r['mode']:<10}{r['p50_ms']:>9.2f}{r['mean_ms']:>9.2f}{r['server_ms']:>11.2f}"
              f"{r['transfer_ms']:>13.2f}{r['MB_s']:>9.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"shape": [side, side], "bytes": x.nbytes, "requests": a.requests, "rows": rows},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
