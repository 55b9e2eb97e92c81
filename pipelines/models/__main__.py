"""``python -m pipelines.models build NAME [NAME...] | list``."""
from __future__ import annotations

import argparse
import sys

from .cache import default_models_dir, ensure_model, list_cached
from .catalog import MODEL_NAMES, SPECS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.models",
                                 description="Build, export and cache the vision models.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or find in the cache) models; prints their directories")
    b.add_argument("names", nargs="+", metavar="NAME", help=f"one of {', '.join(MODEL_NAMES)}, or 'all'")
    b.add_argument("--models-dir", default=None, help=f"cache directory (default {default_models_dir()})")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--savedmodel", action="store_true", help="also export a TF Serving SavedModel")
    b.add_argument("--weights-file", default=None, help="Keras weights to load (one NAME only)")
    b.add_argument("--onnx-file", default=None, help="use this ONNX file as-is (one NAME only)")
    b.add_argument("--normalization", default=None, help="with --onnx-file: input normalisation")
    b.add_argument("--subprocess", action="store_true", help="build in a child process")
    ls = sub.add_parser("list", help="known models and cached builds")
    ls.add_argument("--models-dir", default=None)
    a = ap.parse_args(argv)

    if a.cmd == "list":
        d = a.models_dir or default_models_dir()
        print("known models:")
        for s in SPECS.values():
            print(f"  {s.name:<16} {s.kind:<10} {s.input_hw[0]}x{s.input_hw[1]}  "
                  f"normalization={s.normalization}  classes={s.num_classes}")
        cached = list_cached(d)
        print(f"cached in {d}:" + ("" if cached else " (none)"))
        for i in cached:
            m = i.meta
            print(f"  {i.directory.name:<30} {i.kind:<10} seed={m.get('seed')} "
                  f"formats={','.join(m.get('formats', []))} built in {m.get('build_seconds')} s")
        return 0

    names = list(MODEL_NAMES) if a.names == ["all"] else a.names
    unknown = [n for n in names if n not in SPECS and not a.onnx_file]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(MODEL_NAMES)}")
    if (a.weights_file or a.onnx_file) and len(names) != 1:
        ap.error("--weights-file / --onnx-file need exactly one NAME")
    formats = ("onnx", "savedmodel") if a.savedmodel else ("onnx",)
    for n in names:
        info = ensure_model(n, models_dir=a.models_dir, seed=a.seed, formats=formats,
                            onnx_file=a.onnx_file, weights_file=a.weights_file,
                            normalization=a.normalization, in_process=not a.subprocess)
        print(info.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
