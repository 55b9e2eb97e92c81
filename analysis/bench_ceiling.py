"""The pipeline against its inference-only ceiling, per size class, side by side in one run.

    python analysis/bench_ceiling.py [--sizes 0.1MP,1MP,8MP] [--users 2,4,8,16] [--step-seconds 10]
        [--warmup-seconds 2] [--ceiling-seconds 3] [--out DIR] [gateway options, e.g. --k 4]

For each size class one closed-loop sweep (``python -m loadtest.sweep --sizes S``): the sweep
starts the gateway (ONNX Runtime threads pinned: ``--intra-op-threads 1`` unless given;
``--max-queued`` twice the most users, so no user is turned away), measures
the inference-only ceiling with the gateway's own models and settings (``loadtest/ceiling.py``,
RUN_DIR/ceiling.json), then steps the users up (``--users``); the pipeline's figure is the step
with the highest goodput (more users than the gateway's request threads saturate it; the table
says whether throughput was still rising at the last step). 8 MP runs with the gateway's default
``--reduced auto`` (DCT-reduced JPEG decode). Prints per size class the ratio against the targets
(>= 0.85 at 1 MP, >= 0.7 at 8 MP on 2 cores), each process's CPU (psutil, cores per step), and the
CPU per request outside inference per component: decode, resize, normalize, postprocess and
crop (de)serialization as the ceiling phase measured them alone (process CPU time, so other
processes on the cores do not inflate them), and the rest of the pipeline processes' CPU per
request after inference and those ("HTTP, broker, Python, hand-offs"); next to it the spans' wall
time per component (crops summed; includes waiting for a busy core and the broker's queueing).
On shared cores the req/s ratio moves with what else runs (the scheduler shares CPU by runnable
thread); the CPU efficiency (inference CPU / pipeline CPU per request) is the steadier figure.
Ends with one line per size class::

    ceiling ratio 1MP: 0.87 (pipeline 34.8 req/s, ceiling 40.0 req/s)

A benchmark: it measures and prints, it asserts nothing. On a shared machine quote ratios from
one run and the CPU figures next to them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from analysis.report.ceiling import ceiling_ratio, data_cpu_ms
from analysis.report.cli import report as breakdown_report

TARGETS = {"1MP": 0.85, "8MP": 0.7}
SPAN_COMPONENTS = {   # printed name -> (stage, component) spans summed per request
    "decode": [("detect", "decode")],
    "resize": [("detect", "resize"), ("classify", "resize")],
    "normalize": [("detect", "normalize"), ("classify", "normalize")],
    "postprocess": [("detect", "postprocess")],
    "serialize (crops)": [("detect", "serialize"), ("classify", "serialize")],
    "HTTP body read": [("gateway", "transfer")],
    "broker wait+transit": [("classify", "broker")],
}


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="analysis/bench_ceiling.py",
                                 description=__doc__.split("\n\n")[0],
                                 epilog="Other options go to the sweep (and so to the gateway).")
    ap.add_argument("--sizes", default="0.1MP,1MP,8MP")
    ap.add_argument("--users", default="2,4,8,16",
                    help="closed-loop steps of each sweep (the gateway's --max-queued is set to "
                         "twice the largest unless given)")
    ap.add_argument("--step-seconds", type=float, default=10.0)
    ap.add_argument("--warmup-seconds", type=float, default=2.0)
    ap.add_argument("--ceiling-seconds", type=float, default=3.0)
    ap.add_argument("--ceiling-warmup-seconds", type=float, default=0.5)
    ap.add_argument("--out", default=None, help="directory for the runs (default: a temp dir)")
    return ap.parse_known_args(argv)


def run_size(size: str, out: Path, args, extra: list[str]) -> Path:
    run_dir = out / size
    if "--intra-op-threads" not in " ".join(extra):
        extra = [*extra, "--intra-op-threads", "1"]
    if "--max-queued" not in " ".join(extra):   # every user admitted (default: 2 x --threads)
        most = max(int(u.split(":")[0]) for u in args.users.split(","))
        extra = [*extra, "--max-queued", str(2 * most)]
    cmd = [sys.executable, "-m", "loadtest.sweep", "--out", str(run_dir), "--overwrite",
           "--sizes", size, "--users", args.users, "--step-seconds", str(args.step_seconds),
           "--warmup-seconds", str(args.warmup_seconds), "--min-requests", "1",
           "--ceiling-seconds", str(args.ceiling_seconds),
           "--ceiling-warmup-seconds", str(args.ceiling_warmup_seconds), "--no-report", *extra]
    print(f"\n== {size}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise SystemExit(f"the sweep for {size} failed (exit {proc.returncode}); see {run_dir}/logs")
    return run_dir


def span_ms_per_request(spans: pd.DataFrame, ids) -> dict[str, float]:
    sel = spans[spans["request_id"].isin(set(ids))]
    dur = (sel["end_ns"] - sel["start_ns"]) / 1e6
    total = dur.groupby([sel["stage"], sel["component"]]).sum()
    n = max(1, len(set(ids)))
    return {name: sum(float(total.get(key, 0.0)) for key in keys) / n
            for name, keys in SPAN_COMPONENTS.items()}


def analyse(size: str, run_dir: Path) -> dict:
    rep = breakdown_report(run_dir, quiet=True)
    run, s = rep.run, rep.summary
    cr = ceiling_ratio(run.ceiling, s)
    if cr is None:
        return {"size": size, "ratio": None, "reason": (run.ceiling.reason if run.ceiling else
                                                        "no ceiling.json")}
    step = s.steps.set_index("step").loc[cr.step]
    steps = [(int(r.users), float(r.goodput_rps)) for r in s.steps.itertuples()]
    req = run.requests
    in_step = req[(req["recv_ns"] >= run.steps.set_index("step").loc[cr.step, "measure_start_ns"])
                  & (req["recv_ns"] < run.steps.set_index("step").loc[cr.step, "end_ns"])
                  & (req["status"] == 200)]
    spans = span_ms_per_request(run.spans, in_step["request_id"])
    cpu = {}
    for row in run.generator_cpu:
        if int(row["step"]) == cr.step:
            cpu = {"gateway": row.get("gateway_cores"), "locust": row.get("locust_cores")}
    for name, rows in (run.config.get("process_cpu") or {}).items():
        cpu.update({name: r["cores"] for r in rows if int(r["step"]) == cr.step})
    mix = run.ceiling.mix(size)
    inf_ms = mix.cpu_ms_per_request if mix else None
    pipe_cores = sum(v or 0 for k, v in cpu.items() if k != "locust")
    pipe_ms = pipe_cores / cr.pipeline_rps * 1e3 if cr.pipeline_rps else None
    data = data_cpu_ms(run.ceiling, cr)
    rest = (pipe_ms - inf_ms - sum(data.values())
            if pipe_ms is not None and inf_ms is not None else None)
    return {"size": size, "ratio": cr.ratio, "pipeline": cr.pipeline_rps, "ceiling": cr.ceiling_rps,
            "users": int(step["users"]), "steps": steps, "spans": spans, "cpu": cpu,
            "pipeline_cpu_ms": pipe_ms, "inference_cpu_ms": inf_ms, "rest_ms": rest, "data": data,
            "k": mix.k if mix else None, "stages": run.ceiling.stages, "run_dir": str(run_dir)}


def fmt(x, spec=".1f") -> str:
    return "–" if x is None else format(x, spec)


def print_results(results: list[dict]) -> None:
    print("\n== inference-only ceiling vs the pipeline (one run; pinned: --intra-op-threads 1)")
    for r in results:
        if r["ratio"] is None:
            print(f"{r['size']}: ceiling not measured ({r['reason']})")
            continue
        target = TARGETS.get(r["size"])
        verdict = ("" if target is None else
                   f"   target >= {target:.2f}: {'ok' if r['ratio'] >= target else 'NOT MET'}")
        print(f"\n{r['size']}: ratio {r['ratio']:.2f}{verdict}   (k = {fmt(r['k'], '.2f')}; "
              f"{r['run_dir']})")
        print("  ceiling: " + "; ".join(f"{st.stage} alone {st.rate:.1f} {st.unit}"
                                        for st in r["stages"]) + f"; mix {r['ceiling']:.1f} req/s")
        rising = len(r["steps"]) > 1 and r["steps"][-1][1] > max(g for _, g in r["steps"][:-1]) * 1.05
        print("  pipeline goodput by users: " + ", ".join(f"{u}: {g:.1f}" for u, g in r["steps"])
              + (" (still rising at the last step: add users)" if rising else " (saturated)"))
        print("  process CPU at the best step, cores: " +
              ", ".join(f"{k} {fmt(v, '.2f')}" for k, v in r["cpu"].items()))
        eff = (r["inference_cpu_ms"] / r["pipeline_cpu_ms"]
               if r["inference_cpu_ms"] and r["pipeline_cpu_ms"] else None)
        print(f"  CPU per request, ms: pipeline processes {fmt(r['pipeline_cpu_ms'])}, inference "
              f"(ceiling mix) {fmt(r['inference_cpu_ms'])}; CPU efficiency (inference / pipeline, "
              f"steadier than req/s on shared cores) {fmt(eff, '.2f')}")
        print("  CPU per request outside inference, ms: " +
              ", ".join(f"{k} {v:.2f}" for k, v in r["data"].items()) +
              f" (each measured alone, process CPU); HTTP, broker, Python, hand-offs (the rest of "
              f"the pipeline's CPU) {fmt(r['rest_ms'])}"
              + (" (negative: the figures above come from different moments on shared cores)"
                 if (r["rest_ms"] or 0) < 0 else ""))
        print("  span wall time per request, ms (crops summed; includes waiting for a core): " +
              ", ".join(f"{k} {v:.2f}" for k, v in r["spans"].items()))
    print()
    for r in results:
        if r["ratio"] is not None:
            print(f"ceiling ratio {r['size']}: {r['ratio']:.2f} (pipeline {r['pipeline']:.1f} "
                  f"req/s, ceiling {r['ceiling']:.1f} req/s)")


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-ceiling-"))
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    load0 = os.getloadavg()
    results = [analyse(size, run_size(size, out, args, extra)) for size in sizes]
    print(f"\nmachine: {os.cpu_count()} cores; load average (1 min) {load0[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end (other processes share these cores)")
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
