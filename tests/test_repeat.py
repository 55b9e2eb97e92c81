"""``python -m loadtest.sweep --repeat N``: N real sweeps (the load generator's stand-in gateway of
tests/test_loadtest.py, no models) and repeats.md with mean ± 95% CI per cell."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PY = sys.executable
STANDIN = REPO / "tests" / "test_loadtest.py"   # run as a script: the stand-in gateway process


def write_manifest(tmp_path: Path) -> Path:
    """Two fake 1MP "images" (the stand-in does not decode them)."""
    (tmp_path / "images").mkdir()
    entries = []
    for i in range(2):
        p = tmp_path / "images" / f"img{i}.jpg"
        p.write_bytes(b"\xff\xd8" + os.urandom(60_000))
        entries.append({"name": f"img{i}", "size_class": "1MP", "path": str(p), "width": 1,
                        "height": 1, "nbytes": 60_002})
    m = tmp_path / "corpus.json"
    m.write_text(json.dumps(entries))
    return m


@pytest.mark.slow
def test_sweep_repeat_runs_n_sweeps_and_reports_the_ci(tmp_path):
    manifest = write_manifest(tmp_path)
    out = tmp_path / "rep"
    cmd = [PY, "-m", "loadtest.sweep", "--repeat", "2", "--out", str(out), "--users", "1", "--step-seconds",
           "2.5", "--warmup-seconds", "0.5", "--manifest", str(manifest), "--sizes", "1MP",
           "--gateway-command", f"{shlex.quote(PY)} {shlex.quote(str(STANDIN))}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for i in (1, 2):
        assert (out / f"repeat-{i}" / "report.md").exists()
    text = (out / "repeats.md").read_text()
    assert "# Repeats of one configuration" in text
    row = next(line for line in text.splitlines() if line.startswith("| 1 | 1MP |"))
    assert row.split(" | ")[2] == "2" and " ± " in row        # 2 repeats, a CI on every value
