"""Load-generator capacity: the real locustfile against a NO-OP endpoint.

    python analysis/bench_generator.py [--users 8,32] [--seconds 10] [--warmup 2] [--payload-bytes 1024]

The server started here is a no-op target for measuring the LOAD GENERATOR, not the gateway: a raw
ASGI app under uvicorn (uvloop + httptools when installed, one process, access log off) that drains
the body and answers 200 with the smallest body the locustfile accepts (``{"request_id": <the
X-Request-ID sent>, "k": 0, "detections": []}`` -- the locustfile fails a 200 whose request_id does
not match). No model, no decode, no spans.

For each user count the real ``loadtest/locustfile.py`` runs headless (FastHttpUser, closed loop,
one stepped-shape step) posting a tiny corpus (one file of ``--payload-bytes`` bytes, size class
``tiny``, via a manifest in a temporary run directory). Printed per step, over the measured window
(after warm-up): requests/s (from the exact records, status 200), Locust process CPU (psutil,
cores), requests/s per core of Locust CPU, and the no-op server's CPU (cores) so you can see which
side was the limit (~1.0 core = that process is saturated; both are single-threaded here).

Nothing is pinned (no CPU affinity, no priorities): the machine's cores are shared, so the host,
load average, affinity and versions are printed with the numbers. Printed, not asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from deploy.processes import ManagedProcess, free_port

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"


# --- the no-op target (runs in its own process: `bench_generator.py --serve PORT`) -------------
async def noop_app(scope, receive, send):
    """No-op target for measuring the load generator (not the gateway)."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the upload
        msg = await receive()
        more = msg.get("more_body", False)
    rid = b""
    for k, v in scope["headers"]:
        if k == b"x-request-id":
            rid = v
            break
    body = b'{"request_id":"' + rid + b'","k":0,"detections":[]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve(port: int) -> None:
    import uvicorn
    uvicorn.run(noop_app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="on", workers=1)


# --- the harness --------------------------------------------------------------------------------
def noop_ready(port: int) -> bool:
    """The no-op server answers a POST with the request id it was sent."""
    import urllib.request

    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/infer", data=b"x",
                                     headers={"X-Request-ID": "ping"})
        with urllib.request.urlopen(req, timeout=1) as r:
            return r.status == 200 and b'"ping"' in r.read()
    except OSError:
        return False


def cpu_s(p) -> float:
    import psutil
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return float("nan")


def cpu_between(samples, key: str, t0: int, t1: int) -> float:
    """Cores used by samples[*][key] between t0 and t1 (ns), nearest samples inside the window."""
    inside = [s for s in samples if t0 <= s["t"] <= t1 and s[key] == s[key]]
    if len(inside) < 2:
        return float("nan")
    a, b = inside[0], inside[-1]
    return (b[key] - a[key]) / max((b["t"] - a["t"]) / 1e9, 1e-9)


def run_step(host_port: int, server_pid: int, users: int, seconds: float, warmup: float,
             manifest: Path, workdir: Path) -> dict:
    import pandas as pd
    import psutil

    run_dir = workdir / f"u{users}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "--host", f"http://127.0.0.1:{host_port}", "--only-summary", "--loglevel", "WARNING",
           "--overhead-run-dir", str(run_dir), "--overhead-manifest", str(manifest),
           "--overhead-steps", f"{users}:{seconds:g}", "--overhead-step-seconds", f"{seconds:g}",
           "--overhead-warmup-seconds", f"{warmup:g}"]
    proc = ManagedProcess("locust", cmd, run_dir / "locust.log").spawn()
    lp, sp = psutil.Process(proc.pid), psutil.Process(server_pid)
    samples = []
    deadline = time.monotonic() + seconds + 60
    while proc.alive() and time.monotonic() < deadline:
        samples.append(dict(t=time.time_ns(), locust=cpu_s(lp), server=cpu_s(sp)))
        time.sleep(0.25)
    locust_pid = proc.pid
    out = dict(users=users, rc=proc.stop(), locust_pid=locust_pid, server_affinity=None)
    try:
        out["server_affinity"] = sp.cpu_affinity()
    except (psutil.Error, AttributeError):
        pass
    req_path, steps_path = run_dir / "requests.parquet", run_dir / "steps.parquet"
    if not (req_path.exists() and steps_path.exists()):
        out["error"] = f"no records (see {run_dir / 'locust.log'})"
        return out
    req, steps = pd.read_parquet(req_path), pd.read_parquet(steps_path)
    st = steps.iloc[0]
    t0, t1 = int(st["measure_start_ns"]), int(st["end_ns"])
    win = (req["recv_ns"] >= t0) & (req["recv_ns"] < t1)
    ok = win & (req["status"] == 200) & req["error"].isna()
    w = (t1 - t0) / 1e9
    rps = int(ok.sum()) / w
    e2e = (req.loc[ok, "recv_ns"] - req.loc[ok, "send_ns"]) / 1e6
    lc, sc = cpu_between(samples, "locust", t0, t1), cpu_between(samples, "server", t0, t1)
    out.update(window_s=round(w, 2), requests=int(ok.sum()), failed=int((win & ~ok).sum()),
               rps=rps, locust_cpu=lc, server_cpu=sc, rps_per_locust_core=rps / lc if lc > 0 else float("nan"),
               p50_ms=float(e2e.quantile(0.5)) if len(e2e) else float("nan"),
               p99_ms=float(e2e.quantile(0.99)) if len(e2e) else float("nan"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="8,32", help="closed-loop user counts, one step each")
    ap.add_argument("--seconds", type=float, default=10.0, help="step length incl. warm-up")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--payload-bytes", type=int, default=1024, help="size of the one posted file")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0

    import locust
    import uvicorn

    users = [int(u) for u in args.users.split(",") if u.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-generator-"))
    payload = work / "tiny.jpg"
    payload.write_bytes(b"\xff\xd8" + os.urandom(max(args.payload_bytes - 4, 0)) + b"\xff\xd9")
    manifest = work / "corpus.json"
    manifest.write_text(json.dumps([{"name": "tiny", "size_class": "tiny", "path": str(payload)}]))

    port = free_port()
    server = ManagedProcess("noop-server", [sys.executable, str(Path(__file__).resolve()), "--serve",
                                            str(port)], work / "server.log",
                            ready=lambda: noop_ready(port))
    env = dict(python=platform.python_version(), locust=locust.__version__, uvicorn=uvicorn.__version__,
               loop=_has("uvloop"), http=_has("httptools"), cpus=os.cpu_count(),
               affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
               loadavg_before=[round(x, 2) for x in os.getloadavg()], payload_bytes=args.payload_bytes,
               seconds=args.seconds, warmup=args.warmup, workdir=str(work))
    results = []
    with server:
        env["server_pid"] = server.pid
        for u in users:
            results.append(run_step(port, server.pid, u, args.seconds, args.warmup, manifest, work))
    env["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    print("Load-generator capacity: real locustfile (FastHttpUser, closed loop) -> NO-OP server "
          "(uvicorn raw ASGI; measures the generator, not the gateway)")
    print("  " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(f"  {'users':>5} {'req/s':>8} {'locust CPU':>10} {'req/s/core':>10} {'server CPU':>10} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'ok':>7} {'fail':>5}  limit")
    for r in results:
        if "error" in r:
            print(f"  {r['users']:>5} {r['error']} (rc {r['rc']})")
            continue
        limit = ("locust" if r["locust_cpu"] >= 0.85 else "server" if r["server_cpu"] >= 0.85
                 else "neither >= 0.85 core: CPUs shared (see loadavg)")
        print(f"  {r['users']:>5} {r['rps']:>8.0f} {r['locust_cpu']:>10.2f} {r['rps_per_locust_core']:>10.0f} "
              f"{r['server_cpu']:>10.2f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['requests']:>7} "
              f"{r['failed']:>5}  {limit}")
    print("  CPU in cores over the measured window (1.0 = one core busy); Locust and the no-op server "
          "are one process each, so ~1.0 is that side's ceiling.")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "results": results}, indent=1, default=str))
    return 0


def _has(mod: str) -> str:
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "yes")
    except ImportError:
        return "no"


if __name__ == "__main__":
    sys.exit(main())
