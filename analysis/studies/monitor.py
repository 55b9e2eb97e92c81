"""Hardware monitor for the studies: the system features "On Serving Image Classification Models"
(WoSC '23) recorded around every timed batch, from psutil (and pynvml when a GPU is present).

    mon = Monitor()                          # this process; GPU 0 through pynvml if it loads
    with mon.around(model="m", batch=8) as rec:
        sess.run(x)                          # only this block is timed (rec["ms"])
    mon.frame().to_csv(run_dir / "monitor.csv")

One record per timed block: the tags, ``ms`` (perf_counter around the block, the two snapshots
outside it), and the features:

* counters as deltas over the block (``d_`` prefix): this process's voluntary and involuntary
  context switches, user/system CPU seconds; the system's context switches and interrupts; disk
  read/write bytes and operations; network bytes/packets sent and received;
* levels (``_before``/``_after`` or the value at the end): process RSS and VMS (MiB), thread
  count, system CPU utilisation over the block (%, psutil's since-last-call), this process's
  CPU % over the block, memory utilisation (%), available memory (MiB), load averages 1/5/15;
* GPU (only when pynvml initialises): memory used/free (MiB), utilisation gpu/memory (%), SM and
  memory clocks (MHz), temperature (C), power (W), before and after.

``Monitor(keep_before=True)`` also records the snapshot taken before the block (``pre_`` prefix:
what is known before a call starts, e.g. to predict its time). ``snapshot()`` costs a few hundred microseconds (``snapshot_ms`` records it per block); it is
taken outside the timed block. ``Sampler`` is a background thread taking ``snapshot()`` every
``interval`` seconds, for traces (e.g. CPU utilisation during training).
"""
from __future__ import annotations

import contextlib
import threading
import time

import psutil

MIB = 2 ** 20
COUNTERS = ("proc_ctx_vol", "proc_ctx_invol", "proc_cpu_user_s", "proc_cpu_sys_s", "sys_ctx_switches",
            "sys_interrupts", "disk_read_bytes", "disk_write_bytes", "disk_read_count",
            "disk_write_count", "net_bytes_sent", "net_bytes_recv", "net_packets_sent",
            "net_packets_recv")
GPU_FIELDS = ("gpu_mem_used_mib", "gpu_mem_free_mib", "gpu_util_pct", "gpu_mem_util_pct", "gpu_sm_clock_mhz",
              "gpu_mem_clock_mhz", "gpu_temp_c", "gpu_power_w")


def _nvml_handle(index: int):
    """(pynvml module, device handle) or (None, None) when pynvml or a GPU is missing."""
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # noqa: BLE001 - no pynvml, no driver, no GPU: CPU-only features
        return None, None


class Monitor:
    def __init__(self, pid: int | None = None, gpu_index: int = 0, gpu: bool = True,
                 keep_before: bool = False):
        self.proc = psutil.Process(pid)
        self.keep_before = keep_before           # also record the whole snapshot before, as pre_*
        self.nvml, self.gpu_handle = _nvml_handle(gpu_index) if gpu else (None, None)
        self.records: list[dict] = []
        psutil.cpu_percent(interval=None)          # prime the since-last-call counters
        self.proc.cpu_percent(interval=None)

    @property
    def has_gpu(self) -> bool:
        return self.gpu_handle is not None

    def _gpu(self) -> dict:
        nv, h = self.nvml, self.gpu_handle
        mem, util = nv.nvmlDeviceGetMemoryInfo(h), nv.nvmlDeviceGetUtilizationRates(h)
        return {"gpu_mem_used_mib": mem.used / MIB, "gpu_mem_free_mib": mem.free / MIB,
                "gpu_util_pct": util.gpu, "gpu_mem_util_pct": util.memory,
                "gpu_sm_clock_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                "gpu_mem_clock_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
                "gpu_temp_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
                "gpu_power_w": nv.nvmlDeviceGetPowerUsage(h) / 1e3}

    def snapshot(self) -> dict:
        """Every feature's current value (counters as running totals)."""
        p = self.proc
        with p.oneshot():
            ctx, cpu, mem, nthreads = p.num_ctx_switches(), p.cpu_times(), p.memory_info(), p.num_threads()
        st, vm = psutil.cpu_stats(), psutil.virtual_memory()
        s = {"proc_ctx_vol": ctx.voluntary, "proc_ctx_invol": ctx.involuntary,
             "proc_cpu_user_s": cpu.user, "proc_cpu_sys_s": cpu.system,
             "proc_rss_mib": mem.rss / MIB, "proc_vms_mib": mem.vms / MIB, "proc_threads": nthreads,
             "sys_ctx_switches": st.ctx_switches, "sys_interrupts": st.interrupts,
             "mem_util_pct": vm.percent, "mem_available_mib": vm.available / MIB}
        s["load1"], s["load5"], s["load15"] = psutil.getloadavg()
        disk = psutil.disk_io_counters()
        if disk is not None:
            s.update(disk_read_bytes=disk.read_bytes, disk_write_bytes=disk.write_bytes,
                     disk_read_count=disk.read_count, disk_write_count=disk.write_count)
        net = psutil.net_io_counters()
        if net is not None:
            s.update(net_bytes_sent=net.bytes_sent, net_bytes_recv=net.bytes_recv,
                     net_packets_sent=net.packets_sent, net_packets_recv=net.packets_recv)
        if self.has_gpu:
            s.update(self._gpu())
        return s

    def features(self, before: dict, after: dict) -> dict:
        """One block's features from the snapshots taken around it."""
        f = {f"d_{k}": after[k] - before[k] for k in COUNTERS if k in before and k in after}
        for k in ("proc_rss_mib", "proc_vms_mib", "proc_threads", *GPU_FIELDS):
            if k in before:
                f[f"{k}_before"], f[f"{k}_after"] = before[k], after[k]
        for k in ("mem_util_pct", "mem_available_mib", "load1", "load5", "load15"):
            f[k] = after[k]
        return f

    @contextlib.contextmanager
    def around(self, **tags):
        """Time the block and record the features around it; yields the record (``ms`` set after)."""
        rec = dict(tags)
        s0 = time.perf_counter()
        before = self.snapshot()
        psutil.cpu_percent(interval=None)
        self.proc.cpu_percent(interval=None)
        snap_ms = (time.perf_counter() - s0) * 1e3
        t0 = time.perf_counter()
        try:
            yield rec
        finally:
            rec["ms"] = (time.perf_counter() - t0) * 1e3
            rec["sys_cpu_pct"] = psutil.cpu_percent(interval=None)
            rec["proc_cpu_pct"] = self.proc.cpu_percent(interval=None)
            rec.update(self.features(before, self.snapshot()))
            rec["snapshot_ms"] = snap_ms
            if self.keep_before:
                rec.update({f"pre_{k}": v for k, v in before.items()})
            self.records.append(rec)

    def frame(self):
        import pandas as pd
        return pd.DataFrame(self.records)


class Sampler:
    """Background snapshots every ``interval`` s (with system and process CPU % since the last one)."""

    def __init__(self, monitor: Monitor | None = None, interval: float = 0.5):
        self.mon = monitor or Monitor()
        self.interval = interval
        self.rows: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="monitor-sampler")
        self._t0 = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            row = {"t_s": time.perf_counter() - self._t0, "sys_cpu_pct": psutil.cpu_percent(interval=None),
                   "proc_cpu_pct": self.mon.proc.cpu_percent(interval=None)}
            row.update(self.mon.snapshot())
            self.rows.append(row)

    def __enter__(self):
        self._t0 = time.perf_counter()
        psutil.cpu_percent(interval=None)
        self.mon.proc.cpu_percent(interval=None)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def frame(self):
        import pandas as pd
        return pd.DataFrame(self.rows)
