"""Headless Locust for the sweep: one process running ``loadtest/locustfile.py`` with the stepped
shape, or (``--locust-workers N``) a master plus N ``--worker`` processes on this machine. Each is
a ``deploy.processes.ManagedProcess`` (own process group, log in RUN_DIR/logs, stopped by PID).
The generator's CPU is the sum over all of them."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from deploy.processes import ManagedProcess, free_port
from loadtest.cpu import cpu_seconds
from loadtest.errors import SweepError
from loadtest.progress import Progress

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"


def locust_command(run, schedule, rule, sizes: list[str], host: str, args, rates) -> list[str]:
    """``python -m locust`` headless against ``host``, the sweep's steps and stability rule."""
    spec = ",".join(f"{u}:{sec:g}" for u, sec in schedule.steps)
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
           "--csv", str(run.locust_csv_prefix.resolve()), "--csv-full-history",
           "--only-summary", "--loglevel", "INFO",
           "--overhead-run-dir", str(run.path.resolve()),
           "--overhead-manifest", str(run.corpus.resolve()),
           "--overhead-sizes", ",".join(sizes),
           "--overhead-steps", spec, "--overhead-step-seconds", f"{schedule.steps[0][1]:g}",
           "--overhead-warmup-seconds", f"{schedule.warmup_seconds:g}",
           "--overhead-stability-window", f"{rule.window_s:g}",
           "--overhead-min-requests", str(rule.min_requests),
           "--overhead-stability-max-seconds", f"{args.stability_max_seconds:g}",
           "--overhead-drain-seconds", f"{args.drain_seconds:g}"]
    if rates:
        cmd += ["--overhead-arrivals", args.arrivals,
                "--overhead-rates", ",".join(f"{r:g}" for r in rates),
                "--overhead-max-in-flight", str(args.max_in_flight),
                "--overhead-seed", str(args.seed)]
    return cmd


def worker_command(run, sizes: list[str], master_port: int) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
            "--master-host", "127.0.0.1", "--master-port", str(master_port), "--loglevel", "INFO",
            "--overhead-manifest", str(run.corpus.resolve()), "--overhead-sizes", ",".join(sizes)]


class LocustRun:
    """The Locust process(es) of one sweep."""

    def __init__(self, cmd: list[str], logs: Path, sizes: list[str], run, n_workers: int = 0):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
        self.workers: list[ManagedProcess] = []
        if n_workers:
            port = free_port()
            cmd = [*cmd, "--master", "--expect-workers", str(n_workers),
                   "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)]
            self.workers = [ManagedProcess(f"locust-worker-{i}", worker_command(run, sizes, port),
                                           logs / f"locust-worker-{i}.log", env=env,
                                           stop_timeout_s=10)
                            for i in range(n_workers)]
        self.cmd = cmd
        self.master = ManagedProcess("locust", cmd, logs / "locust.log", env=env,
                                     stop_timeout_s=15)

    def start(self) -> "LocustRun":
        self.master.spawn()
        for w in self.workers:
            w.spawn()
        return self

    def config(self) -> dict:
        """For config.json ``locust``."""
        out = {"pid": self.master.pid}
        if self.workers:
            out.update(workers=len(self.workers), worker_pids=[w.pid for w in self.workers],
                       worker_commands=[w.argv for w in self.workers])
        return out

    def alive(self) -> bool:
        return self.master.alive()

    def cpu_seconds(self) -> float | None:
        """Master + workers (None if any cannot be read)."""
        total = cpu_seconds(self.master.pid)
        for w in self.workers:
            wc = cpu_seconds(w.pid)
            total = None if total is None or wc is None else total + wc
        return total

    def watch(self, schedule, stability_max_s: float, interval_s: float, progress_path: Path,
              sample) -> None:
        """Until the master exits: ``sample(time_ns)`` every ``interval_s`` (it may raise), show
        the progress Locust writes to ``progress_path``; SweepError if it overruns."""
        progress = Progress(schedule.total_seconds, len(schedule.steps))
        t0 = time.monotonic()
        extra = sum(max(stability_max_s - sec, 0.0) for _, sec in schedule.steps)
        limit = schedule.total_seconds + extra + 120
        try:
            while self.alive():
                sample(time.time_ns())
                progress.update(_read_state(progress_path), time.monotonic() - t0)
                if time.monotonic() - t0 > limit:
                    raise SweepError(f"Locust did not finish within {limit:.0f} s; "
                                     f"see {self.master.log_path}")
                time.sleep(interval_s)
        finally:
            progress.close()

    def stop(self) -> tuple[int | None, list[int | None]]:
        """Exit codes of the master and of the workers."""
        code = self.master.stop()
        return code, [w.stop() for w in self.workers]


def _read_state(path: Path) -> dict:
    """The locustfile's progress file (absent or half-written: nothing yet)."""
    try:
        return json.loads(path.read_text()) or {}
    except (OSError, ValueError):
        return {}
