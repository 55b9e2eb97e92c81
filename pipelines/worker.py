"""Classifier worker: consumes crops from the broker, classifies them, publishes one result each.

Loop: ``consume("crops")`` up to ``batch`` messages (waiting at most ``max_delay_ms`` after the
first for the batch to fill) -> per crop: ``decode_message`` (``serialize``), ``resize``,
``normalize`` -> ONE classifier call for the consumed crops (``infer_batch``: the worker batches
what it consumed itself; it does not go through a MicroBatcher queue) -> one ``result`` message per
crop on ``results`` -> ack. Malformed messages are logged, acked and kept in ``dead_letter``.
Two threads: a preparer consumes and preprocesses the next batch while the worker's own thread
runs the classifier on the current one (one batch ahead at most), so the model instance does not
wait for the crops' decode, resize and normalize.

Each result's header (``extra``) carries ``label``, ``class_id``, ``score`` and the crop's spans
(``spans``: a list of ``overhead.contract.records.WireSpan`` dicts, keys ``stage``, ``component``,
``start_ns``, ``end_ns``, ``attrs``): ``classify/broker`` (crop produce ->
deliver), ``classify/serialize`` (message decode), ``resize``, ``normalize``, ``queue`` (end of
this crop's normalize -> batch start: the other crops' preprocessing, the previous batch's
inference and the instance lock) and
``inference`` (``{"batch": n}``). Every span's attrs carry ``crop`` and ``worker`` (this worker's
name: the report derives each worker's busy time, hence the crops' ``backlog``, from them). The
header also says whose clock stamped them: ``proc`` (``HOST:PID``, every message) and, on the
first result and then at most once a second, ``clock`` (this process's ``ProcessRecord`` in wire
form: host, pid, role, wall and monotonic clock at start). The gateway records them. If the
worker is given its own ``recorder`` it records the spans there instead and leaves them out of
the header (never both).

The worker holds no gateway object: it runs as a thread now and as its own process
(``python -m pipelines.worker``) with a broker that lives outside the process.
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import deque

import numpy as np

from brokers.base import Broker, BrokerError, BrokerUnavailable, Delivery
from brokers.message import MalformedMessage, Message, decode_message, encode_message
from overhead.config import WorkerSettings
from overhead.contract import clock, topics
from overhead.contract.clock import now_ns
from overhead.contract.records import wire_span

CLOCK_EVERY_NS = 1_000_000_000   # resend this process's clock record in a result header
log = logging.getLogger(__name__)


class _Prepared:
    """A consumed batch, preprocessed, waiting for the model instance."""
    __slots__ = ("items", "to_ack", "batch")

    def __init__(self, items: list, to_ack: list, batch: np.ndarray):
        self.items, self.to_ack, self.batch = items, to_ack, batch


class ClassifierWorker:
    def __init__(self, broker: Broker, classifier_backend, preprocessor, model_info,
                 recorder=None, batch: int = 1, max_delay_ms: float = 0.0,
                 group: str = "classifiers", name: str | None = None,
                 crops_topic: str = topics.CROPS, results_topic: str = topics.RESULTS,
                 publish_timeout_s: float = 5.0, dead_letter_keep: int = 100,
                 calibration_crop_sleep_ms: float = 0.0):
        self.broker = broker
        self.backend = classifier_backend
        self.pre = preprocessor
        self.info = model_info
        self.recorder = recorder
        # at most what the backend takes in one call (a model with a fixed batch dim)
        self.batch = max(1, min(int(batch), getattr(classifier_backend, "batch_limit", None)
                                or int(batch)))
        self.max_delay_s = max(0.0, float(max_delay_ms)) / 1e3
        self.group = group
        self.name = name or f"worker-{socket.gethostname()}-{os.getpid()}-{id(self) & 0xffff:x}"
        self.crops_topic = crops_topic
        self.results_topic = results_topic
        self.publish_timeout_s = publish_timeout_s
        self.calibration_sleep_s = max(0.0, float(calibration_crop_sleep_ms)) / 1e3  # test knob
        self.input_hw = tuple(model_info.input_hw)
        self.normalization = model_info.normalization
        self.output_name = list(model_info.output_names)[0]
        self.labels = list(getattr(model_info, "labels", []) or [])
        # counters (read by health/config endpoints and tests)
        self.processed = 0
        self.batches = 0
        self.errors = 0
        self.dead_letter_count = 0
        self.dead_letter: deque = deque(maxlen=dead_letter_keep)   # (reason, first bytes)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clock_sent_ns: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "ClassifierWorker":
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        """Consume until ``stop()`` (or the broker closes). A preparer thread consumes and
        preprocesses the next batch while this thread classifies the current one (at most one
        batch ahead), so the model instance does not wait for decode/resize/normalize."""
        ready: queue.Queue = queue.Queue(maxsize=1)
        prep = threading.Thread(target=self._prepare_loop, args=(ready,), daemon=True,
                                name=f"{self.name}-prepare")
        prep.start()
        while (p := ready.get()) is not None:   # a batch prepared before stop() is still classified
            self._guarded(self.classify, p)
        prep.join()

    def _prepare_loop(self, ready: queue.Queue) -> None:
        try:
            while not self._stop.is_set():
                try:
                    deliveries = self._consume_batch()
                except BrokerUnavailable:
                    if self._stop.is_set():
                        break
                    log.warning("%s: broker unavailable, retrying", self.name)
                    time.sleep(0.5)
                    continue
                if deliveries and (p := self._guarded(self.prepare, deliveries)) is not None:
                    ready.put(p)   # waits for the classifying thread, which drains until None
        finally:
            ready.put(None)

    def _guarded(self, step, arg):
        """``step(arg)``; a broker outage or an unexpected error is logged and the worker goes
        on (the batch stays unacked, so a broker that redelivers retries it)."""
        try:
            return step(arg)
        except BrokerUnavailable:
            if not self._stop.is_set():
                log.warning("%s: broker unavailable while handling a batch", self.name)
        except Exception:  # noqa: BLE001 - keep consuming
            self.errors += 1
            log.exception("%s: unexpected error handling a batch", self.name)
        return None

    def _consume_batch(self) -> list[Delivery]:
        got = self.broker.consume(self.crops_topic, self.group, self.name,
                                  max_messages=self.batch, timeout_s=0.1)
        if got and self.max_delay_s > 0 and len(got) < self.batch:
            deadline = time.monotonic() + self.max_delay_s
            while len(got) < self.batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                got += self.broker.consume(self.crops_topic, self.group, self.name,
                                           max_messages=self.batch - len(got), timeout_s=remaining)
        return got

    # -- one batch ---------------------------------------------------------------------------
    def _dead(self, d: Delivery, reason: str) -> None:
        """Count it, keep a note, park it in the broker's ``<topic>.dlq``; then it is acked."""
        self.dead_letter_count += 1
        self.dead_letter.append((reason, bytes(d.payload[:64])))
        log.warning("%s: dead-lettered a message on %r: %s", self.name, d.topic, reason)
        try:
            self.broker.dead_letter(d.topic, bytes(d.payload), reason)
        except BrokerError as exc:
            log.error("%s: could not park the message in the dead-letter topic: %s", self.name, exc)

    def _crop(self, d: Delivery) -> tuple[Message, np.ndarray]:
        msg = decode_message(d.payload)
        if msg.kind != "crop":
            raise MalformedMessage(f"expected a crop message, got kind {msg.kind!r}")
        if msg.dtype != "uint8" or len(msg.shape) != 3 or msg.shape[2] != 3 \
                or msg.shape[0] < 1 or msg.shape[1] < 1:
            raise MalformedMessage(f"crop must be HxWx3 uint8, got {msg.shape} {msg.dtype}")
        return msg, np.frombuffer(msg.payload, dtype=np.uint8).reshape(msg.shape)

    def handle(self, deliveries: list[Delivery]) -> int:
        """Classify the crops among ``deliveries``, publish their results, ack everything.
        Returns the number of results published."""
        return self.classify(self.prepare(deliveries))

    def prepare(self, deliveries: list[Delivery]) -> "_Prepared":
        """Decode, resize and normalize the crops into one batch; malformed ones dead-lettered."""
        items = []   # (delivery, msg, spans, ready_ns); row j of ``batch`` is items[j]'s input
        to_ack = []
        # each crop is normalized straight into its row of the batch (no np.stack copy)
        batch = np.empty((len(deliveries), *self.input_hw, 3), np.float32)
        for d in deliveries:
            t0 = now_ns()
            try:
                msg, crop = self._crop(d)
            except (MalformedMessage, ValueError) as exc:
                self._dead(d, str(exc))
                to_ack.append(d)
                continue
            t1 = now_ns()
            try:
                img = self.pre.resize(crop, self.input_hw)
                t2 = now_ns()
                self.pre.normalize(img, self.normalization, out=batch[len(items)])
                if self.calibration_sleep_s:
                    time.sleep(self.calibration_sleep_s)   # known-answer checks only
                t3 = now_ns()
            except Exception as exc:  # noqa: BLE001 - a crop we cannot preprocess is bad input
                self._dead(d, f"preprocess failed: {type(exc).__name__}: {exc}")
                to_ack.append(d)
                continue
            c = {"crop": msg.index, "worker": self.name}   # the report's backlog needs the worker
            spans = [wire_span("classify", "broker", msg.produce_ns, d.deliver_ns, c),
                     wire_span("classify", "serialize", t0, t1, c),
                     wire_span("classify", "resize", t1, t2, c),
                     wire_span("classify", "normalize", t2, t3, c)]
            items.append((d, msg, spans, t3))
        return _Prepared(items, to_ack, batch)

    def classify(self, p: "_Prepared") -> int:
        """One classifier call for a prepared batch, one result each, ack; results published."""
        items, to_ack, batch = p.items, p.to_ack, p.batch
        published = 0
        if items:
            error = None
            try:
                # server request id (Triton trace join): "<rid>:<crop>", "|"-joined for a batch
                srid = "|".join(f"{it[1].request_id}:{it[1].index}" for it in items)
                r = self.backend.infer_batch(batch[:len(items)], request_id=srid)
                probs = r.outputs[self.output_name]
                self.batches += 1
            except Exception as exc:  # noqa: BLE001 - reported to the gateway, worker goes on
                self.errors += 1
                error = f"classifier inference failed: {type(exc).__name__}: {exc}"
                log.exception("%s: %s", self.name, error)
            for j, (d, msg, spans, ready) in enumerate(items):
                if error is None:
                    p = probs[j]
                    cid = int(np.argmax(p))
                    extra = {"label": self.labels[cid] if cid < len(self.labels) else str(cid),
                             "class_id": cid, "score": float(p[cid])}
                    spans.append(wire_span("classify", "queue", ready, r.start_ns, spans[0]["attrs"]))
                    ia = {"crop": msg.index, "worker": self.name, "batch": r.batch_size}
                    if getattr(r, "request_id", None):
                        ia["server_rid"] = r.request_id
                    spans.append(wire_span("classify", "inference", r.start_ns, r.end_ns, ia))
                else:
                    extra = {"error": error}
                extra["worker"] = self.name
                self._stamp_process(extra)
                if self.recorder is not None:
                    for s in spans:
                        self.recorder.record(msg.request_id, s["stage"], s["component"],
                                             s["start_ns"], s["end_ns"], s["attrs"])
                else:
                    extra["spans"] = spans
                out = Message(request_id=msg.request_id, kind="result", index=msg.index, k=msg.k,
                              dtype="json", produce_ns=now_ns(), extra=extra)
                try:
                    self.broker.publish(self.results_topic, encode_message(out),
                                        key=msg.request_id, timeout_s=self.publish_timeout_s)
                except BrokerError as exc:
                    # not acked: a broker that redelivers (Redis pending, Kafka offsets) retries it
                    self.errors += 1
                    log.error("%s: could not publish the result of %s crop %d: %s",
                              self.name, msg.request_id, msg.index, exc)
                    continue
                published += 1
                to_ack.append(d)
        if to_ack:
            self.broker.ack(self.crops_topic, self.group, to_ack)
        self.processed += published
        return published

    def _stamp_process(self, extra: dict) -> None:
        """Whose clock stamped the spans: ``proc`` always; the process record now and then."""
        extra["proc"] = clock.process_id()
        t = now_ns()
        if self._clock_sent_ns is None or t - self._clock_sent_ns >= CLOCK_EVERY_NS:
            self._clock_sent_ns = t
            extra["clock"] = clock.this_process().to_wire()

    def stats(self) -> dict:
        return {"name": self.name, "alive": self.alive, "processed": self.processed,
                "batches": self.batches, "errors": self.errors,
                "dead_letter": self.dead_letter_count}


# -- process entry point ---------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    """The flags of ``WorkerSettings`` (overhead/config.py), generated."""
    return WorkerSettings.parser(
        prog="python -m pipelines.worker",
        description="Classifier worker: consume crops from a broker, publish results. "
                    "The broker must live outside this process (redis://, kafka://); memory:// "
                    "only works inside the gateway process, where the gateway starts its own "
                    "workers (--workers). Options also read OVERHEAD_<NAME>.")


def main(argv: list[str] | None = None) -> int:
    args = WorkerSettings.from_namespace(_parser().parse_args(argv))
    clock.set_role("worker")
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.broker.startswith("memory"):
        print("pipelines.worker: memory:// is an in-process broker; a separate worker process "
              "cannot reach the gateway's queues. Use --workers N on the gateway, or a "
              "redis:// / kafka:// broker.", file=sys.stderr)
        return 2
    from brokers import open_broker
    from pipelines.inference import make_backend
    from pipelines.models import ensure_model
    from pipelines.preprocess import get_preprocessor

    info = ensure_model(args.classifier, models_dir=args.models_dir)
    backend = make_backend(args.backend, info, intra_op_threads=args.intra_op_threads,
                           **args.backend_options)
    broker = open_broker(args.broker)
    recorder = flusher = None
    if args.spans_dir:
        from pipelines.spans import SpanFlusher, SpanRecorder

        recorder = SpanRecorder()
        flusher = SpanFlusher(recorder, args.spans_dir).start()
    worker = ClassifierWorker(broker, backend, get_preprocessor(args.preprocessor), info,
                              recorder=recorder, batch=args.classifier_batch,
                              max_delay_ms=args.max_delay_ms, group=args.group, name=args.name,
                              calibration_crop_sleep_ms=args.calibration_crop_sleep_ms)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker._stop.set())
    log.info("%s consuming %r (group %r) from %s", worker.name, worker.crops_topic, worker.group,
             args.broker)
    try:
        worker.run()
    finally:
        backend.close()
        broker.close()
        if flusher is not None:
            flusher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
