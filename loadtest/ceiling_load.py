"""Closed-loop drivers of the inference-only ceiling (``loadtest/ceiling.py``): models alone on
pre-decoded tensors, a fixed window after a warm-up, the measuring process's CPU over the window.

    detect_alone(backend, inputs, callers, ...)          images/s through one detector backend
    classify_alone(backends, crops, batch, ...)          crops/s, one thread per classifier instance
    mix(detector, classifiers, items, batch, ...)        requests/s: each request one detection,
                                                         then its crops through a bounded queue to
                                                         the classifier threads (batched up to
                                                         ``batch`` as the workers batch what they
                                                         consume), done when its last crop is

Threads are enough: ONNX Runtime and the server clients release the GIL while they run.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

clock = time.monotonic


@dataclass
class Result:
    units: int          # images / crops / requests finished inside the window
    calls: int          # inference calls finished inside the window
    seconds: float
    cpu_s: float | None

    @property
    def rate(self) -> float:
        return self.units / self.seconds if self.seconds > 0 else 0.0


class Window:
    """Counts what finishes in ``[start + warmup, start + warmup + seconds)``; ``wait`` samples
    the CPU of this process and of ``cpu_pids`` (an inference server, with its children) at both
    ends of the window."""

    def __init__(self, warmup_s: float, seconds: float, cpu_pids=()):
        self.cpu_pids = tuple(cpu_pids)
        self.start = clock() + max(0.0, warmup_s)
        self.end = self.start + max(0.01, seconds)
        self.units = self.calls = 0
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def over(self) -> bool:
        return self.error is not None or clock() >= self.end

    def done(self, units: int, calls: int = 1) -> None:
        t = clock()
        if self.start <= t < self.end:
            with self._lock:
                self.units += units
                self.calls += calls

    def fail(self, exc: BaseException) -> None:
        self.error = self.error or exc

    def wait(self) -> Result:
        cpu0 = _sleep_until_cpu(self.start, self.cpu_pids)
        cpu1 = _sleep_until_cpu(self.end, self.cpu_pids)
        if self.error is not None:
            raise self.error
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        return Result(self.units, self.calls, self.end - self.start, cpu)


def _sleep_until_cpu(t: float, pids) -> float | None:
    import psutil

    from loadtest.cpu import cpu_seconds

    while (left := t - clock()) > 0:
        time.sleep(min(left, 0.05))
    try:
        c = psutil.Process().cpu_times()
    except psutil.Error:
        return None
    servers = [cpu_seconds(pid) for pid in pids]
    return None if None in servers else c.user + c.system + sum(servers)


def _run(targets, window: Window) -> Result:
    def guarded(fn):
        def body():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised by window.wait
                window.fail(exc)
        return body

    threads = [threading.Thread(target=guarded(fn), daemon=True, name=f"ceiling-{i}")
               for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    try:
        return window.wait()
    finally:
        window.end = min(window.end, clock())   # stop the callers even when wait raised
        for t in threads:
            t.join(30)


def detect_alone(backend, inputs: list[np.ndarray], callers: int, warmup_s: float,
                 seconds: float, cpu_pids=()) -> Result:
    w = Window(warmup_s, seconds, cpu_pids)

    def caller(offset: int):
        def loop():
            i = offset
            while not w.over():
                backend.infer(inputs[i % len(inputs)])
                w.done(1)
                i += 1
        return loop

    return _run([caller(c) for c in range(max(1, callers))], w)


def classify_alone(backends: list, crops: list[np.ndarray], batch: int, warmup_s: float,
                   seconds: float, cpu_pids=()) -> Result:
    w = Window(warmup_s, seconds, cpu_pids)
    batch = max(1, batch)
    stacked = np.stack([crops[i % len(crops)] for i in range(batch)])

    def instance(backend):
        def loop():
            while not w.over():
                backend.infer_batch(stacked)
                w.done(batch)
        return loop

    return _run([instance(b) for b in backends], w)


class _Request:
    __slots__ = ("left",)

    def __init__(self, left: int):
        self.left = left


def mix(detector, classifiers: list, items: list[tuple[np.ndarray, list[np.ndarray]]],
        batch: int, callers: int, warmup_s: float, seconds: float, cpu_pids=()) -> Result:
    """``items``: (detector input, [classifier inputs of its crops]) per image, cycled."""
    w = Window(warmup_s, seconds, cpu_pids)
    batch = max(1, batch)
    most = max((len(c) for _, c in items), default=1)
    crops: queue.Queue = queue.Queue(maxsize=4 * batch * max(1, len(classifiers)) + most)
    lock = threading.Lock()

    def detect_caller(offset: int):
        def loop():
            i = offset
            while not w.over():
                x, cs = items[i % len(items)]
                i += 1
                detector.infer(x)
                if not cs:
                    w.done(1, 0)
                    continue
                req = _Request(len(cs))
                for c in cs:
                    while not w.over():
                        try:
                            crops.put((req, c), timeout=0.05)
                            break
                        except queue.Full:
                            pass
        return loop

    def classifier(backend):
        def loop():
            while not w.over():
                try:
                    got = [crops.get(timeout=0.05)]
                except queue.Empty:
                    continue
                while len(got) < batch:
                    try:
                        got.append(crops.get_nowait())
                    except queue.Empty:
                        break
                backend.infer_batch(np.stack([c for _, c in got]))
                finished = 0
                with lock:
                    for req, _ in got:
                        req.left -= 1
                        finished += req.left == 0
                if finished:
                    w.done(finished, 0)
        return loop

    targets = [detect_caller(c) for c in range(max(1, callers))]
    return _run(targets + [classifier(b) for b in classifiers], w)
