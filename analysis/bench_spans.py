"""What does span recording cost? Two gateways side by side, spans on and off, same load.

    python analysis/bench_spans.py [--rounds 6] [--requests 100] [--concurrency 2] [--size 1MP]

Starts ``python -m pipelines.gateway`` twice with the same models and thread counts, one with
``--spans-dir`` (recording + background Parquet flushes) and one with ``--no-spans``. Each is
driven by the same closed loop (``--concurrency`` client threads, each sending the next request
as soon as the previous answer arrives) with the same corpus image, in alternating rounds
(on, off, off, on, on, off, ...) so drift and noise on the shared cores hit both alike. Prints
throughput per server, the on/off ratio (target >= 0.98), p50 latency and each process's CPU
seconds (psutil). It only measures; it asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def drive(url: str, data: bytes, n: int, concurrency: int) -> tuple[float, list[float], int]:
    """``n`` requests over ``concurrency`` closed-loop clients. Returns (wall s, latencies, errors)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    left = [n]

    def client():
        nonlocal errors
        with httpx.Client(base_url=url, timeout=60) as c:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                t0 = time.perf_counter()
                r = c.post("/v1/infer", content=data)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    errors += r.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies, errors


def span_cost_us(n: int = 20000) -> float:
    """CPU microseconds to record one span with attrs and flush it to Parquet, measured here."""
    import pyarrow.parquet as pq

    from overhead.contract.records import Span
    from pipelines.spans import SpanRecorder, spans_to_table

    pq.write_table(spans_to_table([Span("r", "s", "c", 0, 1, None)]), tempfile.mktemp(suffix=".parquet"))
    rec = SpanRecorder()
    t0 = time.process_time()
    for i in range(n):
        rec.record("0123456789abcdef0123456789abcdef", "classify", "inference", i, i + 1, {"crop": 3})
    path = tempfile.mktemp(suffix=".parquet")
    pq.write_table(rec.drain_table(), path)   # what SpanFlusher does
    os.unlink(path)
    return (time.process_time() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="rounds per server")
    ap.add_argument("--requests", type=int, default=100, help="requests per round")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--size", default="1MP", choices=("0.1MP", "1MP", "8MP"))
    ap.add_argument("--photo", default="china")
    ap.add_argument("--detector", default="ssd_mobilenetv2")
    ap.add_argument("--classifier", default="mobilenetv2")
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--gateway-arg", action="append", default=[],
                    help="extra gateway argument for both servers (repeatable)")
    ap.add_argument("--workdir", default=None, help="logs and spans (default: a temp dir)")
    ap.add_argument("--control", action="store_true",
                    help="A/A control: both servers without spans, to see this machine's noise floor")
    args = ap.parse_args(argv)

    import psutil

    from pipelines.corpus import build_corpus
    from deploy.pipeline_processes import GatewayProcess
    from pipelines.models import ensure_model

    det = ensure_model(args.detector, models_dir=args.models_dir)
    ensure_model(args.classifier, models_dir=args.models_dir)
    (img,) = build_corpus(sizes=(args.size,), photos=(args.photo,))
    data = Path(img.path).read_bytes()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="overhead-bench-spans-"))
    common = ["--detector", args.detector, "--classifier", args.classifier,
              "--models-dir", str(Path(det.onnx_path).parent.parent), "--intra-op-threads", "1",
              "--threads", "4", "--workers", "1", "--log-level", "warning", *args.gateway_arg]
    servers = {
        "spans on": GatewayProcess(common + (["--no-spans"] if args.control else
                                             ["--spans-dir", str(work / "spans")]),
                                   work / "gateway-spans-on.log"),
        "spans off": GatewayProcess(common + ["--no-spans"], work / "gateway-spans-off.log"),
    }
    try:
        for s in servers.values():
            s.start()
        procs = {k: psutil.Process(s.pid) for k, s in servers.items()}
        print(f"image {img.name} {img.size_class} ({img.width}x{img.height}, {img.nbytes} bytes); "
              f"{args.rounds} rounds x {args.requests} requests per server, concurrency "
              f"{args.concurrency}; logs in {work}", flush=True)
        for k, s in servers.items():   # warm-up, not measured
            drive(s.url, data, 10, args.concurrency)
        wall = {k: 0.0 for k in servers}
        cpu = {k: 0.0 for k in servers}
        lat = {k: [] for k in servers}
        errs = {k: 0 for k in servers}
        per_round = {k: [] for k in servers}
        names = list(servers)
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]   # ABBA: cancels linear drift
            for k in order:
                c0 = sum(procs[k].cpu_times()[:4])
                w, ls, e = drive(servers[k].url, data, args.requests, args.concurrency)
                cpu[k] += sum(procs[k].cpu_times()[:4]) - c0
                wall[k] += w
                lat[k] += ls
                errs[k] += e
                per_round[k].append(args.requests / w)
        total = args.rounds * args.requests
        print(f"\n{'server':<10} {'req/s':>8} {'rounds req/s (min..max)':>24} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'CPU s':>7} {'CPU ms/req':>10} {'errors':>6}")
        for k in names:
            ls = sorted(lat[k])
            print(f"{k:<10} {total / wall[k]:8.1f} {min(per_round[k]):11.1f} .. {max(per_round[k]):8.1f} "
                  f"{statistics.median(ls) * 1e3:8.1f} {ls[int(0.99 * (len(ls) - 1))] * 1e3:8.1f} "
                  f"{cpu[k]:7.1f} {cpu[k] / total * 1e3:10.2f} {errs[k]:6d}")
        ratio = (total / wall["spans on"]) / (total / wall["spans off"])
        cpu_ratio = cpu["spans on"] / cpu["spans off"] if cpu["spans off"] else float("nan")
        pairs = sorted(a / b for a, b in zip(per_round["spans on"], per_round["spans off"]))
        print(f"\n{'A/A CONTROL (both without spans): ' if args.control else ''}"
              f"throughput ratio on/off = {ratio:.3f} (target >= 0.98); median of per-round "
              f"ratios {statistics.median(pairs):.3f} (range {pairs[0]:.3f}..{pairs[-1]:.3f}); "
              f"CPU per request on/off = {cpu_ratio:.3f}")
        print(f"recording cost in this process: {span_cost_us():.1f} us per span "
              f"(record + Arrow table + Parquet write)")
        parts = sorted((work / "spans").glob("*.parquet"))
        print(f"spans on: {len(parts)} parquet part(s) in {work / 'spans'} so far "
              f"(the last flush happens at shutdown)")
    finally:
        for s in servers.values():
            s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
