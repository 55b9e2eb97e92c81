"""A closed-loop load for the studies: ``n`` calls from ``concurrency`` threads, each thread
sending its next call when the previous one answered (the study's "10 client threads")."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Completion:
    start_s: float      # seconds since the load started (perf_counter)
    end_s: float
    result: Any

    @property
    def ms(self) -> float:
        return (self.end_s - self.start_s) * 1e3


def closed_loop(call: Callable[[], Any], n: int, concurrency: int) -> tuple[list[Completion], list[str], float]:
    """Run ``call`` ``n`` times from ``concurrency`` threads: (completions in order of ending,
    errors as reprs, wall seconds). A failed call is counted, not retried."""
    lock, left, done, errors = threading.Lock(), [n], [], []
    t0 = time.perf_counter()

    def worker():
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            s0 = time.perf_counter()
            try:
                r = call()
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(e))
                continue
            s1 = time.perf_counter()
            with lock:
                done.append(Completion(s0 - t0, s1 - t0, r))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(done, key=lambda c: c.end_s), errors, time.perf_counter() - t0
