"""CPU the sweep's processes use: cumulative CPU seconds sampled with psutil, turned into cores
per measured step window (linear interpolation between samples, ``np.interp``)."""
from __future__ import annotations

import numpy as np

from overhead.contract.rundir import table_from_rows, write_parquet_atomic


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user+system) of a process, its reaped children and its live descendants."""
    import psutil

    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for c in p.children(recursive=True):
            try:
                ct = c.cpu_times()
                total += ct.user + ct.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return None


def cpu_at(samples: list[tuple], t_ns: int, col: int) -> float | None:
    """Column ``col`` of ``samples`` (``(time_ns, ...)``) at ``t_ns``, interpolated (held
    constant outside the sampled range); ``None`` without a sample."""
    pts = [(s[0], s[col]) for s in samples if s[col] is not None]
    if not pts:
        return None
    t, v = zip(*pts)
    return float(np.interp(t_ns, t, v))


def cpu_per_step(samples: list[tuple], steps: list[dict]) -> list[dict]:
    """Cores used by Locust and by the gateway over each step's measured window.
    ``samples`` are ``(time_ns, locust_cpu_s, gateway_cpu_s)``."""
    out = []
    for s in steps:
        a, b = s["measure_start_ns"], s["end_ns"]
        wall = max(b - a, 1) / 1e9
        row = dict(step=int(s["step"]), users=int(s["users"]), window_s=round(wall, 3))
        for col, name in ((1, "locust_cores"), (2, "gateway_cores")):
            va, vb = cpu_at(samples, a, col), cpu_at(samples, b, col)
            row[name] = None if va is None or vb is None else round((vb - va) / wall, 4)
        out.append(row)
    return out


def write_cpu_tables(run, samples: list[tuple], proc_samples: list[tuple],
                     steps: list[dict]) -> tuple[list[dict], dict]:
    """Write RUN_DIR/cpu.parquet (Locust, gateway) and process_cpu.parquet (workers, broker and
    inference servers); return the cores per step of both, for config.json."""
    if samples:
        write_parquet_atomic(table_from_rows(
            samples, (("time_ns", "int64"), ("locust_cpu_s", "float64"), ("gateway_cpu_s", "float64"))),
            run.cpu)
    per = {}
    if proc_samples:
        write_parquet_atomic(table_from_rows(proc_samples, (
            ("time_ns", "int64"), ("process", "string"), ("cpu_s", "float64"))),
            run.path / "process_cpu.parquet")
        for name in sorted({n for _, n, _ in proc_samples}):
            pts = [(t, None, c) for t, n, c in proc_samples if n == name]
            per[name] = [{"step": c["step"], "users": c["users"], "cores": c["gateway_cores"]}
                         for c in cpu_per_step(pts, steps)]
    return cpu_per_step(samples, steps), per
