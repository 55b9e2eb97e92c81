import statistics
import threading
import time

import numpy as np
import pytest

from pipelines.inference import (BatcherClosed, EmbeddedBackend, MicroBatcher, OrtSession,
                                 make_backend)


def _items(n, hw=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((hw[0], hw[1], 3), dtype=np.float32) for _ in range(n)]


def test_session_reads_input_and_outputs_from_the_model(tiny_classifier, tiny_detector):
    s = OrtSession(tiny_classifier.onnx_path)
    assert s.input_name == "images"
    assert s.input_shape == (None, 32, 32, 3)
    assert s.output_names == ["probs"]
    out = s.run(np.stack(_items(3)))
    assert out["probs"].shape == (3, 10)
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, rtol=1e-5)
    d = OrtSession(tiny_detector.onnx_path)
    out = d.run(np.zeros((2, 64, 64, 3), np.float32))
    assert out["boxes"].shape == (2, 16, 4) and out["scores"].shape == (2, 16)


def test_max_batch_1_matches_direct_run_and_reports_times(tiny_classifier):
    s = OrtSession(tiny_classifier.onnx_path)
    mb = MicroBatcher(s, max_batch=1)
    for x in _items(4):
        r = mb.infer(x)
        np.testing.assert_allclose(r.outputs["probs"], s.run(x[None])["probs"][0], rtol=1e-6)
        assert r.batch_size == 1
        assert r.enqueue_ns <= r.start_ns <= r.end_ns
    # a leading batch dim of 1 is accepted
    assert mb.infer(_items(1)[0][None]).outputs["probs"].shape == (10,)
    with pytest.raises(ValueError, match="use infer_batch"):
        mb.infer(np.stack(_items(2)))
    mb.close()


def test_many_threads_are_batched_and_each_gets_its_own_rows(tiny_classifier):
    s = OrtSession(tiny_classifier.onnx_path)
    items = _items(32, seed=3)
    expected = s.run(np.stack(items))["probs"]
    mb = MicroBatcher(s, max_batch=8, max_delay_ms=20)
    results = [None] * len(items)
    barrier = threading.Barrier(len(items))

    def call(i):
        barrier.wait()
        results[i] = mb.infer(items[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mb.close()
    for i, r in enumerate(results):
        np.testing.assert_allclose(r.outputs["probs"], expected[i], rtol=1e-5, atol=1e-6)
        assert 1 <= r.batch_size <= 8
        assert r.enqueue_ns <= r.start_ns <= r.end_ns
    assert max(r.batch_size for r in results) > 1, "nothing was batched"


def test_single_item_waits_at_most_max_delay(tiny_classifier):
    mb = MicroBatcher(OrtSession(tiny_classifier.onnx_path), max_batch=8, max_delay_ms=30)
    x = _items(1)[0]
    t0 = time.perf_counter()
    r = mb.infer(x)
    waited = time.perf_counter() - t0
    mb.close()
    assert r.batch_size == 1
    assert 0.025 <= waited < 0.5
    assert (r.start_ns - r.enqueue_ns) >= 25e6


def test_errors_reach_every_caller_of_the_failing_batch(tiny_classifier):
    mb = MicroBatcher(OrtSession(tiny_classifier.onnx_path), max_batch=4, max_delay_ms=50)
    bad = np.zeros((31, 32, 3), np.float32)  # wrong height: ORT rejects the whole batch
    errors = []
    barrier = threading.Barrier(3)

    def call(x):
        barrier.wait()
        try:
            mb.infer(x)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(bad,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 3
    # the batcher keeps serving after a failure
    assert mb.infer(_items(1)[0]).outputs["probs"].shape == (10,)
    mb.close()
    with pytest.raises(BatcherClosed):
        mb.infer(_items(1)[0])


def test_infer_batch_keeps_the_batch_dim(tiny_classifier):
    be = make_backend("embedded", tiny_classifier, max_batch=1)
    assert isinstance(be, EmbeddedBackend)
    r = be.infer_batch(np.stack(_items(5)))
    assert r.outputs["probs"].shape == (5, 10) and r.batch_size == 5
    assert be.describe()["intra_op_threads"] == 1
    be.close()
    with pytest.raises(ValueError, match="unknown inference backend"):
        make_backend("nope", tiny_classifier)


def test_max_batch_1_adds_almost_nothing_over_session_run(tiny_classifier):
    """The max_batch=1 path is a lock plus three clock reads: measure it against session.run."""
    s = OrtSession(tiny_classifier.onnx_path)
    mb = MicroBatcher(s, max_batch=1)
    x = _items(1)[0]
    xb = x[None]
    for _ in range(50):
        s.run(xb)
        mb.infer(x)
    direct, batched = [], []
    for _ in range(400):
        t0 = time.perf_counter_ns()
        s.run(xb)
        t1 = time.perf_counter_ns()
        mb.infer(x)
        t2 = time.perf_counter_ns()
        direct.append(t1 - t0)
        batched.append(t2 - t1)
    d, b = statistics.median(direct), statistics.median(batched)
    print(f"session.run median {d / 1e3:.1f} us, MicroBatcher(max_batch=1).infer {b / 1e3:.1f} us, "
          f"overhead {(b - d) / 1e3:.1f} us")
    assert b - d < 50_000, "max_batch=1 should add microseconds, not tens of milliseconds"
