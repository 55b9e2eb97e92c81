"""Admission control of the gateway: a bound on requests admitted but not finished.

Serving systems bound their queue and shed the excess at once (Triton's ``max_queue_size``,
TF Serving's ``max_enqueued_batches``): a request over the bound costs the server a parsed header
and a small JSON answer, never its body. ``AdmissionMiddleware`` (pure ASGI, in front of the whole
app) counts ``POST /v1/infer`` requests from the moment their headers are in until their answer is
sent; the ``max_queued + 1``-th gets ``503 {"error": "overloaded", ...}`` with ``Retry-After``
before anything reads its body. The connection stays usable: uvicorn discards the unread rest of
the body as it arrives (it is never buffered), so a client that is still writing its upload gets
the 503 instead of a reset.

Memory is therefore bounded by design: at most ``max_queued`` bodies (each at most the upload cap)
plus their decoded images on the ``threads`` request threads, on top of the models.

``release_memory`` hands freed heap back to the OS (glibc ``malloc_trim(0)``) when the gateway
goes idle after load, so its RSS returns near its pre-load value; ``rss_bytes`` reads it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from overhead.contract.clock import now_ns as clock_ns  # the spans' clock

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``), -1 when unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return -1


class MemoryReleaser:
    """``malloc_trim(0)`` (glibc) off the event loop, at most once per ``min_interval_s``."""

    def __init__(self, min_interval_s: float = 2.0):
        self.min_interval_s = min_interval_s
        self.trims = 0
        self._last = 0.0
        self._lock = threading.Lock()
        try:
            self._trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):   # not glibc: nothing to do
            self._trim = None

    def maybe_release(self) -> None:
        if self._trim is None or time.monotonic() - self._last < self.min_interval_s:
            return
        self._last = time.monotonic()
        threading.Thread(target=self._run, name="malloc-trim", daemon=True).start()

    def _run(self) -> None:
        with self._lock:
            self._trim(0)
            self.trims += 1


class Admission:
    """The counters: requests in (admitted, not answered yet), admitted and rejected in total."""

    def __init__(self, max_queued: int, max_queue_ms: float = 0.0, retry_after_s: int = 1):
        self.max_queued = max(1, int(max_queued))
        self.max_queue_ms = float(max_queue_ms or 0.0)
        self.retry_after_s = retry_after_s
        self.current = 0
        self.peak = 0
        self.admitted = 0
        self.rejected = 0            # over the bound, answered before the body was read
        self.rejected_queue_time = 0  # admitted, then over the queue-time budget
        self._lock = threading.Lock()

    def try_admit(self) -> bool:
        with self._lock:
            if self.current >= self.max_queued:
                self.rejected += 1
                return False
            self.current += 1
            self.admitted += 1
            self.peak = max(self.peak, self.current)
            return True

    def release(self) -> int:
        with self._lock:
            self.current -= 1
            return self.current

    def over_budget(self, queued_ns: int) -> bool:
        """True (and counted) when a request waited longer than ``max_queue_ms`` for a thread."""
        if self.max_queue_ms <= 0 or queued_ns <= self.max_queue_ms * 1e6:
            return False
        with self._lock:
            self.rejected_queue_time += 1
        return True

    def message(self) -> str:
        return (f"The gateway is at its limit of {self.max_queued} requests in progress "
                f"(--max-queued): retry after {self.retry_after_s} s, or send fewer requests at "
                "once.")

    def stats(self) -> dict:
        return {"in_progress": self.current, "peak": self.peak, "max_queued": self.max_queued,
                "max_queue_ms": self.max_queue_ms or None, "admitted": self.admitted,
                "rejected": self.rejected, "rejected_queue_time": self.rejected_queue_time}


class AdmissionMiddleware:
    """ASGI: bound the ``POST`` requests to ``paths``; ``reject(scope)`` builds the 503 (an ASGI
    response app); ``on_idle()`` runs when the last admitted request is answered.

    An admitted request's ``scope["state"]["admitted_ns"]`` is when its headers were in (wall
    clock); ``on_sent(scope, sent_ns)`` runs once its whole answer has been handed to the
    connection (the gateway records its response span there)."""

    def __init__(self, app, admission: Admission, reject, paths=("/v1/infer",), on_idle=None,
                 on_sent=None):
        self.app, self.admission, self.reject = app, admission, reject
        self.paths, self.on_idle, self.on_sent = frozenset(paths), on_idle, on_sent

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"] not in self.paths):
            return await self.app(scope, receive, send)
        if not self.admission.try_admit():
            return await self.reject(scope)(scope, receive, send)   # the body is never read
        scope.setdefault("state", {})["admitted_ns"] = clock_ns()
        if self.on_sent is not None:
            send = self._timed(scope, send)
        try:
            await self.app(scope, receive, send)
        finally:
            if self.admission.release() == 0 and self.on_idle is not None:
                self.on_idle()

    def _timed(self, scope, send):
        async def timed_send(message):
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.on_sent(scope, clock_ns())
        return timed_send
