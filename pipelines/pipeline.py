"""The two-stage pipeline: detect on the request thread, classify the crops through the broker.

``TwoStagePipeline.process(request_id, data, probe)`` = ``submit`` (on a gateway pool thread)
+ ``wait`` + ``finish``: detect/decode -> resize -> normalize -> queue -> inference ->
postprocess (threshold, NMS, top-k, crops) -> serialize (per crop) -> publish the k crops to
``crops``, back to back -> wait for k ``results`` (by request id). The gateway awaits the results
on its event loop (``wait_async``): a request thread only does the CPU work and is free for the
next image while the crops are classified. By default (``worker_batch`` None) a worker classifies
up to ``max(max_batch, k)`` crops in one call: one image's crops in one batch.

Worker threads (``pipelines.worker.ClassifierWorker``) consume the crops; a results listener
thread fills the per-request waiters and records the spans the workers put in the result headers
(stamped with the worker's process, header ``proc``; its ``clock`` record is kept for
processes.json) plus a ``classify/broker`` span for the result's own trip, attrs
``{"crop": i, "leg": "results"}`` (stamped with the gateway's process: it ends on its clock).
Duplicates of a (request, crop) are ignored; results for requests no longer waited for (timed
out) are counted and dropped.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid

import numpy as np

from brokers.base import Broker, BrokerUnavailable
from brokers.message import MalformedMessage, Message, decode_message, encode_message
from overhead.contract import topics
from overhead.contract.clock import ProcessRecord, now_ns
from pipelines.inference import make_backend
from pipelines.postprocess import postprocess
from pipelines.spans import ComponentTimes, SpanRecorder
from pipelines.worker import ClassifierWorker

log = logging.getLogger(__name__)


class ResultTimeout(TimeoutError):
    """Not every crop of a request was classified in time (the gateway answers 504)."""

    def __init__(self, request_id: str, missing: list[int], k: int, timeout_s: float):
        self.request_id, self.missing, self.k, self.timeout_s = request_id, missing, k, timeout_s
        super().__init__(f"no classification for crop(s) {missing} of {k} within {timeout_s:g} s "
                         f"(request {request_id}): the classifier workers are stopped or overloaded")


class ClassifierFailed(RuntimeError):
    """A worker reported an error for one of the request's crops (the gateway answers 502)."""


class _Waiter:
    __slots__ = ("k", "results", "event", "lock", "loop", "future")

    def __init__(self, k: int):
        self.k = k
        self.results: dict[int, tuple[Message, int]] = {}    # crop -> (result, deliver_ns)
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.loop = self.future = None      # set by wait_async (an asyncio waiter)

    def complete(self) -> None:
        """Every crop is in (its spans recorded): wake the waiting thread or event loop."""
        self.event.set()
        with self.lock:
            loop, fut = self.loop, self.future
        if fut is not None:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:   # the loop is closed (gateway shutting down): nobody waits
                pass


def _resolve(fut) -> None:
    if not fut.done():   # a timed-out wait cancelled it
        fut.set_result(None)


class Submitted:
    """A request between its detection (crops published) and its crops' results."""
    __slots__ = ("rid", "pp", "src_hw", "ct", "waiter", "ready_ns")

    def __init__(self, rid: str, pp, src_hw: tuple, ct: ComponentTimes):
        self.rid, self.pp, self.src_hw, self.ct = rid, pp, src_hw, ct
        self.waiter: _Waiter | None = None
        self.ready_ns = 0   # when the request thread was done with it (crops published)


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    """Total length covered by the intervals (overlaps counted once)."""
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


class TwoStagePipeline:
    def __init__(self, detector_info, classifier_info, preprocessor, broker: Broker,
                 recorder: SpanRecorder | None = None, k: int = 4, score_threshold: float = 0.3,
                 iou_threshold: float = 0.5, intra_op_threads: int = 1, max_batch: int = 1,
                 max_delay_ms: float = 0.0, workers: int = 1, result_timeout_s: float = 30.0,
                 worker_batch: int | None = None, backend: str = "embedded",
                 backend_options: dict | None = None, publish_timeout_s: float = 1.0,
                 warmup: bool = True, calibration_crop_sleep_ms: float = 0.0):
        self.detector_info = detector_info
        self.classifier_info = classifier_info
        self.pre = preprocessor
        self.broker = broker
        self.recorder = recorder if recorder is not None else SpanRecorder(enabled=False)
        self.k = int(k)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.intra_op_threads = int(intra_op_threads)
        self.max_batch = int(max_batch)
        self.max_delay_ms = float(max_delay_ms)
        self.n_workers = int(workers)
        # default: the crops of one image in one classifier call (the backend permitting)
        self.worker_batch = int(worker_batch if worker_batch is not None else max(max_batch, k))
        self.result_timeout_s = float(result_timeout_s)
        self.backend_kind = backend
        self.backend_options = dict(backend_options or {})   # e.g. {"url": ...} of a server
        self.publish_timeout_s = publish_timeout_s
        self.warmup = warmup
        self.calibration_crop_sleep_ms = float(calibration_crop_sleep_ms)   # test knob (config.py)
        self.det_hw = tuple(detector_info.input_hw)
        self.det_norm = detector_info.normalization
        outs = list(detector_info.output_names)
        self.boxes_name = "boxes" if "boxes" in outs else outs[0]
        self.scores_name = "scores" if "scores" in outs else outs[1]
        self.detector = None
        self.workers: list[ClassifierWorker] = []
        self._classifier_backends = []
        self._waiters: dict[str, _Waiter] = {}
        self._results_group = f"gateway-{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._listening = threading.Event()
        # counters
        self.late_results = 0
        self.duplicate_results = 0
        self.malformed_results = 0
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "TwoStagePipeline":
        self.detector = make_backend(self.backend_kind, self.detector_info,
                                     intra_op_threads=self.intra_op_threads,
                                     max_batch=self.max_batch, max_delay_ms=self.max_delay_ms,
                                     **self.backend_options)
        if self.warmup:
            self.detector.infer_batch(np.zeros((1, *self.det_hw, 3), np.float32))
        for i in range(self.n_workers):
            self.add_worker(name=f"classifier-{os.getpid()}-{i}")
        # the listener's first consume creates its group: wait for it, so that no result of a
        # request is published before the group exists (brokers that start new groups at the end)
        self._listener = threading.Thread(target=self._listen, name="results-listener", daemon=True)
        self._listener.start()
        if not self._listening.wait(30):
            raise BrokerUnavailable("the results listener could not subscribe within 30 s")
        self.started = True
        return self

    def add_worker(self, name: str) -> ClassifierWorker:
        backend = make_backend(self.backend_kind, self.classifier_info,
                               intra_op_threads=self.intra_op_threads, max_batch=1,
                               **self.backend_options)
        if self.warmup:
            backend.infer_batch(np.zeros((1, *self.classifier_info.input_hw, 3), np.float32))
        self._classifier_backends.append(backend)
        w = ClassifierWorker(self.broker, backend, self.pre, self.classifier_info,
                             batch=self.worker_batch, max_delay_ms=self.max_delay_ms,
                             name=name,
                             calibration_crop_sleep_ms=self.calibration_crop_sleep_ms).start()
        self.workers.append(w)
        return w

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()

    def stop(self) -> None:
        self._stop.set()
        self.stop_workers()
        if self._listener is not None:
            self._listener.join(5)
        if self.detector is not None:
            self.detector.close()
        for b in self._classifier_backends:
            b.close()
        self.started = False

    # -- results listener --------------------------------------------------------------------
    def _listen(self) -> None:
        rec = self.recorder
        while not self._stop.is_set():
            try:
                got = self.broker.consume(topics.RESULTS, self._results_group, "listener",
                                          max_messages=64, timeout_s=0.1)
                self._listening.set()
            except BrokerUnavailable:
                if self._stop.is_set():
                    return
                time.sleep(0.2)
                continue
            for d in got:
                try:
                    msg = decode_message(d.payload)
                except MalformedMessage as exc:
                    self.malformed_results += 1
                    log.warning("malformed result message dropped: %s", exc)
                    continue
                if rec.enabled and msg.extra.get("clock"):
                    self._add_process(msg.extra["clock"])   # even from a late result
                w = self._waiters.get(msg.request_id)
                if w is None:
                    self.late_results += 1
                    continue
                with w.lock:
                    if msg.index in w.results or not 0 <= msg.index < w.k:
                        self.duplicate_results += 1
                        continue
                    w.results[msg.index] = (msg, d.deliver_ns)
                    complete = len(w.results) == w.k
                if rec.enabled:
                    rid, proc = msg.request_id, msg.extra.get("proc")
                    for s in msg.extra.get("spans") or ():   # WireSpan dicts
                        rec.record(rid, s["stage"], s["component"], int(s["start_ns"]),
                                   int(s["end_ns"]), s.get("attrs"), proc)
                    rec.record(rid, "classify", "broker", msg.produce_ns, d.deliver_ns,
                               {"crop": msg.index, "leg": "results"})
                if complete:
                    w.complete()
            if got:
                self.broker.ack(topics.RESULTS, self._results_group, got)

    def _add_process(self, wire) -> None:
        try:
            self.recorder.add_process(ProcessRecord.from_wire(wire))
        except (TypeError, ValueError) as exc:
            log.warning("malformed clock record in a result header ignored: %s", exc)

    # -- one request -------------------------------------------------------------------------
    def process(self, request_id: str, data: bytes, probe=None) -> dict:
        """Detect, publish crops, wait for their classes. Blocking (run it on a pool thread).

        Returns ``{"request_id", "width", "height", "k", "detections": [...], "timing":
        ComponentTimes, "done_ns": answer complete}``; raises ``ImageRejected``, ``BrokerError``
        (publish), ``ResultTimeout`` or ``ClassifierFailed``. (The gateway awaits instead: ``wait_async``.)"""
        sub = self.submit(request_id, data, probe)
        self.wait(sub)
        return self.finish(sub)

    def submit(self, request_id: str, data: bytes, probe=None) -> "Submitted":
        """The request thread's part: decode, detect, postprocess, publish the k crops (all of
        them encoded first, then published back to back, so a worker takes them as one batch)."""
        if not self.started:
            raise RuntimeError("pipeline not started")
        rid = request_id
        ct = ComponentTimes.new()
        record = self.recorder.record

        def span(component, s, e, attrs=None):
            record(rid, "detect", component, s, e, attrs)
            ct.add("detect", component, e - s)

        t0 = now_ns()
        img, info = self.pre.decode(data, self.det_hw)
        t1 = now_ns()
        span("decode", t0, t1, {"reduced": info.get("reduced", 1)})
        x = self.pre.resize(img, self.det_hw)
        t2 = now_ns()
        span("resize", t1, t2)
        x = self.pre.normalize(x, self.det_norm)
        t3 = now_ns()
        span("normalize", t2, t3)
        r = self.detector.infer(x, request_id=rid)
        for comp, s0, s1, attrs in getattr(r, "spans", None) or ():
            span(comp, s0, s1, attrs)  # what the backend measured itself (Triton: client serialize)
        span("queue", r.enqueue_ns, r.start_ns)
        srid = getattr(r, "request_id", None)   # a server's request id: its trace joins on it
        span("inference", r.start_ns, r.end_ns,
             {"batch": r.batch_size, "server_rid": srid} if srid else {"batch": r.batch_size})
        t4 = now_ns()
        src_hw = tuple(info.get("src_hw") or (probe.height, probe.width))
        pp = postprocess(r.outputs[self.boxes_name], r.outputs[self.scores_name], img, src_hw,
                         self.score_threshold, self.iou_threshold, self.k)
        del img
        t5 = now_ns()
        span("postprocess", t4, t5, {"boxes": len(pp)})
        sub = Submitted(rid, pp, src_hw, ct)
        if len(pp):
            self._publish(sub, span)
        sub.ready_ns = now_ns()
        return sub

    def _publish(self, sub: "Submitted", span) -> None:
        rid, m = sub.rid, len(sub.pp)
        wires = []
        for i, crop in enumerate(sub.pp.crops):
            s0 = now_ns()
            # crop.data: the crop's own buffer (C-contiguous), no tobytes() copy before the header
            wires.append(encode_message(Message(request_id=rid, kind="crop", index=i, k=m,
                                                shape=crop.shape, dtype="uint8", produce_ns=s0,
                                                payload=crop.data)))
            span("serialize", s0, now_ns(), {"crop": i})
        sub.waiter = self._waiters[rid] = _Waiter(m)
        try:
            for wire in wires:
                self.broker.publish(topics.CROPS, wire, key=rid, timeout_s=self.publish_timeout_s)
        except BaseException:
            self._waiters.pop(rid, None)
            raise

    def wait(self, sub: "Submitted") -> None:
        """Block until every crop of ``sub`` has its result; ``ResultTimeout`` after the timeout."""
        w = sub.waiter
        if w is None:
            return
        try:
            if not w.event.wait(self.result_timeout_s):
                self._raise_missing(sub)
        finally:
            self._waiters.pop(sub.rid, None)

    async def wait_async(self, sub: "Submitted") -> None:
        """``wait`` on an asyncio event loop: no thread is held while the crops are classified
        (the results listener resolves a future through ``call_soon_threadsafe``)."""
        w = sub.waiter
        if w is None:
            return
        try:
            with w.lock:
                if not w.event.is_set():
                    w.loop = asyncio.get_running_loop()
                    w.future = w.loop.create_future()
            if w.future is not None:
                try:
                    await asyncio.wait_for(w.future, self.result_timeout_s)
                except asyncio.TimeoutError:
                    self._raise_missing(sub)
        finally:
            self._waiters.pop(sub.rid, None)

    def _raise_missing(self, sub: "Submitted") -> None:
        w, m = sub.waiter, len(sub.pp)
        with w.lock:
            missing = [i for i in range(m) if i not in w.results]
        if missing:
            raise ResultTimeout(sub.rid, missing, m, self.result_timeout_s)

    def finish(self, sub: "Submitted") -> dict:
        """The answer of a submitted request whose crops are all classified (``wait``)."""
        rid, pp, ct, m = sub.rid, sub.pp, sub.ct, len(sub.pp)
        detections = []
        classify_spans: dict[str, list] = {}
        for i in range(m):
            msg, deliver = sub.waiter.results[i]
            ex = msg.extra
            if "error" in ex:
                raise ClassifierFailed(f"crop {i} of request {rid}: {ex['error']}")
            for s in ex.get("spans") or ():   # WireSpan dicts
                classify_spans.setdefault(s["component"], []).append(
                    (int(s["start_ns"]), int(s["end_ns"])))
            classify_spans.setdefault("broker", []).append((msg.produce_ns, deliver))
            detections.append({"box": [int(v) for v in pp.boxes_px[i]],
                               "score": round(float(pp.scores[i]), 6),
                               "label": ex.get("label"), "class_id": ex.get("class_id"),
                               "label_score": round(float(ex.get("score", float("nan"))), 6)})
        for comp, ivs in classify_spans.items():   # wall time covered, crops overlap
            ct.add("classify", comp, _union_ns(ivs))
        h, w = sub.src_hw
        # when the answer was complete: the last result delivered (no crops: the crops' publishing done)
        done = max((d for _, d in sub.waiter.results.values()), default=sub.ready_ns) if m else sub.ready_ns
        return {"request_id": rid, "width": int(w), "height": int(h), "k": m,
                "detections": detections, "timing": ct, "done_ns": done}

    def describe(self) -> dict:
        return {"k": self.k, "score_threshold": self.score_threshold,
                "iou_threshold": self.iou_threshold, "max_batch": self.max_batch,
                "max_delay_ms": self.max_delay_ms, "worker_batch": self.worker_batch,
                "workers": self.n_workers, "result_timeout_s": self.result_timeout_s,
                "detector": self.detector.describe() if self.detector else None,
                "classifier": (self._classifier_backends[0].describe()
                               if self._classifier_backends else None)}

    def stats(self) -> dict:
        return {"in_flight": len(self._waiters), "late_results": self.late_results,
                "duplicate_results": self.duplicate_results,
                "malformed_results": self.malformed_results,
                "workers": [w.stats() for w in self.workers]}
