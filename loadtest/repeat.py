"""Repeat a sweep N times and report every cell with its uncertainty.

    python -m loadtest.sweep --repeat N --out DIR [any other sweep option ...]
    python -m loadtest.repeat N --out DIR [any loadtest.sweep option ...]      (the same)

Runs ``python -m loadtest.sweep`` N times into ``DIR/repeat-1 .. DIR/repeat-N`` (each a complete
run directory with its own report), then writes ``DIR/repeats.md``: per load level and size class,
the mean over the repeats ± the 95% confidence half-width (Student t) of throughput, e2e mean /
p50 / p99 and each component's critical-path mean (``analysis/compare.py --repeats``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(prog="python -m loadtest.repeat", description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, help="how many times to run the sweep (>= 2 for a CI)")
    ap.add_argument("--out", required=True, help="directory for repeat-1..N and repeats.md")
    return ap.parse_known_args(argv)


def without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` less the given options (``--name VALUE`` or ``--name=VALUE``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not a.startswith(tuple(n + "=" for n in names)):
            out.append(a)
    return out


def repeat_sweep(n: int, out: str, sweep_argv: list[str]) -> int:
    """``loadtest.sweep --repeat N``: the sweep's own command line, N times."""
    return main([str(n), "--out", out, *without_options(sweep_argv, ("--repeat", "--out"))])


def main(argv: list[str] | None = None) -> int:
    args, sweep_args = parse(argv)
    if args.n < 1:
        print("loadtest.repeat: N must be at least 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(1, args.n + 1):
        run_dir = out / f"repeat-{i}"
        print(f"repeat {i}/{args.n}: {run_dir}", flush=True)
        code = subprocess.call([sys.executable, "-m", "loadtest.sweep", "--out", str(run_dir),
                                *sweep_args])
        if code != 0:
            print(f"loadtest.repeat: the sweep of repeat {i} failed (exit {code})", file=sys.stderr)
            return code
        runs.append(str(run_dir))
    from analysis.compare import compare_repeats

    compare_repeats(runs, out / "repeats.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
