"""Batching tuner: the TF Serving batching guide's method (as Triton's Model Analyzer automates it)
against the REAL local tritonserver (python flavour, dynamic batching).

    python -m analysis.studies.batching_tuner [--smoke] [--out RUN_DIR] [--model mobilenetv2]
        [--p99-budget-ms 200] [--concurrency 10] [--requests N] [--max-batch-cap 32]
        [--long-delay-us 50000] [--min-delay-us 100] [--protocol grpc|http]

1. threads = cores: ``instance_group count`` (TF Serving ``num_batch_threads``) = ``os.cpu_count()``,
   1 ORT thread per instance (recorded);
2. with a long timeout (``max_queue_delay_microseconds`` = ``--long-delay-us``) raise the max batch
   1, 2, 4, 8, ... while the throughput improves by more than ``--min-gain`` (5%) over the best so
   far, up to ``--max-batch-cap``; the max batch is the best-throughput one;
3. at that max batch, halve the timeout from the long value (down to ``--min-delay-us``, then 0)
   until p99 <= ``--p99-budget-ms``: the recommendation is the LONGEST timeout that meets the
   budget (most batching within it); if none does, the lowest-p99 trial, flagged.

Every trial: the model's config is rewritten (``deploy.triton.repository``) and reloaded on one
server (``--model-control-mode=explicit``), warmed up, then ``--requests`` single-image requests
from ``--concurrency`` client threads with ``server_batching.load`` (closed loop), recording
throughput, p50/p99 (per-request round trips) and Triton's stats delta (queue vs compute, average
batch size, batch sizes executed). Output: ``trials.csv`` (the evidence), ``recommended/`` with
``tfserving/batching_parameters.txt`` (``deploy.tfserving.config.batching_parameters``) and
``triton/<model>/config.pbtxt`` (``deploy.triton.repository``), ``recommendation.json``, report.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from analysis.studies.report import Study, pin_threads
from analysis.studies.server_batching import load


class _Recording:
    """Wraps a backend: ``infer`` records each round trip (ms), so p99 comes from the same
    closed-loop driver (``server_batching.load``) without changing it."""

    def __init__(self, backend):
        self.b = backend
        self.lat: list[float] = []

    def infer(self, x):
        t0 = time.perf_counter()
        r = self.b.infer(x)
        self.lat.append((time.perf_counter() - t0) * 1e3)    # list.append is atomic in CPython
        return r


def _reload(http_url: str, model: str, timeout_s: float = 120.0) -> float:
    """Triton's repository API: (re)load ``model`` from its rewritten config. Returns seconds."""
    t0 = time.perf_counter()
    req = urllib.request.Request(f"http://{http_url}/v2/repository/models/{model}/load", data=b"{}",
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        r.read()
    return time.perf_counter() - t0


def trial(info, repo: Path, http_url: str, url: str, max_batch: int, delay_us: int, instances: int,
          n: int, concurrency: int, warmup: int) -> dict:
    from deploy.triton.repository import spec_from_info, write_model
    from pipelines.inference import make_backend
    from pipelines.inference.triton import stats_delta
    write_model(repo, spec_from_info(info, max_batch_size=max_batch, queue_delay_us=delay_us,
                                     instances=instances, intra_op_threads=1), flavour="python")
    reload_s = _reload(http_url, info.name)
    b = make_backend("triton", info, url=url, timeout_s=60)
    try:
        h, w = info.input_hw
        x = np.random.default_rng(0).uniform(-1, 1, (h, w, 3)).astype(np.float32)
        load(b, x, warmup, concurrency)                 # warm every instance / batch shape
        rec = _Recording(b)
        s0 = b.model_stats()
        res = load(rec, x, n, concurrency)
        d = stats_delta(s0, b.model_stats())
    finally:
        b.close()
    lat = np.array(rec.lat) if rec.lat else np.array([np.nan])
    compute = (d["compute_input_mean_ns"] + d["compute_infer_mean_ns"] + d["compute_output_mean_ns"]) / 1e6
    return {"max_batch": max_batch, "queue_delay_us": delay_us, "instances": instances,
            "requests": res["requests"], "errors": res["errors"],
            "throughput_rps": res["throughput_rps"], "p50_ms": float(np.nanpercentile(lat, 50)),
            "p99_ms": float(np.nanpercentile(lat, 99)), "avg_ms": res["avg_ms"],
            "server_queue_ms": d["queue_mean_ns"] / 1e6, "server_compute_ms": compute,
            "avg_batch": d["inference_count"] / d["execution_count"] if d["execution_count"] else float("nan"),
            "batches": " ".join(f"{k}:{v}" for k, v in d["batches"].items()),
            "reload_s": reload_s, "first_error": res["first_error"]}


def tune(run_one, cap: int, long_delay: int, min_delay: int, budget_ms: float, min_gain: float,
         max_delay_steps: int) -> tuple[list[dict], dict, dict]:
    """The search, independent of the server: ``run_one(max_batch, delay_us) -> row``.
    Returns (trials, chosen row, decision notes)."""
    trials: list[dict] = []
    best = None
    mb = 1
    while mb <= cap:
        r = {"stage": "1 max batch", **run_one(mb, long_delay)}
        gain = (r["throughput_rps"] / best["throughput_rps"] - 1) * 100 if best else float("nan")
        r["gain_pct"] = gain
        ok = r["errors"] == 0
        if best is None or (ok and gain > min_gain * 100):
            r["decision"] = "improves: keep raising" if best else "baseline"
            best = r
            trials.append(r)
            mb *= 2
            continue
        r["decision"] = (f"gain {gain:.1f}% <= {min_gain * 100:.0f}%: stop" if ok
                         else f"{r['errors']} errors: stop")
        trials.append(r)
        break
    stop1 = "cap reached" if mb > cap else "throughput stopped improving"
    best["decision"] += " -> chosen max batch"
    chosen_mb = best["max_batch"]

    cur = best
    delay = long_delay
    steps = 0
    met = cur["p99_ms"] <= budget_ms and cur["errors"] == 0
    while not met and steps < max_delay_steps and delay > 0 and chosen_mb > 1:   # mb 1: no wait
        delay = delay // 2 if delay // 2 >= min_delay else 0
        steps += 1
        cur = {"stage": "2 timeout", **run_one(chosen_mb, delay), "gain_pct": float("nan")}
        met = cur["p99_ms"] <= budget_ms and cur["errors"] == 0
        cur["decision"] = "meets p99 budget" if met else "p99 over budget: halve"
        trials.append(cur)
    if met:
        chosen = cur
        note = (f"p99 {chosen['p99_ms']:.1f} ms <= budget {budget_ms:g} ms at the longest timeout "
                f"tried that meets it ({chosen['queue_delay_us']} us)")
    else:
        cands = [t for t in trials if t["max_batch"] == chosen_mb and t["errors"] == 0] or trials
        chosen = min(cands, key=lambda t: t["p99_ms"])
        why = (f"after {steps} timeout halvings" if chosen_mb > 1 else
               "the timeout has no effect at max batch 1, so it was not lowered")
        note = (f"NO configuration met the p99 budget {budget_ms:g} ms ({why}; in a closed loop "
                f"latency is about concurrency / throughput: lower the load or add capacity); recommending the lowest p99 at max batch {chosen_mb}: "
                f"{chosen['p99_ms']:.1f} ms at {chosen['queue_delay_us']} us")
    return trials, chosen, {"stage1_stop": stop1, "budget_met": met, "note": note}


def recommendation(chosen: dict, cores: int, concurrency: int) -> dict:
    mb = int(chosen["max_batch"])
    sizes = [1 << i for i in range(int(math.log2(mb)) + 1)] if mb & (mb - 1) == 0 else [mb]
    # max batch 1: every batch is full on arrival, a timeout would never be waited for
    return {"max_batch_size": mb, "batch_timeout_micros": int(chosen["queue_delay_us"]) if mb > 1 else 0,
            "num_batch_threads": cores,
            # bounded queue: just enough batches for the load the budget was measured at
            "max_enqueued_batches": max(1, math.ceil(concurrency / mb)),
            "allowed_batch_sizes": sizes}


def write_recommendation(out: Path, info, rec: dict) -> dict:
    from deploy.tfserving.config import TFServingSettings, batching_parameters
    from deploy.triton.repository import spec_from_info, write_model
    tf = out / "tfserving" / "batching_parameters.txt"
    tf.parent.mkdir(parents=True, exist_ok=True)
    tf.write_text(batching_parameters(TFServingSettings(
        rec["max_batch_size"], rec["batch_timeout_micros"], rec["num_batch_threads"],
        rec["max_enqueued_batches"], rec["allowed_batch_sizes"])))
    spec = spec_from_info(info, max_batch_size=rec["max_batch_size"],
                          queue_delay_us=rec["batch_timeout_micros"],
                          instances=rec["num_batch_threads"], intra_op_threads=1,
                          preferred_batch_sizes=rec["allowed_batch_sizes"])
    tri = write_model(out / "triton", spec, flavour="python") / "config.pbtxt"
    (out / "recommendation.json").write_text(json.dumps(rec, indent=2))
    return {"tfserving": tf, "triton": tri}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--model", default=None, help="default mobilenetv2 (smoke custom_cnn)")
    p.add_argument("--p99-budget-ms", type=float, default=200.0)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--requests", type=int, default=None, help="per trial; default 400 (smoke 30)")
    p.add_argument("--max-batch-cap", type=int, default=None, help="default 32 (smoke 4)")
    p.add_argument("--long-delay-us", type=int, default=None, help="default 50000 (smoke 20000)")
    p.add_argument("--min-delay-us", type=int, default=100, help="below this the next step is 0")
    p.add_argument("--max-delay-steps", type=int, default=None, help="default 12 (smoke 2)")
    p.add_argument("--min-gain", type=float, default=0.05, help="throughput gain to keep raising")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--models-dir", default=None)
    a = p.parse_args(argv)
    pin_threads(1)
    import pandas as pd

    from deploy.triton.server import TritonServer
    from pipelines.models import ensure_model
    model = a.model or ("custom_cnn" if a.smoke else "mobilenetv2")
    n = a.requests or (30 if a.smoke else 400)
    cap = a.max_batch_cap or (4 if a.smoke else 32)
    long_delay = a.long_delay_us or (20000 if a.smoke else 50000)
    steps = a.max_delay_steps if a.max_delay_steps is not None else (2 if a.smoke else 12)
    warmup = 2 * a.concurrency
    cores = os.cpu_count() or 1
    info = ensure_model(model, models_dir=a.models_dir)
    st = Study("batching_tuner", a.out, a, threads=1)
    st.extra["batching_tuner"] = {"cores": cores, "instances": cores, "ort_threads_per_instance": 1}
    with tempfile.TemporaryDirectory(prefix="overhead-bt-") as tmp:
        repo = Path(tmp) / "repo"
        from deploy.triton.repository import spec_from_info, write_model
        write_model(repo, spec_from_info(info, max_batch_size=1, queue_delay_us=long_delay,
                                         instances=cores, intra_op_threads=1), flavour="python")
        srv = TritonServer(repo, log_path=st.dir / "tritonserver.log", threads=1,
                           extra_args=["--model-control-mode=explicit", f"--load-model={info.name}"])
        with srv:
            url = f"{a.protocol}://" + (srv.grpc_url if a.protocol == "grpc" else srv.http_url)

            def run_one(mb, delay):
                print(f"[batching_tuner] {info.name} max batch {mb}, delay {delay} us: {n} requests "
                      f"x{a.concurrency}", file=sys.stderr)
                return trial(info, repo, srv.http_url, url, mb, delay, cores, n, a.concurrency, warmup)

            trials, chosen, notes = tune(run_one, cap, long_delay, a.min_delay_us, a.p99_budget_ms, a.min_gain, steps)
    rec = recommendation(chosen, cores, a.concurrency)
    paths = write_recommendation(st.dir / "recommended", info, rec)
    st.extra["batching_tuner"].update({"recommendation": rec, **notes})

    df = pd.DataFrame(trials)
    df.insert(0, "trial", range(1, len(df) + 1))
    df["chosen"] = [t is chosen for t in trials]
    cols = ["trial", "stage", "max_batch", "queue_delay_us", "throughput_rps", "gain_pct", "p50_ms",
            "p99_ms", "server_queue_ms", "server_compute_ms", "avg_batch", "batches", "errors",
            "decision", "chosen"]
    df = df[cols + [c for c in df.columns if c not in cols]]
    st.text(f"Real tritonserver, python backend (ONNX Runtime), model `{info.name}`, "
            f"{a.protocol.upper()}; **threads = cores**: {cores} instances x 1 ORT thread "
            f"(`os.cpu_count()` = {cores}; TF Serving `num_batch_threads`). Every trial: config "
            f"rewritten and model reloaded, {warmup} warm-up requests, then {n} single-image "
            f"requests from {a.concurrency} closed-loop client threads (`server_batching.load`). "
            f"p99 of {n} requests is close to the max: read it as a tail estimate. Client, server "
            f"and ORT share the same {cores} cores with whatever else runs.")
    st.table(df.drop(columns=["first_error", "instances"]), "trials", "Trials (the evidence)")
    s1 = df[df.stage.str.startswith("1")]
    s2 = df[df.stage.str.startswith("2")]
    st.text(
        "## Why this recommendation\n\n"
        f"1. Threads = cores: {cores}.\n"
        f"2. Long timeout {long_delay} us, max batch raised {' -> '.join(map(str, s1.max_batch))}: "
        f"throughput {' -> '.join(f'{v:.1f}' for v in s1.throughput_rps)} rps; stopped because "
        f"{notes['stage1_stop']} (gain threshold {a.min_gain * 100:.0f}%, cap {cap}). Max batch "
        f"**{rec['max_batch_size']}** (best throughput; average batch formed "
        f"{float(s1[s1.max_batch == rec['max_batch_size']].avg_batch.iloc[0]):.2f}).\n"
        f"3. p99 budget {a.p99_budget_ms:g} ms: "
        + (f"timeout halved {' -> '.join(map(str, s2.queue_delay_us))} us, p99 "
           f"{' -> '.join(f'{v:.1f}' for v in s2.p99_ms)} ms. " if len(s2) else
           ("already met at the long timeout, no lowering needed. " if notes["budget_met"] else ""))
        + f"{notes['note']}. Timeout **{rec['batch_timeout_micros']} us**"
        + (" (max batch 1: a batch is full on arrival, so the timeout is never waited for; 0)"
           if rec["max_batch_size"] == 1 else "") + ".\n\n"
        f"Recommended: `{json.dumps(rec)}`. `max_enqueued_batches` = ceil(concurrency / max batch) "
        f"bounds the queue to the load the budget was measured at (TF Serving rejects beyond it "
        f"instead of queueing); `allowed_batch_sizes` / `preferred_batch_size` = the sizes tried "
        f"up to the max batch (TF Serving pads to them; Triton prefers them, without padding).\n\n"
        f"Files: `recommended/tfserving/batching_parameters.txt` (`--enable_batching "
        f"--batching_parameters_file=...`), `recommended/triton/{info.name}/config.pbtxt` "
        f"(python flavour, as measured; `dynamic_batching`, `instance_group count` = {cores}), "
        f"`recommended/recommendation.json`.")
    st.text("### TF Serving batching_parameters.txt\n\n```\n" + paths["tfserving"].read_text() + "```")
    txt = paths["triton"].read_text()
    block = txt[txt.index("max_batch_size"):txt.index("\n", txt.index("max_batch_size"))] + "\n" + \
        txt[txt.index("dynamic_batching"):txt.index("instance_group")]
    st.text("### Triton config.pbtxt (batching part)\n\n```\n" + block + "```")
    st.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
