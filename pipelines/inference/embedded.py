"""Embedded inference: ONNX Runtime in the calling process, with optional micro-batching.

``OrtSession`` is one ONNX Runtime session with pinned thread counts. ``MicroBatcher`` puts a
model-instance discipline in front of it, like one Triton model instance:

* ``max_batch == 1``: the caller runs the session itself while holding the instance lock. No thread
  hand-off, so it costs next to nothing over ``session.run`` (a lock acquire and three clock reads);
  requests from many threads are still served one at a time, and the time spent waiting for the
  lock is the ``queue`` span.
* ``max_batch > 1``: callers enqueue single items; a background thread takes the first item, waits
  at most ``max_delay_ms`` for more (up to ``max_batch``), runs them as one batch and hands each
  caller its rows. ``queue`` = enqueue -> batch start, ``inference`` = batch start -> end.

Spans the caller records from an ``InferResult``: ``queue`` = ``enqueue_ns -> start_ns`` and
``inference`` = ``start_ns -> end_ns`` with attrs ``{"batch": batch_size}``.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from overhead.contract.clock import now_ns

log = logging.getLogger(__name__)


class OrtSession:
    """One ONNX Runtime CPU session; input name, shape and output names come from the model.

    ``intra_op_threads``/``inter_op_threads`` are pinned (the machine's cores are shared by the
    load generator, the gateway and the workers). Spinning is off by default so idle ORT pool
    threads do not burn a shared core.
    """

    def __init__(self, onnx_path: str | Path, intra_op_threads: int = 1, inter_op_threads: int = 1,
                 allow_spinning: bool = False, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        self.onnx_path = str(onnx_path)
        self.intra_op_threads = int(intra_op_threads)
        self.inter_op_threads = int(inter_op_threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = self.inter_op_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = "1" if allow_spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        self._sess = ort.InferenceSession(self.onnx_path, sess_options=opts, providers=list(providers))
        inputs = self._sess.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{self.onnx_path}: expected one input, the model has "
                             f"{[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        # Symbolic dims (batch, sometimes H/W) are kept as None.
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self.input_dtype = _ORT_TYPES.get(inputs[0].type, np.float32)
        self.output_names = [o.name for o in self._sess.get_outputs()]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model insists on, or None if the batch dim is dynamic."""
        return self.input_shape[0] if self.input_shape else None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outs = self._sess.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outs))

    def __repr__(self) -> str:
        return (f"OrtSession({Path(self.onnx_path).name!r}, input={self.input_name}{self.input_shape}, "
                f"threads={self.intra_op_threads}/{self.inter_op_threads})")


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(float16)": np.float16,
              "tensor(int32)": np.int32, "tensor(int64)": np.int64}


@dataclass(slots=True)
class InferResult:
    outputs: dict            # output name -> this item's rows (batch dim removed by ``infer``)
    enqueue_ns: int
    start_ns: int
    end_ns: int
    batch_size: int


class _Pending:
    __slots__ = ("x", "enqueue_ns", "done", "result", "error")

    def __init__(self, x: np.ndarray, enqueue_ns: int):
        self.x = x
        self.enqueue_ns = enqueue_ns
        self.done = threading.Event()
        self.result: InferResult | None = None
        self.error: BaseException | None = None


class BatcherClosed(RuntimeError):
    """``infer`` was called on (or was waiting in) a closed ``MicroBatcher``."""


class MicroBatcher:
    """Serves single items from many threads through one session (one "model instance").

    ``infer(x)``: ``x`` is one item, shaped like the model input without the batch dim (a leading
    batch dim of 1 is accepted too). Blocks; returns this item's output rows. An exception raised
    by the session is re-raised in every caller whose item was in the failing batch.
    ``infer_batch(xs)`` runs an already-formed batch as one call (the classifier worker batches
    the crops it consumed itself) under the same instance lock.
    """

    def __init__(self, session: OrtSession, max_batch: int = 1, max_delay_ms: float = 0.0):
        self.session = session
        max_batch = max(1, int(max_batch))
        fixed = session.fixed_batch
        if fixed is not None and max_batch > fixed:
            log.warning("%s has a fixed batch dim %d: max_batch %d lowered to %d",
                        session, fixed, max_batch, fixed)
            max_batch = fixed
        self.max_batch = max_batch
        self.max_delay_ns = int(max(0.0, float(max_delay_ms)) * 1e6)
        self._instance = threading.Lock()       # one batch runs at a time
        self._rank = len(session.input_shape) if session.input_shape else None
        self._closed = False
        self._cv = threading.Condition()
        self._pending: deque[_Pending] = deque()
        self._thread = None
        if self.max_batch > 1:
            self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
            self._thread.start()

    # -- caller side -------------------------------------------------------------------------
    def _as_item(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if self._rank is not None and x.ndim == self._rank:
            if x.shape[0] != 1:
                raise ValueError(f"infer takes one item, got a batch of {x.shape[0]}: use infer_batch")
            x = x[0]
        return x

    def infer(self, x: np.ndarray) -> InferResult:
        if self._closed:
            raise BatcherClosed("MicroBatcher is closed")
        x = self._as_item(x)
        if self.max_batch == 1:
            enq = now_ns()
            with self._instance:
                start = now_ns()
                outs = self.session.run(x[None])
                end = now_ns()
            return InferResult({k: v[0] for k, v in outs.items()}, enq, start, end, 1)
        item = _Pending(x, now_ns())
        with self._cv:
            if self._closed:
                raise BatcherClosed("MicroBatcher is closed")
            self._pending.append(item)
            self._cv.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def infer_batch(self, batch: np.ndarray) -> InferResult:
        """Run ``batch`` (with its batch dim) as one call; outputs keep the batch dim."""
        if self._closed:
            raise BatcherClosed("MicroBatcher is closed")
        batch = np.asarray(batch)
        enq = now_ns()
        with self._instance:
            start = now_ns()
            outs = self.session.run(batch)
            end = now_ns()
        return InferResult(outs, enq, start, end, int(batch.shape[0]))

    # -- batching thread ---------------------------------------------------------------------
    def _take_batch(self) -> list[_Pending] | None:
        with self._cv:
            while not self._pending:
                if self._closed:
                    return None
                self._cv.wait()
            if self.max_delay_ns > 0 and len(self._pending) < self.max_batch:
                deadline = self._pending[0].enqueue_ns + self.max_delay_ns
                while len(self._pending) < self.max_batch and not self._closed:
                    remaining = (deadline - now_ns()) / 1e9
                    if remaining <= 0:
                        break
                    self._cv.wait(remaining)
            n = min(self.max_batch, len(self._pending))
            return [self._pending.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while True:
            items = self._take_batch()
            if items is None:
                return
            try:
                batch = np.stack([it.x for it in items]) if len(items) > 1 else items[0].x[None]
                with self._instance:
                    start = now_ns()
                    outs = self.session.run(batch)
                    end = now_ns()
                n = len(items)
                for i, it in enumerate(items):
                    it.result = InferResult({k: v[i] for k, v in outs.items()},
                                            it.enqueue_ns, start, end, n)
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                for it in items:
                    it.error = exc
            for it in items:
                it.done.set()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._cv:  # anything left (close raced with an enqueue): fail it, never hang a caller
            while self._pending:
                it = self._pending.popleft()
                it.error = BatcherClosed("MicroBatcher closed before this item ran")
                it.done.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
