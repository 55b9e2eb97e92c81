"""Overload: does the gateway shed load, keep its memory bounded, and come back?

    python analysis/bench_overload.py [--over 60] [--after 30] [--settle 30] [--size 1MP]

Starts ``python -m pipelines.gateway`` (default options: ``--threads 4``, so ``--max-queued``
16), warms it up and measures (1) its unloaded p50/p99 (one client, sequential), (2) its capacity
(8 closed-loop clients), then drives Locust open loop (Poisson arrivals, up to 3000 in flight) at
3x the capacity for ``--over`` s and 0.5x for ``--after`` s, sampling ``GET /v1/stats`` (RSS) and
``GET /healthz`` every 0.5 s, and ``--settle`` s more after the load ends. Prints admitted vs
rejected, p50/p99 of the admitted (answered 200) requests of the 3x step, peak RSS over the
baseline, RSS ``--settle`` s after, the incomplete count and the rows missing from
requests.parquet (sent, by the scheduler's own count, minus rows), against the targets. It only
measures; it asserts nothing.

The baseline RSS is taken after the warm-up, the unloaded run and the capacity run (8 clients),
2 s idle: the models, the request threads and the allocator's arenas have all been used once, so
"RSS after" measures what the overload left behind, not first-use growth. The gateway's
anonymous memory (``/proc/PID/smaps_rollup``) and ``spans_buffered`` are printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from deploy.pipeline_processes import GatewayProcess
from overhead.contract.rundir import RunDir
from pipelines.corpus import build_corpus

REPO = Path(__file__).resolve().parent.parent


def closed_loop(url: str, data: bytes, seconds: float, clients: int) -> tuple[float, list[float]]:
    """(throughput req/s, latencies s) of ``clients`` closed-loop clients for ``seconds``."""
    lat: list[float] = []
    end = time.monotonic() + seconds

    def run():
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                if c.post("/v1/infer", content=data).status_code == 200:
                    lat.append(time.perf_counter() - t0)
    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat) / (time.monotonic() - t0), lat


class Sampler(threading.Thread):
    """RSS (``/v1/stats``) and ``/healthz`` status every ``interval`` s."""

    def __init__(self, url: str, interval: float = 0.5):
        super().__init__(daemon=True)
        self.url, self.interval, self.rows, self.stop = url, interval, [], threading.Event()

    def run(self):
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while not self.stop.is_set():
                try:
                    rss = c.get("/v1/stats").json()["rss_bytes"]
                    health = c.get("/healthz").status_code
                except httpx.HTTPError:
                    rss, health = -1, 0
                self.rows.append((time.time_ns(), rss, health))
                self.stop.wait(self.interval)


def anonymous_mib(pid: int) -> float:
    """A process's anonymous (heap, arenas, stacks) resident memory, MiB; NaN when unknown."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def locust_open_loop(url: str, manifest: Path, run: RunDir, rates: list[float],
                     seconds: list[float]) -> None:
    steps = ",".join(f"{i + 1}:{s:g}" for i, s in enumerate(seconds))
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest/locustfile.py"),
           "--headless", "--only-summary", "--host", url, "--exit-code-on-error", "0",
           "--overhead-run-dir", str(run.path), "--overhead-manifest", str(manifest),
           "--overhead-steps", steps, "--overhead-warmup-seconds", "0",
           "--overhead-arrivals", "poisson", "--overhead-rates", ",".join(f"{r:g}" for r in rates),
           "--overhead-max-in-flight", "3000"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=open(run.path / "locust.log", "w"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--over", type=float, default=60.0, help="seconds at 3x capacity")
    ap.add_argument("--after", type=float, default=30.0, help="seconds at 0.5x capacity")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds watched after the load")
    ap.add_argument("--size", default="1MP")
    ap.add_argument("--gateway-arg", action="append", default=[])
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    images = build_corpus(sizes=(args.size,), photos=("china",))
    manifest = work / "corpus.json"
    manifest.write_text(json.dumps([dict(name=i.name, size_class=i.size_class, path=str(i.path))
                                    for i in images]))
    data = Path(images[0].path).read_bytes()
    gw = GatewayProcess(args.gateway_arg, work / "gateway.log").start()
    try:
        closed_loop(gw.url, data, 5, 2)                              # warm-up
        _, unloaded = closed_loop(gw.url, data, 8, 1)
        capacity, _ = closed_loop(gw.url, data, 10, 8)
        time.sleep(2)
        stats0 = httpx.get(gw.url + "/v1/stats").json()
        stats0["anon"] = anonymous_mib(gw.pid)
        base = stats0["rss_bytes"]
        print(f"unloaded p50 {np.percentile(unloaded, 50) * 1e3:.0f} ms, p99 "
              f"{np.percentile(unloaded, 99) * 1e3:.0f} ms; capacity {capacity:.1f} req/s; "
              f"baseline RSS {base / 2**20:.0f} MiB", flush=True)
        sampler = Sampler(gw.url)
        sampler.start()
        run = RunDir(work / "run").create()
        locust_open_loop(gw.url, manifest, run, [3 * capacity, 0.5 * capacity],
                         [args.over, args.after])
        load_end = time.time_ns()
        time.sleep(args.settle)
        sampler.stop.set()
        sampler.join()
        stats1 = httpx.get(gw.url + "/v1/stats").json()
        stats1["anon"] = anonymous_mib(gw.pid)
    finally:
        gw.stop()
    summarize(run, sampler.rows, base, load_end, np.percentile(unloaded, 99) * 1e3, stats0, stats1)
    print(f"(run directory: {run.path})")
    return 0


def summarize(run: RunDir, samples, base: int, load_end: int, unloaded_p99: float,
              stats0: dict, stats1: dict) -> None:
    req = pd.read_parquet(run.requests)
    steps = pd.read_parquet(run.steps).sort_values("step")
    sent = sum(s["scheduled"] for s in json.loads(run.locust_openloop.read_text())["steps"].values())
    s = pd.DataFrame(samples, columns=["t", "rss", "health"])
    over = steps.iloc[0]
    in_over = (req["intended_ns"] >= over["start_ns"]) & (req["intended_ns"] < over["end_ns"])
    ok = req[in_over & (req["status"] == 200)]
    lat = (ok["recv_ns"] - ok["intended_ns"]) / 1e6
    rejected = int((req["status"] == 503).sum())
    incomplete = int((req["error"] == "incomplete").sum())
    peak = s.loc[s["t"] <= load_end, "rss"].max()
    after = s.loc[s["t"] > load_end, "rss"].iloc[-1]
    a0, a1 = stats0["admission"], stats1["admission"]
    p99 = float(lat.quantile(0.99))
    print(f"sent {sent}, rows {len(req)}, missing {sent - len(req)} (target 0)")
    print(f"admitted {a1['admitted'] - a0['admitted']} vs rejected {a1['rejected'] - a0['rejected']}"
          f" (gateway counters; peak in progress {a1['peak']} of {a1['max_queued']}); "
          f"rows: {int((req['status'] == 200).sum())} ok, {rejected} 503, {incomplete} incomplete, "
          f"{len(req) - rejected - incomplete - int((req['status'] == 200).sum())} other")
    print(f"3x step: admitted p50 {lat.quantile(0.5):.0f} ms, p99 {p99:.0f} ms = "
          f"{p99 / unloaded_p99:.1f}x unloaded p99 (target <= 5x)")
    window = ((ok["intended_ns"] - over["start_ns"]) // 10**10 * 10).rename("s")
    per = lat.groupby(window).agg(["size", lambda x: x.quantile(0.99)])
    print("  per 10 s of the 3x step (answered, p99 ms): " + ", ".join(
        f"{int(t)}s: {int(n)}, {q:.0f}" for t, (n, q) in per.iterrows()))
    print(f"  load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (the machine is shared)")
    print(f"RSS: baseline {base / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB (+{(peak - base) / 2**20:.0f}"
          f" MiB, target <= +200), {len(s.loc[s['t'] > load_end])} samples after the load, last "
          f"{after / 2**20:.0f} MiB ({(after - base) / base:+.1%}, target within 10%); "
          f"malloc_trim calls {stats1.get('malloc_trims')}")
    print(f"  anonymous memory {stats0['anon']:.0f} -> {stats1['anon']:.0f} MiB; spans kept in the "
          f"gateway's memory {stats0['spans_buffered']} -> {stats1['spans_buffered']}")
    print(f"/healthz: {int((s['health'] == 200).sum())} of {len(s)} samples 200")


if __name__ == "__main__":
    sys.exit(main())
