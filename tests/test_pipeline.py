"""Worker and two-stage pipeline, in-process: tiny real ONNX models, the opencv preprocessor,
the memory broker. (Real models over HTTP are in test_gateway.py.)"""
import asyncio
import dataclasses
import json
import threading
import time

import numpy as np
import pytest

from brokers import BrokerFull
from brokers.memory import MemoryBroker
from brokers.message import Message, decode_message, encode_message
from pipelines.inference import OrtSession, make_backend
from pipelines.pipeline import ClassifierFailed, ResultTimeout, TwoStagePipeline
from pipelines.postprocess import select_boxes
from pipelines.preprocess import crop as crop_box, get_preprocessor, inspect_image
from pipelines.spans import SpanRecorder
from pipelines.worker import ClassifierWorker

CLASSIFY_COMPONENTS = {"broker", "serialize", "resize", "normalize", "queue", "inference"}
DETECT_COMPONENTS = {"decode", "resize", "normalize", "queue", "inference", "postprocess", "serialize"}


@pytest.fixture(scope="module")
def pre():
    return get_preprocessor("opencv", reduced="auto")


def _crop_msg(rid, i, k, crop, produce_ns=None):
    return encode_message(Message(request_id=rid, kind="crop", index=i, k=k, shape=crop.shape,
                                  dtype="uint8", produce_ns=produce_ns or time.time_ns(),
                                  payload=crop.tobytes()))


def _results(broker, n, timeout=5.0):
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        got = broker.consume("results", "test", "t", max_messages=64, timeout_s=0.1)
        broker.ack("results", "test", got)
        out += [decode_message(d.payload) for d in got]
    return out


def _direct_label(session, pre, info, crop):
    x = pre.normalize(pre.resize(crop, info.input_hw), info.normalization)
    p = session.run(x[None])["probs"][0]
    return int(np.argmax(p)), float(p.max())


def test_worker_classifies_crops_like_a_direct_run_and_sends_spans(tiny_classifier, pre):
    broker = MemoryBroker()
    broker.consume("results", "test", "t", timeout_s=0)
    backend = make_backend("embedded", tiny_classifier)
    worker = ClassifierWorker(broker, backend, pre, tiny_classifier, name="w0").start()
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (20 + 7 * i, 30 + 5 * i, 3), dtype=np.uint8) for i in range(3)]
    for i, c in enumerate(crops):
        broker.publish("crops", _crop_msg("req-1", i, 3, c))
    results = sorted(_results(broker, 3), key=lambda m: m.index)
    worker.stop()
    session = OrtSession(tiny_classifier.onnx_path)
    assert [m.index for m in results] == [0, 1, 2]
    for m, c in zip(results, crops):
        assert m.kind == "result" and m.request_id == "req-1" and m.k == 3
        cid, score = _direct_label(session, pre, tiny_classifier, c)
        assert m.extra["class_id"] == cid and m.extra["label"] == f"class_{cid}"
        assert m.extra["score"] == pytest.approx(score, rel=1e-5)
        spans = m.extra["spans"]
        assert {s["component"] for s in spans} == CLASSIFY_COMPONENTS
        assert all(s["stage"] == "classify" and s["start_ns"] <= s["end_ns"]
                   and s["attrs"]["crop"] == m.index for s in spans)
        inf = next(s for s in spans if s["component"] == "inference")
        assert inf["attrs"]["batch"] == 1
    assert broker.pending("crops", "classifiers") == 0
    assert worker.processed == 3 and worker.dead_letter_count == 0
    backend.close()
    # whose clock stamped them: the process id in every header, its clock record once (a second)
    from overhead.contract.clock import ProcessRecord, process_id, this_process

    assert all(m.extra["proc"] == process_id() for m in results)
    clocks = [m.extra["clock"] for m in results if "clock" in m.extra]
    assert len(clocks) == 1 and ProcessRecord.from_wire(clocks[0]) == this_process()
    assert len(json.dumps({"proc": results[0].extra["proc"], "clock": clocks[0]})) < 120


def test_worker_dead_letters_malformed_messages_and_keeps_going(tiny_classifier, pre):
    broker = MemoryBroker()
    broker.consume("results", "test", "t", timeout_s=0)
    backend = make_backend("embedded", tiny_classifier)
    worker = ClassifierWorker(broker, backend, pre, tiny_classifier, name="w0").start()
    good = np.zeros((10, 10, 3), np.uint8)
    broker.publish("crops", b"not a message")
    broker.publish("crops", _crop_msg("r", 0, 1, good)[:-5])                       # short payload
    broker.publish("crops", encode_message(Message("r", "result", 0, 1, dtype="json")))  # wrong kind
    broker.publish("crops", encode_message(Message("r", "crop", 0, 1, shape=(0, 4, 3))))  # empty crop
    broker.publish("crops", _crop_msg("ok", 0, 1, good))
    results = _results(broker, 1)
    worker.stop()
    assert [m.request_id for m in results] == ["ok"]
    assert worker.dead_letter_count == 4 and len(worker.dead_letter) == 4
    parked = broker.consume("crops.dlq", "inspect", "c", max_messages=10)
    assert parked[0].payload == b"not a message" and "magic" in parked[0].key
    assert len(parked) == 4
    assert broker.pending("crops", "classifiers") == 0
    backend.close()


def test_worker_batches_what_it_consumed(tiny_classifier, pre):
    broker = MemoryBroker()
    broker.consume("results", "test", "t", timeout_s=0)
    backend = make_backend("embedded", tiny_classifier)
    worker = ClassifierWorker(broker, backend, pre, tiny_classifier, batch=4, name="w0")
    for i in range(4):
        broker.publish("crops", _crop_msg("rb", i, 4, np.full((12, 12, 3), i * 40, np.uint8)))
    worker.start()
    results = _results(broker, 4)
    worker.stop()
    assert sorted(m.index for m in results) == [0, 1, 2, 3]
    assert {next(s for s in m.extra["spans"] if s["component"] == "inference")["attrs"]["batch"]
            for m in results} == {4}
    backend.close()


class SleepClassifier:
    """TEST DOUBLE of a classifier backend (``infer_batch`` -> ``InferResult``, like the embedded
    session's) whose inference is a fixed sleep per call: a known inference time."""

    def __init__(self, seconds: float, output_name: str, classes: int):
        self.seconds, self.output_name, self.classes = seconds, output_name, classes

    def infer_batch(self, batch, request_id=None):
        from pipelines.inference import InferResult
        start = time.time_ns()
        time.sleep(self.seconds)
        probs = np.full((len(batch), self.classes), 1.0 / self.classes, np.float32)
        return InferResult({self.output_name: probs}, start, start, time.time_ns(), len(batch))


def test_worker_prepares_the_next_batch_while_the_current_one_is_classified(tiny_classifier, pre):
    """Known answer: preprocessing sleeps 5 ms a crop (the calibration knob: 20 ms a batch of
    4), inference 50 ms a batch. One after the other, 10 batches take >= 0.7 s; with the next
    batch prepared during the current one's inference, ~0.52 s, and a batch's crops are all
    preprocessed before the previous batch's inference ends."""
    broker = MemoryBroker()
    broker.consume("results", "test", "t", timeout_s=0)
    backend = SleepClassifier(0.05, tiny_classifier.output_names[0], 3)
    worker = ClassifierWorker(broker, backend, pre, tiny_classifier, batch=4, name="w0",
                              calibration_crop_sleep_ms=5)
    for i in range(40):
        broker.publish("crops", _crop_msg(f"r{i // 4}", i % 4, 4, np.full((12, 12, 3), 9, np.uint8)))
    t0 = time.monotonic()
    worker.start()
    results = _results(broker, 40, timeout=10)
    elapsed = time.monotonic() - t0
    worker.stop()
    assert len(results) == 40 and worker.batches == 10
    assert elapsed < 0.7, f"{elapsed:.2f} s: preprocessing and inference did not overlap"

    def span(m, comp):
        return next(s for s in m.extra["spans"] if s["component"] == comp)

    batches: dict[int, list[int]] = {}   # a batch's inference end -> its crops' normalize ends
    for m in results:
        batches.setdefault(span(m, "inference")["end_ns"], []).append(span(m, "normalize")["end_ns"])
    ends = sorted(batches)
    # batch i+1's crops were all preprocessed before batch i's inference ended
    overlapped = sum(1 for a, b in zip(ends, ends[1:]) if max(batches[b]) < a)
    assert overlapped >= 5, overlapped


def test_worker_with_own_recorder_keeps_spans_out_of_the_header(tiny_classifier, pre):
    broker = MemoryBroker()
    broker.consume("results", "test", "t", timeout_s=0)
    rec = SpanRecorder()
    backend = make_backend("embedded", tiny_classifier)
    worker = ClassifierWorker(broker, backend, pre, tiny_classifier, recorder=rec).start()
    broker.publish("crops", _crop_msg("rr", 0, 1, np.zeros((8, 8, 3), np.uint8)))
    (m,) = _results(broker, 1)
    worker.stop()
    assert "spans" not in m.extra
    assert {s.component for s in rec.drain() if s.request_id == "rr"} == CLASSIFY_COMPONENTS
    backend.close()


def _pipeline(det, cls, pre, **kw):
    kw.setdefault("recorder", SpanRecorder())
    kw.setdefault("broker", MemoryBroker())
    kw.setdefault("score_threshold", 0.0)
    return TwoStagePipeline(det, cls, pre, **kw).start()


def test_pipeline_matches_running_the_models_directly(tiny_detector, tiny_classifier, pre, photo_jpeg):
    p = _pipeline(tiny_detector, tiny_classifier, pre, k=4)
    try:
        probe = inspect_image(photo_jpeg, 10**8, 10**8)
        out = p.process("req-parity", photo_jpeg, probe)
    finally:
        p.stop()
    # the same computation by hand
    img, info = pre.decode(photo_jpeg, tiny_detector.input_hw)
    x = pre.normalize(pre.resize(img, tiny_detector.input_hw), "unit")
    det = OrtSession(tiny_detector.onnx_path).run(x[None])
    boxes, scores = select_boxes(det["boxes"][0], det["scores"][0], 0.0, 0.5, 4)
    cls = OrtSession(tiny_classifier.onnx_path)
    assert out["k"] == 4 and len(out["detections"]) == 4
    assert (out["height"], out["width"]) == (427, 640) == tuple(info["src_hw"])
    for d, b, s in zip(out["detections"], boxes, scores):
        cid, score = _direct_label(cls, pre, tiny_classifier, crop_box(img, b))
        assert d["class_id"] == cid and d["label"] == f"class_{cid}"
        assert d["label_score"] == pytest.approx(score, abs=1e-5)
        assert d["score"] == pytest.approx(s, abs=1e-5)
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 427
        assert x1 == pytest.approx(b[1] * 640, abs=1) and y2 == pytest.approx(b[2] * 427, abs=1)


def test_pipeline_records_every_component_and_server_timing(tiny_detector, tiny_classifier, pre,
                                                             photo_jpeg):
    rec = SpanRecorder()
    p = _pipeline(tiny_detector, tiny_classifier, pre, k=3, recorder=rec)
    try:
        out = p.process("req-spans", photo_jpeg, inspect_image(photo_jpeg, 10**8, 10**8))
        time.sleep(0.05)   # result-leg spans are recorded by the listener right before the wake-up
    finally:
        p.stop()
    spans = [s for s in rec.drain() if s.request_id == "req-spans"]
    assert {s.process for s in spans} == {rec.process}   # in-process workers: one clock
    got = {(s.stage, s.component) for s in spans}
    assert {("detect", c) for c in DETECT_COMPONENTS} <= got
    assert {("classify", c) for c in CLASSIFY_COMPONENTS} <= got
    assert all(s.start_ns <= s.end_ns for s in spans)
    assert sum(1 for s in spans if (s.stage, s.component) == ("classify", "inference")) == 3
    assert sum(1 for s in spans if (s.stage, s.component) == ("classify", "broker")) == 6   # crop + result legs
    header = out["timing"].server_timing()
    for key in ("detect-decode", "detect-resize", "detect-normalize", "detect-inference",
                "detect-postprocess", "classify-inference", "classify-broker"):
        assert key + ";dur=" in header


def test_missing_results_time_out_naming_the_crops(tiny_detector, tiny_classifier, pre, photo_jpeg):
    p = _pipeline(tiny_detector, tiny_classifier, pre, k=3, workers=0, result_timeout_s=0.3)
    t0 = time.monotonic()
    try:
        with pytest.raises(ResultTimeout, match=r"crop\(s\) \[0, 1, 2\] of 3") as info:
            p.process("req-timeout", photo_jpeg, None)
    finally:
        p.stop()
    assert 0.3 <= time.monotonic() - t0 < 2
    assert info.value.missing == [0, 1, 2]
    assert p.stats()["in_flight"] == 0


def test_duplicate_results_are_ignored(tiny_detector, tiny_classifier, pre, photo_jpeg):
    broker = MemoryBroker()
    p = _pipeline(tiny_detector, tiny_classifier, pre, k=2, workers=0, broker=broker)
    backend = make_backend("embedded", tiny_classifier)
    worker = ClassifierWorker(broker, backend, pre, tiny_classifier, batch=8, name="dup")

    def deliver_twice():   # an at-least-once broker redelivering: crop 0's result comes twice
        got = []
        while len(got) < 2:
            got += broker.consume("crops", "classifiers", "dup", max_messages=8, timeout_s=0.1)
        worker.handle(got[:1])
        worker.handle(got[:1])
        time.sleep(0.1)   # the listener sees both before the request can complete
        worker.handle(got[1:])
        worker.handle(got)   # after completion: late, dropped

    th = threading.Thread(target=deliver_twice)
    th.start()
    try:
        out = p.process("req-dup", photo_jpeg, None)
    finally:
        th.join()
        time.sleep(0.2)
        p.stop()
        backend.close()
    assert len(out["detections"]) == 2
    # crop 0's second copy arrives while the request waits: a duplicate; the last two copies are
    # duplicates or late (dropped) depending on whether the request had finished by then
    assert p.duplicate_results >= 1 and p.duplicate_results + p.late_results == 3


def test_k_zero_and_nothing_above_threshold_publish_nothing(tiny_detector, tiny_classifier, pre,
                                                            photo_jpeg):
    broker = MemoryBroker()
    for kw in ({"k": 0}, {"k": 4, "score_threshold": 1.1}):
        p = _pipeline(tiny_detector, tiny_classifier, pre, broker=broker, workers=0, **kw)
        try:
            out = p.process("req-none", photo_jpeg, None)
        finally:
            p.stop()
        assert out["k"] == 0 and out["detections"] == []
    assert broker.depth("crops") == 0


def test_full_broker_raises_broker_full(tiny_detector, tiny_classifier, pre, photo_jpeg):
    p = _pipeline(tiny_detector, tiny_classifier, pre, k=4, workers=0,
                  broker=MemoryBroker(maxsize=1), publish_timeout_s=0.05)
    try:
        with pytest.raises(BrokerFull):
            p.process("req-full", photo_jpeg, None)
    finally:
        p.stop()
    assert p.stats()["in_flight"] == 0


def test_classifier_failure_is_reported_not_timed_out(tiny_detector, tiny_classifier, pre, photo_jpeg):
    wrong = dataclasses.replace(tiny_classifier, input_hw=(16, 16))   # the ONNX model wants 32x32
    p = _pipeline(tiny_detector, wrong, pre, k=2, result_timeout_s=10, warmup=False)
    t0 = time.monotonic()
    try:
        with pytest.raises(ClassifierFailed, match="classifier inference failed"):
            p.process("req-fail", photo_jpeg, None)
    finally:
        p.stop()
    assert time.monotonic() - t0 < 5
    assert p.workers[0].errors >= 1


def test_concurrent_requests_get_their_own_results(tiny_detector, tiny_classifier, pre, photo_jpeg):
    p = _pipeline(tiny_detector, tiny_classifier, pre, k=4, workers=2, max_batch=4, max_delay_ms=2)
    ref = p.process("ref", photo_jpeg, None)
    outs, errors = {}, []

    def call(i):
        try:
            outs[i] = p.process(f"c{i}", photo_jpeg, None)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.stop()
    assert not errors
    for i, o in outs.items():
        assert o["request_id"] == f"c{i}"
        for d, r in zip(o["detections"], ref["detections"]):
            assert d["box"] == r["box"] and d["class_id"] == r["class_id"]
            assert d["label_score"] == pytest.approx(r["label_score"], abs=1e-5)


def _classify_spans(rec, rid):
    return [s for s in rec.drain() if s.request_id == rid and s.stage == "classify"]


def test_a_requests_crops_are_classified_in_one_batch_like_one_by_one(tiny_detector, tiny_classifier,
                                                                      pre, photo_jpeg):
    """Default worker batch = k: the 4 crops go through ONE classifier call (every crop's
    inference span is that call: same start/end, batch 4); labels and scores are those of
    classifying the crops one at a time (worker_batch=1: four calls of batch 1)."""
    outs, spans = {}, {}
    for wb in (None, 1):
        rec = SpanRecorder()
        p = _pipeline(tiny_detector, tiny_classifier, pre, k=4, workers=0, worker_batch=wb,
                      recorder=rec)
        try:
            # the crops are all in the broker before the worker starts: one consume takes them
            # (in a running gateway they are published back to back, a worker is usually waiting)
            sub = p.submit(f"req-batch-{wb}", photo_jpeg, None)
            assert p.worker_batch == (4 if wb is None else 1) == p.add_worker("w").batch
            p.wait(sub)
            outs[wb] = p.finish(sub)
            time.sleep(0.05)   # the listener records the result legs right before the wake-up
        finally:
            p.stop()
        spans[wb] = _classify_spans(rec, f"req-batch-{wb}")
    inf = [s for s in spans[None] if s.component == "inference"]
    assert len(inf) == 4 and len({(s.start_ns, s.end_ns) for s in inf}) == 1
    assert sorted(json.loads(s.attrs)["crop"] for s in inf) == [0, 1, 2, 3]
    assert {json.loads(s.attrs)["batch"] for s in inf} == {4}
    assert p.workers[0].batches == 4 and len({(s.start_ns, s.end_ns) for s in spans[1]
                                              if s.component == "inference"}) == 4
    # each crop keeps its own chain: broker legs, serialize, resize, normalize, queue, inference
    for crop in range(4):
        mine = [s for s in spans[None] if json.loads(s.attrs)["crop"] == crop]
        assert {s.component for s in mine} == CLASSIFY_COMPONENTS
        q = next(s for s in mine if s.component == "queue")
        assert q.end_ns == inf[0].start_ns   # waits for the batch (its siblings' preprocessing)
    for a, b in zip(outs[None]["detections"], outs[1]["detections"]):
        assert (a["box"], a["class_id"], a["label"]) == (b["box"], b["class_id"], b["label"])
        assert a["label_score"] == pytest.approx(b["label_score"], abs=1e-5)


def test_wait_async_frees_the_thread_and_gives_the_same_answer(tiny_detector, tiny_classifier, pre,
                                                               photo_jpeg):
    """The gateway's path: submit on a thread, await the crops on an event loop, finish."""
    p = _pipeline(tiny_detector, tiny_classifier, pre, k=3, workers=1)
    try:
        ref = p.process("ref", photo_jpeg, None)

        async def serve(rid):
            sub = await asyncio.get_running_loop().run_in_executor(None, p.submit, rid,
                                                                   photo_jpeg, None)
            await p.wait_async(sub)
            return p.finish(sub)

        async def many():
            return await asyncio.gather(*(serve(f"a{i}") for i in range(6)))

        outs = asyncio.run(many())
    finally:
        p.stop()
    assert [o["request_id"] for o in outs] == [f"a{i}" for i in range(6)]
    for o in outs:
        assert [d["class_id"] for d in o["detections"]] == [d["class_id"] for d in ref["detections"]]
        assert "classify-inference;dur=" in o["timing"].server_timing()
    assert p.stats()["in_flight"] == 0


def test_wait_async_times_out_naming_the_crops(tiny_detector, tiny_classifier, pre, photo_jpeg):
    p = _pipeline(tiny_detector, tiny_classifier, pre, k=2, workers=0, result_timeout_s=0.3)
    try:
        sub = p.submit("req-async-timeout", photo_jpeg, None)
        with pytest.raises(ResultTimeout, match=r"crop\(s\) \[0, 1\] of 2"):
            asyncio.run(p.wait_async(sub))
    finally:
        p.stop()
    assert p.stats()["in_flight"] == 0


def test_worker_batch_is_capped_by_a_fixed_batch_model(tiny_classifier, pre):
    backend = make_backend("embedded", tiny_classifier)
    backend.batch_limit = 1      # as for a model exported with batch dim 1
    worker = ClassifierWorker(MemoryBroker(), backend, pre, tiny_classifier, batch=4)
    assert worker.batch == 1
    backend.close()
