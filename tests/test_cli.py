"""The `overhead` console script: help never does the slow work first."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_help_prints_without_building_models(tmp_path):
    """`overhead demo --help` answers at once: it must not build models or start a sweep."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "overhead.cli", "demo", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "overhead demo" in out.stdout and "--users" in out.stdout
    assert "/models/" not in out.stdout  # the model builder prints each model's path
    print(f"demo --help took {time.monotonic() - t0:.2f} s")


def test_unknown_command_says_what_exists():
    out = subprocess.run([sys.executable, "-m", "overhead.cli", "nonsense"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "unknown command 'nonsense'" in out.stderr and "overhead demo" in out.stderr


def test_demo_model_build_prints_no_tensorflow_noise(tmp_path):
    """A fresh machine's first `make demo` builds the models: its console shows our progress lines,
    not TensorFlow's CUDA/oneDNN start-up chatter. Same build flags as the demo, a small model."""
    from overhead.cli import DEMO_BUILD
    flags = [f for f in DEMO_BUILD if f.startswith("--")]
    out = subprocess.run([sys.executable, "-m", "pipelines.models", "build", *flags,
                          "--models-dir", str(tmp_path), "custom_cnn"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    console = out.stdout + out.stderr
    assert "[models] custom_cnn done" in console
    for noise in ("absl", "cuda", "oneDNN", "cuInit"):
        assert noise not in console, f"TensorFlow noise {noise!r} in the demo's build output:\n{console}"
