"""Scale-out: N = 1..4 classifier worker processes behind a real broker, at one fixed load.

    python -m analysis.studies.scale_workers [--smoke] [--out RUN_DIR] [--workers 1,2,3,4]
        [--broker redis|kafka] [--classifier resnet50] [--k 4] [--overload 2.5 | --rate R]
        [--step-seconds 20] [--warmup-seconds 5] [--sizes 0.1MP]

The paper credits the broker with decoupling two DNNs that produce at different rates (one image
-> k crops). This study holds the load fixed and adds classifier workers: for each N the real
stack (``loadtest.sweep``: redis-server or tansu started here, the gateway with the detector, N
``python -m pipelines.worker`` processes, one Locust process sending an open-loop Poisson stream)
runs once into ``RUN_DIR/n<N>/`` (a complete run directory with its own breakdown report), and one
row per N is taken from it: throughput, the critical path's ``classify-broker`` (the broker's own
transit) and ``classify-backlog`` (waiting for a busy worker), the crops stream's depth sampled
from the gateway, e2e mean/p99 (open loop: from the intended send time), the detector's
inference time (the producer side: it should not move with N), and the CPU of the workers, the
gateway and Locust over the measured window.

The load is chosen so that N=1 is classifier-bound: ONE worker's capacity is calibrated first
(the classifier's per-crop time, one ORT thread, in this process: ``1 / (k * t_crop)`` requests/s)
and the offered rate is ``--overload`` times that (default 2.5; ``--rate`` fixes it instead): more
than two workers' worth, so on 2 cores (shared with the gateway, the broker, Locust and whatever
else runs) the table shows where added workers stop adding throughput. At N=1 the wait grows by
(overload - 1) x the time elapsed: 2.5 over a 25 s step keeps it under Locust's 60 s client
timeout with room for a worker slower than calibrated. A
heavy classifier (ResNet-50, ~30-80 ms a crop here) with k=4 crops makes the classifier's work
per request ~10x the gateway's (0.1 MP decode + SSD detector), so the classifier is the stage to
scale. The gateway gets many request threads and a long result timeout so the queue forms in the
broker, between the DNNs, not at the gateway's door.

``--smoke`` (CI): N=1,2, a tiny classifier plus the worker's calibration sleep per crop (a test
knob: the classifier is sleep-bound, so two workers really have twice the capacity even on a busy
2-core machine), overload 1.5: N=2 must drain what N=1 cannot; the study fails (exit 1) unless
the backlog at N=1 is well above that at N=2, the crops stream is deeper, and throughput rises.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from analysis.studies.report import Study

GATEWAY_ARGS = ["--threads", "256", "--max-queued", "1024", "--result-timeout-s", "300"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--workers", default=None, help="worker counts (default 1,2,3,4; smoke 1,2)")
    p.add_argument("--broker", choices=("redis", "kafka"), default="redis",
                   help="a local redis-server or tansu, started per N by the sweep")
    p.add_argument("--classifier", default=None, help="default resnet50 (smoke custom_cnn)")
    p.add_argument("--k", type=int, default=None, help="crops per image (default 4; smoke 2)")
    p.add_argument("--crop-sleep-ms", type=float, default=None,
                   help="worker's calibration sleep per crop (test knob; default 0, smoke 100)")
    p.add_argument("--overload", type=float, default=None,
                   help="offered rate / one worker's calibrated capacity (default 2.5; smoke 1.5)")
    p.add_argument("--rate", type=float, default=None, help="offered requests/s (skips calibration)")
    p.add_argument("--step-seconds", type=float, default=None, help="default 20 (smoke 14)")
    p.add_argument("--warmup-seconds", type=float, default=None, help="default 5 (smoke 4)")
    p.add_argument("--sizes", default="0.1MP", help="image size classes sent")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival process")
    p.add_argument("--models-dir", default=None)
    a = p.parse_args(argv)
    smoke = a.smoke
    a.workers = [int(v) for v in (a.workers or ("1,2" if smoke else "1,2,3,4")).split(",")]
    a.classifier = a.classifier or ("custom_cnn" if smoke else "resnet50")
    a.k = a.k or (2 if smoke else 4)
    a.crop_sleep_ms = a.crop_sleep_ms if a.crop_sleep_ms is not None else (100.0 if smoke else 0.0)
    a.overload = a.overload or (1.5 if smoke else 2.5)
    a.step_seconds = a.step_seconds or (14.0 if smoke else 20.0)
    a.warmup_seconds = a.warmup_seconds if a.warmup_seconds is not None else (4.0 if smoke else 5.0)
    return a


def crop_ms(classifier: str, models_dir: str | None, runs: int = 30) -> tuple[float, float]:
    """(median wall ms, mean CPU ms) of one single-crop classifier call (embedded ORT, one
    thread) in this process. Wall sets the rate: it is what a worker gets now, on a machine that
    may be shared; CPU above wall's share shows how much of the wall was waiting for a core."""
    import numpy as np

    from pipelines.inference import make_backend
    from pipelines.models import ensure_model

    info = ensure_model(classifier, models_dir)
    b = make_backend("embedded", info, intra_op_threads=1)
    try:
        h, w = info.input_hw
        x = np.random.default_rng(0).uniform(0, 1, (h, w, 3)).astype(np.float32)
        for _ in range(3):
            b.infer(x)
        times, cpu0 = [], time.process_time()
        for _ in range(runs):
            t0 = time.perf_counter()
            b.infer(x)
            times.append((time.perf_counter() - t0) * 1e3)
        cpu = (time.process_time() - cpu0) * 1e3 / runs
    finally:
        b.close()
    return float(np.median(times)), cpu


def sweep_argv(a, n: int, rate: float, out: Path) -> list[str]:
    """The ``loadtest.sweep`` command of one N (the drain covers N=1's backlog: about
    (overload - 1) x the step to clear, with 30% to spare; Locust stops waiting once all is in)."""
    drain = (a.warmup_seconds + a.step_seconds) * max(1.0, a.overload - 1.0) * 1.3 + 10.0
    argv = [sys.executable, "-m", "loadtest.sweep", "--out", str(out), "--overwrite", "--no-report",
            "--broker", f"{a.broker}://local", "--worker-processes", str(n),
            "--arrivals", "poisson", "--rates", f"{rate:.3f}", "--seed", str(a.seed),
            "--step-seconds", str(a.step_seconds), "--warmup-seconds", str(a.warmup_seconds),
            "--drain-seconds", str(drain), "--sizes", a.sizes,
            "--classifier", a.classifier, "--k", str(a.k),
            "--calibration-crop-sleep-ms", str(a.crop_sleep_ms), *GATEWAY_ARGS]
    return argv + (["--models-dir", a.models_dir] if a.models_dir else [])


def run_one(a, n: int, rate: float, out: Path) -> Path:
    log = out.parent / f"sweep-n{n}.log"
    with open(log, "w") as f:
        code = subprocess.run(sweep_argv(a, n, rate, out), stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text().splitlines()[-20:]
        raise RuntimeError(f"sweep with {n} worker(s) failed (exit {code}); {log}:\n" + "\n".join(tail))
    return out


def _cores(cfg: dict, prefix: str) -> float:
    """Cores of the processes named ``prefix*`` over the (single) measured step, summed."""
    return sum(rows[0]["cores"] for name, rows in (cfg.get("process_cpu") or {}).items()
               if name.startswith(prefix) and rows and rows[0].get("cores") is not None)


def depth_in_window(run_dir: Path, steps) -> tuple[float, float]:
    """Mean and max depth of the crops stream over the measured window."""
    import pandas as pd

    path = run_dir / "broker_depth.parquet"
    if not path.exists() or not len(steps):
        return float("nan"), float("nan")
    d = pd.read_parquet(path)
    s = steps.iloc[0]
    d = d[(d["topic"] == "crops") & (d["time_ns"] >= s["measure_start_ns"]) & (d["time_ns"] < s["end_ns"])
          & (d["depth"] >= 0)]
    return (float(d["depth"].mean()), float(d["depth"].max())) if len(d) else (float("nan"), float("nan"))


def sent_rate(requests, steps) -> float:
    """Requests/s the open loop scheduled inside the measured window (its intended send times):
    the offered rate as realized by this run's Poisson draw (the same seed for every N)."""
    if not len(steps) or not len(requests):
        return float("nan")
    s = steps.iloc[0]
    t = requests["intended_ns"].fillna(requests["send_ns"]) if "intended_ns" in requests \
        else requests["send_ns"]
    n = int(((t >= s["measure_start_ns"]) & (t < s["end_ns"])).sum())
    return n / max(1e-9, (s["end_ns"] - s["measure_start_ns"]) / 1e9)


def row(n: int, rate: float, run_dir: Path) -> dict:
    """One N: the numbers the table shows, from the run directory's own breakdown report."""
    from analysis.report.cli import report

    rep = report(run_dir, quiet=True)
    st, stages, main = rep.summary.steps, rep.summary.stages, rep.summary.main
    cfg = json.loads((run_dir / "config.json").read_text())
    gen = (cfg.get("load_generator_cpu") or [{}])[0]
    depth_mean, depth_max = depth_in_window(run_dir, rep.run.steps)

    def stage(key):
        col = f"{key}_mean_ms"
        return float(stages[col].mean()) if col in stages and len(stages) else 0.0

    ok = int(st["requests"].sum())
    return {"workers": n, "offered_rps": rate, "sent_rps": sent_rate(rep.run.requests, rep.run.steps),
            "requests": ok, "errors": int(st["errors"].sum()),
            "throughput_rps": float(st["throughput_rps"].iloc[0]),
            "e2e_mean_ms": float(st["e2e_mean_ms"].iloc[0]),
            "e2e_p99_ms": float(main["e2e_p99_ms"].max()),
            "detect_inference_ms": stage("detect-inference"),
            "classify_inference_ms": stage("classify-inference"),
            "classify_broker_ms": stage("classify-broker"),
            "classify_backlog_ms": stage("classify-backlog"),
            "crops_depth_mean": depth_mean, "crops_depth_max": depth_max,
            "workers_cores": _cores(cfg, "worker-"),
            "gateway_cores": gen.get("gateway_cores"), "locust_cores": gen.get("locust_cores"),
            "broker_cores": _cores(cfg, "broker-")}


def plateau(df, tol: float = 0.10) -> int:
    """The smallest N after which throughput gains less than ``tol`` (relative) per added worker."""
    ws, tp = list(df["workers"]), list(df["throughput_rps"])
    for i in range(len(ws) - 1):
        if all(tp[j] < tp[i] * (1 + tol) for j in range(i + 1, len(ws))):
            return ws[i]
    return ws[-1]


def shape_failures(df) -> list[str]:
    """The smoke's checks on the result's shape (N=1 vs the largest N); empty when it holds."""
    lo, hi = df.iloc[0], df.iloc[-1]
    n_lo, n_hi = int(lo.workers), int(hi.workers)
    out = []
    if (df["requests"] <= 0).any():
        out.append("some N completed no request")
    if not lo["classify_backlog_ms"] > max(100.0, 2 * hi["classify_backlog_ms"]):
        out.append(f"backlog at N={n_lo} ({lo.classify_backlog_ms:.0f} ms) is not well above "
                   f"N={n_hi} ({hi.classify_backlog_ms:.0f} ms)")
    if not lo["crops_depth_mean"] > hi["crops_depth_mean"]:
        out.append(f"crops stream not deeper at N={n_lo} ({lo.crops_depth_mean:.1f}) than at "
                   f"N={n_hi} ({hi.crops_depth_mean:.1f})")
    if not hi["throughput_rps"] >= 1.1 * lo["throughput_rps"]:
        out.append(f"throughput did not rise: {lo.throughput_rps:.2f} req/s at N={n_lo}, "
                   f"{hi.throughput_rps:.2f} at N={n_hi}")
    return out


def plots(study: Study, df) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax1.plot(df.workers, df.throughput_rps, "o-", label="throughput")
    ax1.axhline(df.offered_rps.iloc[0], ls="--", c="grey", label="offered")
    ax1.plot(df.workers, df.sent_rps, ":", c="grey", label="sent in window")
    ax1.set(xlabel="classifier workers N", ylabel="requests/s", title="throughput")
    ax1.legend()
    ax2.plot(df.workers, df.classify_backlog_ms, "o-", label="classify-backlog")
    ax2.plot(df.workers, df.classify_broker_ms, "s-", label="classify-broker")
    ax2.plot(df.workers, df.e2e_mean_ms, "^-", label="e2e mean")
    ax2.set(xlabel="classifier workers N", ylabel="ms (critical path)", yscale="symlog",
            title="where requests wait")
    ax2.legend()
    ax3.plot(df.workers, df.workers_cores, "o-", label="workers")
    ax3.plot(df.workers, df.gateway_cores, "s-", label="gateway")
    ax3.axhline(study.extra["cpu_count"], ls="--", c="grey", label="cores")
    ax3.set(xlabel="classifier workers N", ylabel="cores", title="CPU")
    ax3.legend()
    for ax in (ax1, ax2, ax3):
        ax.set_xticks(list(df.workers))
    fig.tight_layout()
    study.plot(fig, "scale_workers", "throughput, waiting and CPU per N")


def explain(study: Study, a, t_crop: float | None, rate: float, cpu_ms: float | None = None) -> None:
    cap = 1e3 / (a.k * t_crop) if t_crop else None
    how = (f"calibrated: one {a.classifier} crop takes {t_crop:.1f} ms (median wall, one ORT thread"
           f"{'; ' + format(cpu_ms, '.1f') + ' ms of CPU' if cpu_ms else ''}, "
           f"{'+ ' + format(a.crop_sleep_ms, 'g') + ' ms calibration sleep, ' if a.crop_sleep_ms else ''}"
           f"this process), so one worker serves about {cap:.2f} requests/s at k={a.k}; offered "
           f"{a.overload:g} x that = {rate:.2f} requests/s" if t_crop else f"--rate {rate:g} requests/s")
    study.text(f"## The load\n\nOpen-loop Poisson arrivals at a fixed rate ({how}); {a.sizes} images, "
               f"k={a.k} crops each, classifier `{a.classifier}` (1 ORT thread per worker), detector "
               f"`ssd_mobilenetv2` in the gateway, broker `{a.broker}` (started locally per N). Each N "
               f"ran {a.step_seconds:g} s (first {a.warmup_seconds:g} s excluded). The classifier's "
               f"work per request is k crops, the detector's one image: N=1 is classifier-bound by "
               f"construction. Gateway options `{' '.join(GATEWAY_ARGS)}` let requests wait for "
               f"their crops instead of being turned away, so the queue forms in the broker."
               + (f"\n\nThe calibration's crop took {t_crop - a.crop_sleep_ms:.0f} ms of wall time for "
                  f"{cpu_ms:.0f} ms of CPU: it waited for a core {1 - cpu_ms / (t_crop - a.crop_sleep_ms):.0%} "
                  f"of the time (others use this machine), so the rate follows the CPU there was "
                  f"then; a quiet machine gives one worker more." if cpu_ms and t_crop
                  and t_crop - a.crop_sleep_ms > 1.3 * cpu_ms else "")
               + ("\n\n**Smoke mode: the workers sleep per crop (a calibration knob), so their "
                  "capacity is known and does not depend on the machine's cores.**"
                  if a.crop_sleep_ms else ""))


def why_it_stops(df, stop: int, sleep_bound: bool) -> str:
    """Why throughput stops growing at ``stop`` workers: the load is served, or the CPU is not
    there (the numbers for both, whichever it is)."""
    import os

    at, last = df[df.workers == stop].iloc[0], df.iloc[-1]
    served = at.throughput_rps / at.sent_rps if at.sent_rps > 0 else float("nan")
    used = at.workers_cores + (at.gateway_cores or 0) + (at.locust_cores or 0) + at.broker_cores
    head = (f"at N={stop}, {at.throughput_rps:.2f} of the {at.sent_rps:.2f} req/s sent were served "
            f"({served:.0%}); ")
    if sleep_bound:
        return head + "the workers sleep per crop (not CPU-bound), so the rest is the load itself"
    verdict = ("the load is (nearly) served, so further workers have little left to take; "
               if served >= 0.9 else "the rest waits for CPU; ")
    return (head + verdict +
            f"workers' CPU per N {', '.join(f'{c:.2f}' for c in df.workers_cores)} cores, the whole "
            f"pipeline {used:.2f} of this machine's {os.cpu_count()} at N={stop} (the rest went to "
            f"other work: see the load average above; on a shared machine more runnable workers "
            f"can also win a larger share of the CPU from other processes). A CPU-bound classifier "
            f"worker needs a core of its own: on {os.cpu_count()} cores at most "
            f"{os.cpu_count()} workers add throughput, fewer when the gateway and other processes "
            f"take CPU; beyond that N only splits the same CPU (a crop's classify-inference "
            f"{at.classify_inference_ms:.0f} ms at N={stop}, {last.classify_inference_ms:.0f} ms at "
            f"N={int(last.workers)})")


def failed_note(df) -> str:
    """Failed requests (e.g. Locust's 60 s client timeout when the backlog outgrew it) bias the
    row: throughput and e2e count the successes only."""
    bad = df[df.errors > 0]
    if not len(bad):
        return ""
    cells = ", ".join(f"{int(r.errors)} at N={int(r.workers)}" for r in bad.itertuples())
    return (f"- **Failed requests: {cells}.** Throughput and e2e count successes only; when the "
            f"backlog outgrows the client's timeout, lower --overload or --step-seconds.\n")


def findings(study: Study, df, a) -> None:
    stop = plateau(df)
    lo, hi = df.iloc[0], df.iloc[-1]
    n_lo, n_hi = int(lo.workers), int(hi.workers)
    study.text(
        "## What it shows\n\n"
        f"- Throughput: {lo.throughput_rps:.2f} req/s at N={n_lo}, {hi.throughput_rps:.2f} at "
        f"N={n_hi}, {df.offered_rps.iloc[0]:.2f} offered ({df.sent_rps.mean():.2f} sent in the "
        f"measured window: one Poisson draw, the same for every N); it stops growing at N={stop} (less than "
        f"+10% from any further worker). Why: {why_it_stops(df, stop, bool(a.crop_sleep_ms))}.\n"
        f"- The broker decouples the two DNNs: the detector never waits for the classifier (its "
        f"inference is {df.detect_inference_ms.min():.1f}-{df.detect_inference_ms.max():.1f} ms "
        f"across N; it moves with CPU contention, not with the backlog), while the waiting for a "
        f"busy worker (classify-backlog) goes from {lo.classify_backlog_ms:.0f} ms at N={n_lo} to "
        f"{hi.classify_backlog_ms:.0f} ms at N={n_hi} and the crops stream held "
        f"{lo.crops_depth_mean:.1f} vs {hi.crops_depth_mean:.1f} messages on average. The broker's "
        f"own transit (classify-broker) is {df.classify_broker_ms.min():.1f}-"
        f"{df.classify_broker_ms.max():.1f} ms.\n"
        "- Open loop above capacity, the backlog grows during the step: its mean and e2e depend "
        "on the step's length; compare across N, not against other runs.\n"
        + failed_note(df) +
        "- Per-N run directories (`n<N>/`) hold the full breakdown reports (report.md, spans, "
        "broker_depth.parquet, process_cpu.parquet).")


def main(argv=None) -> int:
    a = parse_args(argv)
    import pandas as pd

    study = Study("scale_workers", a.out, a, threads=1)
    study.extra["cpu_count"] = __import__("os").cpu_count()
    t_crop = cpu_ms = None
    if a.rate is None:
        wall_ms, cpu_ms = crop_ms(a.classifier, a.models_dir)
        t_crop = wall_ms + a.crop_sleep_ms
        a.rate = a.overload * 1e3 / (a.k * t_crop)
    study.extra["calibration"] = {"crop_ms": t_crop, "crop_cpu_ms": cpu_ms, "rate_rps": a.rate}
    rows = []
    for n in a.workers:
        print(f"scale_workers: N={n} at {a.rate:.2f} req/s ...", file=sys.stderr, flush=True)
        rows.append(row(n, a.rate, run_one(a, n, a.rate, study.dir / f"n{n}")))
    df = pd.DataFrame(rows)
    explain(study, a, t_crop, a.rate, cpu_ms)
    study.table(df, "scale_workers", "Per number of classifier workers")
    findings(study, df, a)
    plots(study, df)
    bad = shape_failures(df) if a.smoke else []
    if bad:
        study.text("## Smoke checks FAILED\n\n" + "\n".join(f"- {b}" for b in bad))
    study.finish()
    for b in bad:
        print(f"scale_workers: smoke check failed: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
