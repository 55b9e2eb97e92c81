"""Shared run-directory/report helper for the studies.

``Study(name, out, args)`` creates ``RUN_DIR`` (default ``runs/<name>-<time>``) with ``plots/``;
``table(df, name, title)`` writes ``<name>.csv`` and adds a markdown table to the report;
``text(...)``/``plot(fig, name, title)`` add sections; ``finish()`` writes ``report.md`` and
``config.json`` including the process CPU time (user + sys, children included) over the wall
time, the load average at start and end, and thread settings. Nothing heavy at import.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pin_threads(n: int) -> None:
    """Pin BLAS/OpenMP thread pools of this process (before numpy-heavy imports where possible)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = str(n)
    try:
        import cv2
        cv2.setNumThreads(n)
    except Exception:  # noqa: BLE001 - cv2 optional here
        pass


def cpu_times() -> dict:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"user_s": s.ru_utime + c.ru_utime, "sys_s": s.ru_stime + c.ru_stime,
            "max_rss_mib": s.ru_maxrss / 1024}


def rss_mib() -> float:
    """Current resident set size of this process (``/proc/self/statm``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _git_rev() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def md_table(df, floatfmt: str = ".3g") -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append("" if v != v else format(v, floatfmt))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class Study:
    def __init__(self, name: str, out: str | os.PathLike | None, args=None, threads: int | None = None):
        self.name = name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.dir = Path(out) if out else REPO / "runs" / f"{name}-{stamp}"
        (self.dir / "plots").mkdir(parents=True, exist_ok=True)
        self.sections: list[str] = []
        self.args = vars(args) if args is not None and hasattr(args, "__dict__") else (args or {})
        self.threads = threads
        self.extra: dict = {}
        self._wall0 = time.perf_counter()
        self._cpu0 = cpu_times()
        self._load0 = os.getloadavg()

    def text(self, s: str) -> None:
        self.sections.append(s.rstrip() + "\n")

    def table(self, df, name: str, title: str | None = None, floatfmt: str = ".3g") -> Path:
        path = self.dir / f"{name}.csv"
        df.to_csv(path, index=False)
        self.sections.append((f"## {title}\n\n" if title else "") + md_table(df, floatfmt)
                             + f"\n\n(`{name}.csv`)\n")
        return path

    def plot(self, fig, name: str, title: str = "") -> Path:
        path = self.dir / "plots" / f"{name}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        import matplotlib.pyplot as plt
        plt.close(fig)
        self.sections.append(f"![{title or name}](plots/{name}.png)\n")
        return path

    def finish(self, print_report: bool = True) -> Path:
        wall = time.perf_counter() - self._wall0
        c1 = cpu_times()
        cpu = (c1["user_s"] - self._cpu0["user_s"]) + (c1["sys_s"] - self._cpu0["sys_s"])
        load1 = os.getloadavg()
        resources = {"wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2),
                     "process_cpu_cores": round(cpu / wall, 2) if wall > 0 else None,
                     "max_rss_mib": round(c1["max_rss_mib"], 1), "cpu_count": os.cpu_count(),
                     "loadavg_start": [round(x, 2) for x in self._load0],
                     "loadavg_end": [round(x, 2) for x in load1]}
        config = {"study": self.name, "args": {k: (v if isinstance(v, (int, float, str, bool, list,
                                                                         type(None))) else str(v))
                                                for k, v in self.args.items()},
                  "threads": self.threads, "python": sys.version.split()[0],
                  "platform": platform.platform(), "git_rev": _git_rev(),
                  "versions": _versions(), "resources": resources, **self.extra}
        (self.dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
        head = (f"# Study: {self.name}\n\nRun `{self.dir}`; {time.strftime('%Y-%m-%d %H:%M:%S')}; "
                f"threads pinned to {self.threads}; process CPU {cpu:.1f} s over {wall:.1f} s wall "
                f"= {resources['process_cpu_cores']} cores (children included); max RSS "
                f"{resources['max_rss_mib']:.0f} MiB; load average {self._load0[0]:.2f} at start, "
                f"{load1[0]:.2f} at end on {os.cpu_count()} CPUs (others may share them).\n")
        report = "\n".join([head] + self.sections)
        (self.dir / "report.md").write_text(report)
        if print_report:
            print(report)
            print(f"report: {self.dir / 'report.md'}")
        return self.dir / "report.md"


def _versions() -> dict:
    from importlib import metadata
    out = {}
    for pkg in ("numpy", "onnxruntime", "opencv-python-headless", "pillow", "simplejpeg",
                "tensorflow", "keras", "tritonclient", "mlxtend", "nvidia-dali-cuda120"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
