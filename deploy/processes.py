"""Stopping the processes Overhead starts: by PID, politely first, then their whole group."""
from __future__ import annotations

import os
import signal
import subprocess


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0, sig: int = signal.SIGTERM,
                 kill_group: bool = True) -> int | None:
    """Send ``sig`` to ``proc``, wait ``timeout_s``, then SIGKILL it. With ``kill_group`` also
    SIGKILL its process group (started with ``start_new_session``), so nothing it spawned — a
    Triton Python stub, a uvicorn worker — outlives it. Returns the exit code."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass
    if kill_group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return proc.returncode
