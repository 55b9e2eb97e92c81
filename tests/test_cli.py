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
