"""Where does a Triton request's time go? Overhead's client + Triton's trace, cross-checked.

Starts the REAL local tritonserver (``deploy.triton``, Python backend running ONNX Runtime, trace
level TIMESTAMPS rate 1) on a generated repository, then for each protocol and concurrency sends
``--requests`` requests through ``pipelines.inference.triton.TritonBackend`` (one client per
thread), with request ids. After the server stops (the trace file is written at shutdown) each
request's round trip is split with Triton's own timestamps (``server_spans``): ``transfer``
(client -> server and back, incl. HTTP/gRPC (de)serialisation), ``queue``, ``inference``
(compute input + infer + output). ``/v2/models/<m>/stats`` deltas give the aggregates and the
batch sizes Triton formed. With ``--perf-analyzer`` Triton's own ``perf_analyzer`` (from the
``tritonclient==2.51.0`` wheel, installed on demand into the server venv) measures the same
model, protocol and concurrency on the same server: its p50 and queue/compute columns are printed
next to ours. CPU seconds of this process and of the server are reported (2 shared cores).
No asserts: it measures.

    .venv/bin/python analysis/bench_triton.py [--model mobilenetv2] [--protocols http,grpc]
        [--concurrency 1,4] [--requests 40] [--max-batch 8] [--queue-delay-us 100]
        [--instances 1] [--perf-analyzer] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from deploy.triton.repository import write_repository
from deploy.triton.server import TritonServer
from pipelines.inference.triton import (TritonBackend, read_trace, server_spans,
                                        stats_delta)
from pipelines.models import ensure_model


def _cpu_s(pid: int | None = None) -> float:
    if pid is None:
        t = os.times()
        return t.user + t.system
    import psutil
    try:
        p = psutil.Process(pid)
        total = sum(p.cpu_times()[:2])
        for c in p.children(recursive=True):
            total += sum(c.cpu_times()[:2])
        return total
    except psutil.Error:
        return float("nan")


def _pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


def run_client(info, url: str, concurrency: int, n: int, tag: str) -> tuple[list, dict]:
    """n requests at ``concurrency`` in flight; returns [(rid, send, recv)] and the stats delta."""
    local = threading.local()
    backends, lock = [], threading.Lock()
    first = TritonBackend(info, url=url, timeout_s=60)
    before = first.model_stats()
    x = np.random.default_rng(0).uniform(-1, 1, (*info.input_hw, 3)).astype(np.float32)

    def one(i):
        b = getattr(local, "b", None)
        if b is None:
            b = local.b = TritonBackend(info, url=url, timeout_s=60)
            with lock:
                backends.append(b)
        r = b.infer(x, request_id=f"{tag}-{i}")
        return r.request_id, r.start_ns, r.end_ns

    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, range(min(n, concurrency * 2))))          # warm-up, not counted
        before = first.model_stats()
        recs = list(ex.map(one, range(10_000, 10_000 + n)))
    deadline = time.monotonic() + 5
    while True:                 # Triton counts a batch just after answering it
        d = stats_delta(before, first.model_stats())
        if d["inference_count"] >= n or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for b in backends + [first]:
        b.close()
    return recs, d


def summarise(recs, traces) -> dict:
    comp = {"transfer": [], "queue": [], "inference": [], "round_trip": [], "unexplained": []}
    joined = 0
    for rid, send, recv in recs:
        rt = recv - send
        comp["round_trip"].append(rt / 1e6)
        t = traces.get(rid)
        spans = server_spans(t, send, recv) if t else []
        if not spans:
            continue
        joined += 1
        per = {"transfer": 0, "queue": 0, "inference": 0}
        for c, s, e, _ in spans:
            per[c] += e - s
        for c, v in per.items():
            comp[c].append(v / 1e6)
        comp["unexplained"].append((rt - sum(per.values())) / 1e6)
    out = {"n": len(recs), "joined": joined}
    for c, xs in comp.items():
        out[f"{c}_p50_ms"] = round(_pct(xs, 50), 3)
        out[f"{c}_p99_ms"] = round(_pct(xs, 99), 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--concurrency", default="1,4")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-delay-us", type=int, default=100)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--perf-analyzer", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    info = ensure_model(a.model)
    protocols = [s for s in a.protocols.split(",") if s]
    levels = [int(c) for c in a.concurrency.split(",") if c]
    results, pa_rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as d:
        write_repository(os.path.join(d, "repo"), [info], max_batch=a.max_batch,
                         queue_delay_us=a.queue_delay_us, instances=a.instances)
        trace = os.path.join(d, "trace.json")
        srv = TritonServer(os.path.join(d, "repo"), trace_file=trace,
                           log_path=os.path.join(d, "triton.log")).start()
        cpu0_self, cpu0_srv = _cpu_s(), _cpu_s(srv.pid)
        try:
            runs = []
            for proto in protocols:
                url = f"grpc://{srv.grpc_url}" if proto == "grpc" else f"http://{srv.http_url}"
                for c in levels:
                    tag = f"{proto}-c{c}"
                    t0 = time.monotonic()
                    recs, delta = run_client(info, url, c, a.requests, tag)
                    wall = time.monotonic() - t0
                    runs.append((proto, c, recs, delta, wall))
                    if a.perf_analyzer:
                        from deploy.triton.perf_analyzer import run_perf_analyzer
                        pa_url = srv.grpc_url if proto == "grpc" else srv.http_url
                        row = run_perf_analyzer(info.name, pa_url, proto, c, a.requests)
                        pa_rows.append({"protocol": proto, "concurrency": c, **row})
            cpu_self, cpu_srv = _cpu_s() - cpu0_self, _cpu_s(srv.pid) - cpu0_srv
        finally:
            srv.stop()
        traces = read_trace(trace) if os.path.exists(trace) else {}
    for proto, c, recs, delta, wall in runs:
        s = summarise(recs, traces)
        span_s = (max(r[2] for r in recs) - min(r[1] for r in recs)) / 1e9
        s.update(protocol=proto, concurrency=c, wall_s=round(wall, 2),
                 throughput_rps=round(len(recs) / span_s, 2) if span_s > 0 else float("nan"),
                 server_queue_mean_ms=round(delta["queue_mean_ns"] / 1e6, 3),
                 server_infer_mean_ms=round(delta["compute_infer_mean_ns"] / 1e6, 3),
                 batches=delta["batches"])
        results.append(s)
    cols = ("protocol", "concurrency", "n", "joined", "round_trip_p50_ms", "transfer_p50_ms",
            "queue_p50_ms", "inference_p50_ms", "unexplained_p50_ms", "server_queue_mean_ms",
            "server_infer_mean_ms", "batches")
    print(f"model {info.name}, max_batch {a.max_batch}, queue delay {a.queue_delay_us} us, "
          f"{a.instances} instance(s); CPU s: this process {cpu_self:.1f}, tritonserver+stubs "
          f"{cpu_srv:.1f}")
    print("  ".join(cols))
    for r in results:
        print("  ".join(str(r[k]) for k in cols))
    if pa_rows:
        print("\nperf_analyzer (µs): protocol concurrency p50 | client send, network+server "
              "send/recv, server queue, compute input/infer/output, client recv")
        for r in pa_rows:
            print(r["protocol"], r["concurrency"], r.get("p50 latency"), "|",
                  *(r.get(k) for k in ("Client Send", "Network+Server Send/Recv", "Server Queue",
                                       "Server Compute Input", "Server Compute Infer",
                                       "Server Compute Output", "Client Recv")))
    if pa_rows:  # side by side: same server, model, protocol and concurrency
        print("\nours vs perf_analyzer: protocol c | req/s ours / PA (ratio, target >= 0.9) | "
              "p50 ms ours / PA | p99 ms ours / PA | server queue ms ours / PA | server infer ms ours / PA")
        pa = {(r["protocol"], r["concurrency"]): r for r in pa_rows}
        for r in results:
            q = pa.get((r["protocol"], r["concurrency"]))
            if not q:
                continue
            pa_rps = float(q.get("Inferences/Second") or "nan")
            us = lambda k: float(q.get(k) or "nan") / 1e3  # noqa: E731
            print(f"{r['protocol']:<5} {r['concurrency']:>2} | {r['throughput_rps']:7.1f} / "
                  f"{pa_rps:7.1f} ({r['throughput_rps'] / pa_rps:.2f}) | "
                  f"{r['round_trip_p50_ms']:6.1f} / {us('p50 latency'):6.1f} | "
                  f"{r['round_trip_p99_ms']:6.1f} / {us('p99 latency'):6.1f} | "
                  f"{r['server_queue_mean_ms']:6.2f} / {us('Server Queue'):6.2f} | "
                  f"{r['server_infer_mean_ms']:6.2f} / {us('Server Compute Infer'):6.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"ours": results, "perf_analyzer": pa_rows,
                       "cpu_s": {"bench": cpu_self, "tritonserver": cpu_srv}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
