"""What ran, for a run's config.json: package versions, the machine, the git revision, and the
image corpus the load generator sends (RUN_DIR/corpus.json and its summary)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from overhead.contract.rundir import RunDir, write_json_atomic
from loadtest.errors import SweepError

REPO = Path(__file__).resolve().parent.parent
VERSION_PACKAGES = ("overhead", "locust", "gevent", "geventhttpclient", "fastapi", "uvicorn",
                    "onnxruntime", "opencv-python-headless", "simplejpeg", "pillow", "numpy",
                    "pandas", "pyarrow", "redis", "kafka-python", "tritonclient", "psutil")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    import psutil

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu_model=model or platform.processor() or platform.machine(), cores=os.cpu_count(),
                mem_gib=round(psutil.virtual_memory().total / 2**30, 1),
                platform=platform.platform(), hostname=platform.node())


def git_info() -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        rev = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"rev": rev or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"rev": None}


def corpus_manifest(run: RunDir, sizes: list[str], manifest: str | None) -> list[dict]:
    """Write RUN_DIR/corpus.json (name, size_class, path, width, height, nbytes) for the locustfile."""
    if manifest:
        entries = json.loads(Path(manifest).read_text())
        if isinstance(entries, dict):
            entries = entries.get("images", [])
        base = Path(manifest).resolve().parent
        for e in entries:
            p = Path(e["path"])
            e["path"] = str(p if p.is_absolute() else base / p)
            e.setdefault("nbytes", Path(e["path"]).stat().st_size)
    else:
        from pipelines.corpus import SIZE_CLASSES, build_corpus  # this process may import cv2

        unknown = set(sizes) - set(SIZE_CLASSES)
        if unknown:
            raise SweepError(f"unknown size class {sorted(unknown)}; choose from {SIZE_CLASSES}")
        entries = [dict(name=i.name, size_class=i.size_class, path=str(Path(i.path).resolve()),
                        width=int(i.width), height=int(i.height), nbytes=int(i.nbytes))
                   for i in build_corpus(sizes=tuple(sizes) or SIZE_CLASSES)]
    if sizes:
        entries = [e for e in entries if e["size_class"] in sizes]
        missing = set(sizes) - {e["size_class"] for e in entries}
        if missing:
            raise SweepError(f"the corpus has no images of size class {sorted(missing)}")
    if not entries:
        raise SweepError("the corpus is empty")
    write_json_atomic(entries, run.corpus)
    return entries


def corpus_summary(entries: list[dict]) -> dict:
    by_size: dict = {}
    for e in entries:
        d = by_size.setdefault(e["size_class"], {"count": 0, "bytes": 0, "pixels": 0})
        d["count"] += 1
        d["bytes"] += int(e.get("nbytes") or 0)
        d["pixels"] += int(e.get("width") or 0) * int(e.get("height") or 0)
    return {"images": len(entries), "by_size": {
        s: {"count": d["count"], "mean_bytes": d["bytes"] / d["count"],
            "mean_megapixels": round(d["pixels"] / d["count"] / 1e6, 3)} for s, d in by_size.items()}}


def run_config(argv: list[str], args, schedule, rule, sizes: list[str], rates) -> dict:
    """config.json as a sweep starts: the command, the load, the machine, versions, git."""
    config = {
        "run": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": "running",
                "command": [sys.executable, "-m", "loadtest.sweep", *argv], "cwd": os.getcwd()},
        "load": {"tool": "locust", "user_class": "FastHttpUser", "closed_loop": not rates,
                 "schedule": [{"users": u, "seconds": s} for u, s in schedule.steps],
                 "warmup_seconds": schedule.warmup_seconds, "sizes": sizes,
                 "slo_ms": args.slo_ms, "drain_seconds": args.drain_seconds,
                 "stability": {**rule.to_dict(),
                               "extend_up_to_s": args.stability_max_seconds or None}},
        "machine": machine(), "versions": versions(), "git": git_info(),
    }
    if rates:
        config["load"].update(arrivals=args.arrivals, rates=rates, max_in_flight=args.max_in_flight,
                              seed=args.seed, schedule=[{"rate": r, "seconds": s} for r, (_, s)
                                                        in zip(rates, schedule.steps)])
    return config
