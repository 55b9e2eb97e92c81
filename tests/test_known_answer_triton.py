"""Known answer, inference: the REAL tritonserver serves a Python-backend model that sleeps a fixed
40 ms per request; its trace (level=TIMESTAMPS) is joined into spans exactly as a run's are
(``pipelines.inference.triton.server_spans``) and the report's critical path must give
``inference`` 40 ms ± 10% per call, with transfer and queue around it."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from analysis.report.attribution import by_component  # noqa: E402
from analysis.report.critical_path import critical_path  # noqa: E402
from overhead.contract.records import Span, field_names  # noqa: E402
from triton_server import require_triton  # noqa: E402

pytestmark = pytest.mark.slow
SLEEP_MS = 40.0
CONFIG = """name: "sleep40"
backend: "python"
max_batch_size: 1
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
MODEL = f'''import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy()
            time.sleep({SLEEP_MS / 1e3!r})
            out.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT", np.ascontiguousarray(x))]))
        return out
'''


def test_triton_sleep_model_shows_as_inference(tmp_path):
    require_triton()
    from deploy.triton.server import TritonServer
    from pipelines.inference.triton import TritonBackend, read_trace, server_spans

    repo = tmp_path / "repo"
    (repo / "sleep40" / "1").mkdir(parents=True)
    (repo / "sleep40" / "config.pbtxt").write_text(CONFIG)
    (repo / "sleep40" / "1" / "model.py").write_text(MODEL)
    trace = tmp_path / "trace.json"
    srv = TritonServer(repo, trace_file=trace, log_path=tmp_path / "triton.log", threads=1)
    srv.start(timeout_s=90)
    calls = []
    try:
        be = TritonBackend(SimpleNamespace(name="sleep40", input_hw=(0, 0)), url=srv.http_url)
        for i in range(25):
            r = be.infer(np.full(4, i, np.float32), request_id=f"req{i:04d}")
            assert r.outputs["OUTPUT"][0] == i        # a real answer, not an empty success
            calls.append((r.request_id, r.start_ns, r.end_ns))
            time.sleep(0.005)
        be.close()
    finally:
        srv.stop()
    mono_offset = time.time_ns() - time.monotonic_ns()
    traces = read_trace(trace)
    rows = []
    for rid, send, recv in calls:
        parts = server_spans(traces[rid], send, recv, mono_offset)
        assert parts, rid
        rows += [(rid, "detect", comp, s, e, None, None) for comp, s, e, _ in parts]
    requests = pd.DataFrame(calls, columns=["request_id", "send_ns", "recv_ns"])
    spans = pd.DataFrame(rows, columns=list(field_names(Span)))
    comp = by_component(critical_path(requests, spans)) / 1e6
    got = comp["inference"].iloc[5:]       # the first calls warm the stub up
    print(f"inference: expected {SLEEP_MS:.1f} ms per call, reported mean {got.mean():.2f} ms "
          f"(p50 {got.median():.2f}); transfer {comp['transfer'].mean():.2f} ms, queue "
          f"{comp['queue'].mean():.2f} ms, e2e {comp['e2e'].mean():.2f} ms")
    assert got.mean() == pytest.approx(SLEEP_MS, rel=0.10)
    assert got.median() == pytest.approx(SLEEP_MS, rel=0.10)   # the typical call, not only the mean
    assert (comp.drop(columns="e2e").sum(axis=1) - comp["e2e"]).abs().max() < 1e-6
