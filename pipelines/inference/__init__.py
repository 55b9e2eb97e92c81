"""Inference backends behind one small interface and a factory (perf_analyzer style).

A backend serves one model. ``infer(item)`` takes one preprocessed item (no batch dim) and
returns an ``InferResult`` (this item's output rows, enqueue/start/end ns, batch size);
``infer_batch(batch)`` runs a formed batch. Callers record ``queue`` (enqueue -> start) and
``inference`` (start -> end, ``{"batch": n}``) spans from it.

``embedded`` (ONNX Runtime in-process), ``triton`` (a Triton server client, see
``pipelines/inference/triton.py``) and ``tfserving`` (TF Serving REST/gRPC client,
``pipelines/inference/tfserving.py``); others register here with ``register_backend``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from pipelines.inference.embedded import BatcherClosed, InferResult, MicroBatcher, OrtSession


class InferenceBackend(ABC):
    kind: str = "backend"
    model_name: str = ""
    input_hw: tuple[int, int] = (0, 0)
    batch_limit: int | None = None   # most items ``infer_batch`` takes in one call (None: any)

    @abstractmethod
    def infer(self, x: np.ndarray, request_id: str | None = None) -> InferResult:
        """One item (shaped like the model input without the batch dim); blocking.
        ``request_id`` is passed on to servers that take one (Triton's request id)."""

    @abstractmethod
    def infer_batch(self, batch: np.ndarray, request_id: str | None = None) -> InferResult:
        """A formed batch ``[n, ...]``; outputs keep the batch dim. ``request_id``: as for
        ``infer`` (a server's request id, e.g. ``"<rid>:<crop>|..."`` from the worker)."""

    def describe(self) -> dict:
        return {"backend": self.kind, "model": self.model_name}

    def close(self) -> None:
        pass


class EmbeddedBackend(InferenceBackend):
    """ONNX Runtime in this process: ``OrtSession`` + ``MicroBatcher``."""

    kind = "embedded"

    def __init__(self, model_info, intra_op_threads: int = 1, inter_op_threads: int = 1,
                 max_batch: int = 1, max_delay_ms: float = 0.0):
        self.model_name = getattr(model_info, "name", "")
        self.input_hw = tuple(model_info.input_hw)
        self.session = OrtSession(model_info.onnx_path, intra_op_threads, inter_op_threads)
        self.batch_limit = self.session.fixed_batch   # a model exported with batch 1 takes 1
        self.batcher = MicroBatcher(self.session, max_batch=max_batch, max_delay_ms=max_delay_ms)

    def infer(self, x: np.ndarray, request_id: str | None = None) -> InferResult:
        return self.batcher.infer(x)

    def infer_batch(self, batch: np.ndarray, request_id: str | None = None) -> InferResult:
        return self.batcher.infer_batch(batch)

    def describe(self) -> dict:
        s = self.session
        return {"backend": self.kind, "model": self.model_name, "onnx_path": s.onnx_path,
                "input": s.input_name, "input_shape": [d for d in s.input_shape],
                "outputs": s.output_names, "intra_op_threads": s.intra_op_threads,
                "inter_op_threads": s.inter_op_threads, "max_batch": self.batcher.max_batch,
                "max_delay_ms": self.batcher.max_delay_ns / 1e6}

    def close(self) -> None:
        self.batcher.close()


def _triton_backend(model_info, **opts) -> InferenceBackend:
    """``triton``: a Triton server client (``pipelines/inference/triton.py``, imported lazily:
    tritonclient is only needed when this backend is used). Options: ``url`` (http://h:p or
    grpc://h:p), ``timeout_s``; embedded-only options are ignored."""
    from pipelines.inference.triton import TritonBackend
    return TritonBackend(model_info, **opts)


def _tfserving_backend(model_info, **opts) -> InferenceBackend:
    """``tfserving``: a TF Serving client (``pipelines/inference/tfserving.py``, imported lazily).
    Options: ``url`` (http://h:p REST, grpc://h:p gRPC), ``rest_format`` ("instances" | "inputs"),
    ``timeout_s``, ``model_version``; embedded-only options are ignored."""
    from pipelines.inference.tfserving import TFServingBackend
    return TFServingBackend(model_info, **opts)


_BACKENDS: dict[str, Callable[..., InferenceBackend]] = {"embedded": EmbeddedBackend,
                                                         "triton": _triton_backend,
                                                         "tfserving": _tfserving_backend}


def register_backend(kind: str, factory: Callable[..., InferenceBackend]) -> None:
    _BACKENDS[kind] = factory


def backend_kinds() -> list[str]:
    return sorted(_BACKENDS)


def make_backend(kind: str, model_info, **opts) -> InferenceBackend:
    """``make_backend("embedded", info, intra_op_threads=1, max_batch=1, max_delay_ms=0)``."""
    try:
        factory = _BACKENDS[kind]
    except KeyError:
        raise ValueError(f"unknown inference backend {kind!r}; available: {backend_kinds()}") from None
    return factory(model_info, **opts)


__all__ = ["BatcherClosed", "EmbeddedBackend", "InferResult", "InferenceBackend", "MicroBatcher",
           "OrtSession", "backend_kinds", "make_backend", "register_backend"]
