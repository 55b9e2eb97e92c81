"""What the sweep shows and samples while Locust runs: a progress bar (rich on a terminal, plain
lines otherwise) and the gateway's broker queue depth (``GET /v1/stats``) in a thread."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def http_get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Progress:
    """A rich progress bar on a terminal, plain lines otherwise (every step change and 10 s)."""

    def __init__(self, total_s: float, n_steps: int):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total_s, self.n_steps = total_s, n_steps
        self.bar = None
        self._last_line = 0.0
        self._last_step = None
        if self.console.is_terminal:
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                    TextColumn("/ {task.total:.0f} s"), console=self.console)
            self.task = self.bar.add_task("starting Locust", total=total_s)
            self.bar.start()

    def update(self, state: dict, elapsed_s: float) -> None:
        step, users = state.get("step"), state.get("users", 0)
        counts = f"{state.get('requests', 0)} requests · {state.get('failures', 0)} failed"
        if state.get("finished"):
            desc = f"finishing · {counts}"
        elif step is None:
            desc = "starting Locust"
        else:
            desc = f"step {step + 1}/{self.n_steps} · {users} user{'' if users == 1 else 's'} · {counts}"
        if self.bar is not None:
            self.bar.update(self.task, description=desc, completed=min(elapsed_s, self.total_s))
        elif step != self._last_step or time.monotonic() - self._last_line >= 10:
            self.console.print(f"[{elapsed_s:5.0f}/{self.total_s:.0f} s] {desc}", highlight=False)
            self._last_line = time.monotonic()
        self._last_step = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class DepthSampler:
    """A thread polling the gateway's ``GET /v1/stats`` (``broker.depth`` per topic)."""

    def __init__(self, host: str, interval_s: float):
        import threading

        self.host, self.interval_s = host, interval_s
        self.rows: list[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="depth-sampler", daemon=True)

    def start(self) -> "DepthSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                st = http_get_json(self.host + "/v1/stats", timeout=max(2.0, self.interval_s))
            except (urllib.error.URLError, OSError, ValueError):
                continue
            b = st.get("broker") or {}
            t = int(st.get("time_ns") or time.time_ns())
            for topic, depth in (b.get("depth") or {}).items():
                self.rows.append((t, str(b.get("name")), topic, int(depth)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def write(self, path) -> None:
        """The samples as Parquet (time_ns, broker, topic, depth)."""
        from overhead.contract.rundir import table_from_rows, write_parquet_atomic

        write_parquet_atomic(table_from_rows(self.rows, (
            ("time_ns", "int64"), ("broker", "string"), ("topic", "string"),
            ("depth", "int64"))), path)
