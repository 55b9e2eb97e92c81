"""The same short load through each broker between the two DNNs: memory:// (in-process worker
thread) vs redis://local vs kafka://local (one ``python -m pipelines.worker`` process each).

    python analysis/bench_pipeline_brokers.py [--out DIR] [--users 2] [--seconds 20] [--size 1MP]
        [--brokers memory,redis,kafka] [--fetch-max-wait-ms 10]

Each broker is one ``loadtest.sweep`` run (real gateway, Locust, local redis-server / tansu
started and stopped by PID) in DIR/<broker>; then a table: throughput, p50, the broker's share of
e2e, and the CPU (cores) of the gateway, the worker process, the broker server and Locust; and
``analysis/compare.py`` over the runs (DIR/compare.md).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

def broker_args(name: str, fetch_max_wait_ms: int = 10) -> list[str]:
    """The sweep's broker flags for ``name``; Kafka consumers wait at most ``fetch_max_wait_ms``
    for a fetch to fill (kafka-python's default in the adapter is 100)."""
    return {
        "memory": ["--broker", "memory://", "--workers", "1"],
        "redis": ["--broker", "redis://local", "--worker-processes", "1"],
        "kafka": ["--broker", "kafka://local?session_timeout_ms=6000&heartbeat_interval_ms=1000"
                              f"&fetch_max_wait_ms={int(fetch_max_wait_ms)}",
                  "--worker-processes", "1"],
    }[name]


def run_one(name: str, out: Path, users: int, seconds: float, size: str,
            fetch_max_wait_ms: int = 10) -> Path:
    run = out / name
    cmd = [sys.executable, "-m", "loadtest.sweep", "--out", str(run), "--overwrite",
           "--users", str(users), "--step-seconds", f"{seconds:g}",
           "--warmup-seconds", f"{min(5.0, seconds / 4):g}", "--sizes", size, "--min-requests", "10",
           "--no-report", "--intra-op-threads", "1", *broker_args(name, fetch_max_wait_ms)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{name}: sweep failed ({r.returncode}):\n{r.stderr[-3000:]}")
    print(f"  {name}: done in {time.monotonic() - t0:.0f} s ({run})", file=sys.stderr)
    return run


def row_for(name: str, run: Path) -> dict:
    from analysis.compare import summarize_run
    from overhead.contract.runconfig import read_config

    s = summarize_run(run, name)
    m = s.main.iloc[-1]
    cfg = read_config(run)
    gen = (cfg.get("load_generator_cpu") or [{}])[-1]
    proc = {k: v[-1]["cores"] for k, v in (cfg.get("process_cpu") or {}).items() if v}
    worker = sum(v for k, v in proc.items() if k.startswith("worker") and v is not None)
    server = sum(v for k, v in proc.items() if k.startswith("broker") and v is not None)
    return {"broker": name, "requests": int(m["requests"]), "req/s": m["throughput_rps"],
            "p50 ms": m["e2e_p50_ms"], "p99 ms": m["e2e_p99_ms"],
            "broker ms": m.get("broker_mean_ms", float("nan")),
            "broker %": 100 * m.get("broker_share", float("nan")),
            "gateway cores": gen.get("gateway_cores"),
            "worker cores": worker if name != "memory" else None,
            "server cores": server if name != "memory" else None,
            "locust cores": gen.get("locust_cores")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="analysis/bench_pipeline_brokers.py",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_pipeline_brokers"))
    ap.add_argument("--users", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", default="1MP")
    ap.add_argument("--brokers", default="memory,redis,kafka")
    ap.add_argument("--fetch-max-wait-ms", type=int, default=10,
                    help="Kafka consumers' fetch_max_wait_ms (docs/brokers.md has rows for 10 and 100)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    names = [b.strip() for b in args.brokers.split(",") if b.strip()]
    unknown = set(names) - {"memory", "redis", "kafka"}
    if unknown:
        ap.error(f"unknown broker(s) {sorted(unknown)}: choose from memory, redis, kafka")
    runs = {n: run_one(n, out, args.users, args.seconds, args.size, args.fetch_max_wait_ms)
            for n in names}
    rows = [row_for(n, r) for n, r in runs.items()]

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.users} users, {args.seconds:g} s, {args.size}: one classifier worker")
    cols = list(rows[0])
    for c in cols:
        t.add_column(c, justify="left" if c == "broker" else "right",
                     style="bold yellow" if c == "broker %" else None)

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    for r in rows:
        t.add_row(*(fmt(r[c]) for c in cols))
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(t)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    (out / "bench.md").write_text("\n".join(md) + "\n")
    from analysis.compare import compare

    compare([runs[n] for n in names], out / "compare.md", names, quiet=True)
    print(f"bench: {out / 'bench.md'}, {out / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
