"""Triton's own benchmark client, ``perf_analyzer``, as a cross-check of Overhead's numbers.

It ships inside the ``tritonclient==2.51.0`` wheel (newer wheels need glibc 2.38). It is
installed with ``--no-deps --target <server venv>/perf-analyzer`` (the main venv keeps its newer
tritonclient) and runs with ``libb64.so.0d`` and ``libcudart.so.12`` symlinked from
``nvidia_pytriton.libs`` into a directory on ``LD_LIBRARY_PATH``.

    binary, env = ensure_perf_analyzer()
    rows = run_perf_analyzer("mobilenetv2", "127.0.0.1:8001", "grpc", concurrency=4)
"""
from __future__ import annotations

import csv
import io
import os
import subprocess
import tempfile
from pathlib import Path

from deploy.triton.server import TritonInstall, TritonServerError

PA_VERSION = "2.51.0"


def ensure_perf_analyzer(venv=None) -> tuple[Path, dict]:
    inst = TritonInstall(venv)
    target = inst.venv / "perf-analyzer"
    binary = target / "bin" / "perf_analyzer"
    if not binary.is_file():
        subprocess.run([str(inst.python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "--no-deps", "--target", str(target),
                        f"tritonclient=={PA_VERSION}"], check=True, timeout=600)
        if not binary.is_file():
            raise TritonServerError(f"perf_analyzer not found in tritonclient=={PA_VERSION} at {binary}")
    binary.chmod(0o755)
    lib = target / "lib-links"
    lib.mkdir(exist_ok=True)
    for link, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
        found = sorted(inst.libs.glob(pattern))
        if not found:
            raise TritonServerError(f"{pattern} not in {inst.libs}")
        dst = lib / link
        if not dst.exists():
            dst.symlink_to(found[0])
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(lib), str(inst.libs), env.get("LD_LIBRARY_PATH")) if p)
    return binary, env


def run_perf_analyzer(model: str, url: str, protocol: str = "grpc", concurrency: int = 1,
                      request_count: int = 50, stability_pct: float = 50, max_trials: int = 10,
                      timeout_s: float = 300, venv=None) -> dict:
    """One concurrency level, count windows; returns perf_analyzer's CSV row (µs columns).
    The default stability threshold (50 %, perf_analyzer's own is 10 %) suits 2 shared cores."""
    binary, env = ensure_perf_analyzer(venv)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "pa.csv"
        argv = [str(binary), "-m", model, "-u", url, "-i", protocol,
                "--concurrency-range", f"{concurrency}:{concurrency}",
                "--measurement-mode", "count_windows", "--measurement-request-count",
                str(request_count), "--max-trials", str(max_trials), "-s", str(stability_pct),
                "--input-data", "random", "-f", str(out)]
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
        if p.returncode != 0 or not out.exists():
            raise RuntimeError(f"perf_analyzer failed ({p.returncode}): {p.stdout[-1500:]}{p.stderr[-1500:]}")
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
    return rows[0] if rows else {}
