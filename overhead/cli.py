"""`overhead` console script: thin subcommands over the modules a reader can also run directly.

    overhead demo            build the demo models, run a short sweep, print the breakdown
    overhead gateway ...     python -m pipelines.gateway ...
    overhead sweep ...       python -m loadtest.sweep ...
    overhead report RUN_DIR  python analysis/breakdown.py RUN_DIR
    overhead models ...      python -m pipelines.models ...
    overhead corpus ...      python -m pipelines.corpus ...
    overhead up ...          python -m deploy.local ...  (the Compose topology without Docker)
"""
from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SUBCOMMANDS = {
    "gateway": "pipelines.gateway",
    "sweep": "loadtest.sweep",
    "models": "pipelines.models",
    "corpus": "pipelines.corpus",
    "report": "analysis.breakdown",
    "up": "deploy.local",
}

# The demo: the two-DNN pipeline on the embedded default (ONNX Runtime in-process, memory broker),
# concurrency 1, 2, 4, 8, images of 0.1, 1 and 8 megapixels.
DEMO_MODELS = ("ssd_mobilenetv2", "mobilenetv2")
# --subprocess: TensorFlow's C++ start-up chatter (CUDA, oneDNN) is filtered from the child's output.
DEMO_BUILD = ["build", "--subprocess", *DEMO_MODELS]
DEMO_SWEEP = ["--users", "1,2,4,8", "--step-seconds", "20", "--warmup-seconds", "5",
              "--sizes", "0.1MP,1MP,8MP"]


def _run_module(module: str, argv: list[str]) -> int:
    sys.argv = [module] + argv
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def demo(argv: list[str]) -> int:
    """Build the models (cached after the first time), then sweep and report."""
    if "-h" in argv or "--help" in argv:
        # Help first: building the models takes minutes on a fresh machine.
        print("overhead demo [SWEEP OPTIONS]: builds " + ", ".join(DEMO_MODELS)
              + " (cached), then runs the sweep with " + " ".join(DEMO_SWEEP)
              + " and prints the breakdown.\nAny sweep option overrides these; the sweep's options:\n")
        return _run_module("loadtest.sweep", ["--help"])
    out = None
    if "--out" not in argv:
        out = str(REPO / "runs" / time.strftime("demo-%Y%m%d-%H%M%S"))
        argv = ["--out", out] + argv
    t0 = time.monotonic()
    code = _run_module("pipelines.models", DEMO_BUILD)
    if code:
        return code
    code = _run_module("loadtest.sweep", DEMO_SWEEP + argv)
    print(f"demo finished in {time.monotonic() - t0:.0f} s (after set-up)", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        return demo(rest)
    if cmd in SUBCOMMANDS:
        return _run_module(SUBCOMMANDS[cmd], rest)
    print(f"overhead: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
