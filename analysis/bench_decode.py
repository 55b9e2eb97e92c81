"""Full-size decode vs DCT-reduced decode, before a resize to the model input (224x224).

    python analysis/bench_decode.py [--rounds 5] [--backends opencv pil ...] [--json out.json]

For every backend (``pipelines.preprocess``) and size class of the corpus (``pipelines.corpus``,
6 real photos at 0.1, 1 and 8 MP) this times, interleaved in one run so that background load
hits both equally:

- full:    ``decode(data)`` at full size, then ``resize`` to 224x224;
- reduced: ``decode(data, target_hw=(224, 224))`` (libjpeg DCT scaling 1/2, 1/4 or 1/8 when the
  image is at least 2x the target), then ``resize`` to 224x224.

Each round runs full and reduced back to back on every photo, alternating which goes first.
It prints median milliseconds per stage, the reduction factor used, and THE RATIO
reduced/full (ratio of the medians of decode+resize) for 8 MP -> 224, the quantity the reduced
decode exists for (goal: <= 0.5). Threads are pinned to one (``cv2.setNumThreads(1)``, one DALI
worker thread, single-threaded Pillow/simplejpeg); the process CPU time is printed with the wall
time: on a shared 2-core machine a CPU/wall ratio well under 1 means the benchmark was waiting
for a core. Timings are reported, never asserted.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

cv2.setNumThreads(1)

from pipelines.corpus import SIZE_CLASSES, build_corpus, load_corpus_bytes  # noqa: E402
from pipelines.preprocess import PREPROCESSORS, get_preprocessor  # noqa: E402

TARGET = (224, 224)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def time_once(pre, data: bytes, target) -> tuple[float, float, int]:
    t0 = time.perf_counter_ns()
    img, info = pre.decode(data, target)
    t1 = time.perf_counter_ns()
    pre.resize(img, TARGET)
    t2 = time.perf_counter_ns()
    return (t1 - t0) / 1e6, (t2 - t1) / 1e6, info["reduced"]


def bench_backend(name: str, corpus, rounds: int, warmup: int) -> dict:
    options = {"num_threads": 1} if name == "dali" else {}
    pre = get_preprocessor(name, reduced="auto", **options)
    results = {}
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    for size in SIZE_CLASSES:
        items = [d for ci, d in corpus if ci.size_class == size]
        if not items:
            continue
        for data in items:  # warm-up: pipelines built, caches and allocator settled
            for _ in range(warmup):
                time_once(pre, data, None)
                time_once(pre, data, TARGET)
        samples = {"full": [], "reduced": []}
        factors = set()
        for r in range(rounds):
            for i, data in enumerate(items):
                order = ("full", "reduced") if (r + i) % 2 == 0 else ("reduced", "full")
                for kind in order:
                    dec, rs, f = time_once(pre, data, None if kind == "full" else TARGET)
                    samples[kind].append((dec, rs))
                    if kind == "reduced":
                        factors.add(f)
        row = {}
        for kind, s in samples.items():
            row[kind] = {
                "decode_ms": statistics.median(d for d, _ in s),
                "resize_ms": statistics.median(r for _, r in s),
                "total_ms": statistics.median(d + r for d, r in s),
                "n": len(s),
            }
        row["factors"] = sorted(factors)
        row["ratio"] = row["reduced"]["total_ms"] / row["full"]["total_ms"]
        results[size] = row
    results["cpu_s"] = _cpu_s() - cpu0
    results["wall_s"] = time.perf_counter() - wall0
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed passes over the 6 photos (default 5)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--backends", nargs="+", default=list(PREPROCESSORS), choices=PREPROCESSORS)
    ap.add_argument("--corpus-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    wall0, cpu0 = time.perf_counter(), _cpu_s()
    load0 = os.getloadavg()
    corpus = load_corpus_bytes(build_corpus(args.corpus_dir))
    print(f"bench_decode: {len(corpus)} corpus images, target {TARGET[0]}x{TARGET[1]}, rounds {args.rounds}, "
          f"cv2 {cv2.__version__} threads {cv2.getNumThreads()}, {platform.machine()} "
          f"{os.cpu_count()} CPUs, load avg {load0[0]:.2f}")
    print("median ms per image; reduced = DCT-scaled decode at the largest 1/f keeping >= 224 px\n")
    hdr = (f"{'backend':<11}{'size':<7}{'full:dec':>9}{'resize':>8}{'total':>8}   "
           f"{'red:dec':>8}{'resize':>8}{'total':>8}{'f':>6}   {'red/full':>8}")
    print(hdr)
    print("-" * len(hdr))
    all_results = {}
    for name in args.backends:
        res = bench_backend(name, corpus, args.rounds, args.warmup)
        all_results[name] = res
        for size in SIZE_CLASSES:
            if size not in res:
                continue
            r = res[size]
            fu, re_ = r["full"], r["reduced"]
            fs = ",".join(str(f) for f in r["factors"])
            print(f"{name:<11}{size:<7}{fu['decode_ms']:9.2f}{fu['resize_ms']:8.2f}{fu['total_ms']:8.2f}   "
                  f"{re_['decode_ms']:8.2f}{re_['resize_ms']:8.2f}{re_['total_ms']:8.2f}{fs:>6}   {r['ratio']:8.2f}")
        print(f"{'':<11}cpu {res['cpu_s']:.1f} s / wall {res['wall_s']:.1f} s")

    print("\nTHE RATIO reduced/full, 8MP -> 224 (decode+resize, ratio of medians; goal <= 0.5):")
    for name, res in all_results.items():
        if "8MP" in res:
            r = res["8MP"]
            note = "" if max(r["factors"]) > 1 else "   (no DCT-scaled decode in this backend)"
            verdict = "ok" if r["ratio"] <= 0.5 else "over 0.5"
            print(f"  {name:<11}{r['ratio']:.3f}  [{verdict}]  "
                  f"{r['reduced']['total_ms']:.1f} ms vs {r['full']['total_ms']:.1f} ms{note}")
    cpu, wall = _cpu_s() - cpu0, time.perf_counter() - wall0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    load1 = os.getloadavg()
    print(f"\nprocess CPU time {cpu:.1f} s (user {ru.ru_utime:.1f} s, sys {ru.ru_stime:.1f} s) over "
          f"{wall:.1f} s wall = {cpu / wall:.2f} cores; max RSS {ru.ru_maxrss / 1024:.0f} MiB; "
          f"load avg {load0[0]:.2f} -> {load1[0]:.2f}")
    if args.json:
        all_results["_meta"] = {"cpu_s": cpu, "wall_s": wall, "rounds": args.rounds, "target": TARGET,
                                "cv2": cv2.__version__, "loadavg": [load0, load1]}
        args.json.write_text(json.dumps(all_results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
