"""The inference-only ceiling: its closed-loop drivers against a known answer, the measurement on
REAL ONNX Runtime sessions (the tiny models of conftest.py), and a real sweep (real gateway on
loopback with the seeded SSD + MobileNetV2, Locust) through ``analysis/bench_ceiling.py``: the
sweep writes ceiling.json, the report's first finding states the ratio, and a run without
ceiling.json still reports, saying the ceiling was not measured.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from loadtest import ceiling_load
from loadtest.ceiling import measure_for_sweep
from overhead.config import GatewaySettings
from overhead.contract.ceiling import CeilingRecord, read_ceiling, write_ceiling

REPO = Path(__file__).resolve().parent.parent


class SleepModel:
    """TEST DOUBLE of one model instance whose inference is a fixed sleep per item (one call at a
    time, like a session behind its instance lock): a model with a known throughput."""

    def __init__(self, seconds_per_item: float):
        self.s = seconds_per_item
        self._lock = threading.Lock()

    def infer(self, x):
        with self._lock:
            time.sleep(self.s)

    def infer_batch(self, batch):
        with self._lock:
            time.sleep(self.s * len(batch))


def _bounded(rate: float, bound: float, seconds: float) -> None:
    # never above the known answer (one unit of slack for the window's edge); a run far below it
    # means the driver did not keep the instances busy (a sequential mix would give half of it)
    assert rate <= bound + 1 / seconds, (rate, bound)
    assert rate >= 0.6 * bound, (rate, bound)


def test_drivers_reach_the_known_ceiling_of_fixed_sleep_models():
    det, cls = SleepModel(0.010), SleepModel(0.005)       # 100 images/s, 200 crops/s
    x, secs = np.zeros(3, np.float32), 1.5
    _bounded(ceiling_load.detect_alone(det, [x], 4, 0.2, secs).rate, 100, secs)
    _bounded(ceiling_load.classify_alone([cls], [x], 4, 0.2, secs).rate, 200, secs)
    # the mix pipelines the stages: min(100 detections/s, 200 crops/s / k)
    _bounded(ceiling_load.mix(det, [cls], [(x, [x, x])], 1, 4, 0.2, secs).rate, 100, secs)
    _bounded(ceiling_load.mix(det, [cls], [(x, [x] * 4)], 4, 4, 0.2, secs).rate, 50, secs)
    two = [SleepModel(0.005), SleepModel(0.005)]          # two classifier instances: 400 crops/s
    _bounded(ceiling_load.mix(det, two, [(x, [x] * 4)], 1, 4, 0.2, secs).rate, 100, secs)
    # an image without crops is done after its detection
    _bounded(ceiling_load.mix(det, [cls], [(x, [])], 1, 4, 0.2, secs).rate, 100, secs)


def test_a_failing_model_fails_the_measurement():
    class Broken:
        def infer(self, x):
            raise RuntimeError("model exploded")
    with pytest.raises(RuntimeError, match="model exploded"):
        ceiling_load.detect_alone(Broken(), [np.zeros(3)], 2, 0.0, 0.5)


def _gateway_config(detector, classifier, **settings) -> dict:
    models = {role: {"name": m.name, "onnx_path": m.onnx_path, "input_hw": list(m.input_hw),
                     "normalization": m.normalization}
              for role, m in (("detector", detector), ("classifier", classifier))}
    return {"models": models, "settings": GatewaySettings(**settings).dump()}


def test_ceiling_of_real_onnx_sessions(tmp_path, tiny_detector, tiny_classifier, photo_jpeg):
    corpus = []
    for size in ("small", "large"):
        p = tmp_path / f"{size}.jpg"
        p.write_bytes(photo_jpeg)
        corpus.append({"size_class": size, "path": str(p)})
    cfg = _gateway_config(tiny_detector, tiny_classifier, k=3, score_threshold=0.0,
                          worker_batch=2, workers=2)
    said = []
    rec = measure_for_sweep(cfg, corpus, ["small", "large"], 0.4, 0.1, say=said.append)
    assert rec.status == "measured", rec.reason
    det, cls = rec.stage("detect"), rec.stage("classify")
    assert det.unit == "req/s" and det.rate > 0 and det.units == det.calls
    assert cls.unit == "crops/s" and cls.instances == 2 and cls.batch == 2
    assert cls.units == 2 * cls.calls                        # every call a full batch of 2
    for size in ("small", "large"):
        m = rec.mix(size)
        assert m.rps > 0 and m.requests > 0 and m.k == 3.0 and m.cpu_s is not None
        # the data handling around the models, measured alone in process CPU
        assert set(m.data_cpu_ms) == {"decode", "resize", "normalize", "postprocess", "serialize"}
        assert all(v >= 0 for v in m.data_cpu_ms.values()) and m.data_cpu_ms["decode"] > 0
    assert rec.settings["intra_op_threads"] == 1 and rec.settings["classifier_instances"] == 2
    assert any(s.startswith("detector alone") for s in said)
    write_ceiling(tmp_path, rec)
    assert read_ceiling(tmp_path) == rec                     # the JSON round trip is lossless


def test_ceiling_skipped_when_the_gateway_has_no_models(tmp_path, tiny_detector, tiny_classifier):
    rec = measure_for_sweep({"server": "stand-in"}, [], ["1MP"], 0.1, 0.0)
    assert rec.status == "skipped" and "no models" in rec.reason and not rec.measured
    cfg = _gateway_config(tiny_detector, tiny_classifier)
    cfg["models"]["detector"]["onnx_path"] = str(tmp_path / "elsewhere.onnx")
    rec = measure_for_sweep(cfg, [], ["1MP"], 0.1, 0.0)
    assert rec.status == "skipped" and "not on this machine" in rec.reason
    assert read_ceiling(tmp_path) is None                    # an old run: no ceiling.json


@pytest.mark.slow
def test_bench_ceiling_smoke_real_sweep_ceiling_and_report(tmp_path):
    """One real sweep through the benchmark (tiny durations): ceiling.json, the report's first
    finding, the bench's last line; then the same run without ceiling.json still reports."""
    from pipelines.models import ensure_model

    det, cls = ensure_model("ssd_mobilenetv2"), ensure_model("mobilenetv2")
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "analysis/bench_ceiling.py", "--sizes", "0.1MP", "--users", "2",
         "--step-seconds", "3", "--warmup-seconds", "0.5", "--ceiling-seconds", "0.5",
         "--ceiling-warmup-seconds", "0.2", "--out", str(out), "--detector", det.name,
         "--classifier", cls.name, "--models-dir", str(Path(det.onnx_path).parent.parent),
         "--k", "2"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"ceiling ratio 0\.1MP: (\d+\.\d\d) \(pipeline (\d+\.\d) req/s, "
                     r"ceiling (\d+\.\d) req/s\)", last)
    assert m, proc.stdout[-2000:]
    assert "CPU per request outside inference, ms: decode " in proc.stdout
    run = out / "0.1MP"
    rec = read_ceiling(run)
    assert rec.measured and rec.settings["k"] == 2 and rec.mix("0.1MP").k <= 2
    assert rec.settings["detector"] == det.name
    config = json.loads((run / "config.json").read_text())
    assert config["ceiling"]["status"] == "measured"
    assert "sweep: ceiling: detector alone" in proc.stderr

    from analysis.breakdown import report
    rep = report(run, quiet=True)
    first = rep.findings[0]
    assert first.startswith("Pipeline reached ") and "of the inference-only ceiling" in first
    ratio, pipe, ceil = (float(g) for g in m.groups())
    assert f"({pipe:.1f} req/s of {ceil:.1f})" in first
    assert ratio == pytest.approx(pipe / ceil, abs=0.02)
    assert "= inference " in first and "+ the rest (HTTP, broker, Python" in first
    md = (run / "report.md").read_text()
    assert "## Inference-only ceiling" in md and "detect alone" in md
    assert md.index("Pipeline reached") < md.index("decode+resize take")   # the first finding
    assert "Inference-only ceiling" in (run / "report.html").read_text()

    (run / "ceiling.json").unlink()                         # a run from before the ceiling
    rep = report(run, quiet=True)
    assert rep.findings[0].startswith("The inference-only ceiling was not measured")
    assert "## Inference-only ceiling" not in (run / "report.md").read_text()
    write_ceiling(run, CeilingRecord("skipped", "--no-ceiling"))
    assert "not measured (skipped: --no-ceiling)" in report(run, quiet=True).findings[0]


def test_the_ratio_of_a_blend_of_size_classes_uses_the_harmonic_ceiling():
    """Known answer: half the requests at a 10 req/s ceiling, half at 30 -> the blend's ceiling
    is 1 / (0.5/10 + 0.5/30) = 15 req/s; the best step by goodput is the one compared."""
    import pandas as pd

    from analysis.report.ceiling import ceiling_ratio
    from analysis.report.summary import Summary
    from overhead.contract.ceiling import MixCeiling

    rec = CeilingRecord("measured", mixes=(MixCeiling("1MP", 4.0, 10.0, 20, 2.0, 6),
                                           MixCeiling("8MP", 4.0, 30.0, 60, 2.0, 6)))
    steps = pd.DataFrame({"step": [0, 1], "users": [2, 8], "requests": [40, 120],
                          "throughput_rps": [4.0, 12.0], "goodput_rps": [4.0, 12.0]})
    main = pd.DataFrame({"step": [0, 0, 1, 1], "users": [2, 2, 8, 8],
                         "size_class": ["1MP", "8MP", "1MP", "8MP"], "requests": [20, 20, 60, 60]})
    cr = ceiling_ratio(rec, Summary(main=main, stages=pd.DataFrame(), steps=steps))
    assert cr.step == 1 and cr.users == 8
    assert cr.ceiling_rps == pytest.approx(15.0) and cr.ratio == pytest.approx(0.8)
    assert cr.per_size == {"1MP": pytest.approx((6.0, 7.5)), "8MP": pytest.approx((6.0, 7.5))}
    assert ceiling_ratio(CeilingRecord("skipped", "--no-ceiling"), Summary(main, main, steps)) is None


def test_the_report_says_whether_the_cpu_or_the_instances_bound_the_ceiling():
    """Known answer: a mix whose process used 3.0 s of CPU in a 3 s window kept 1.00 core busy
    of 2 (instance-bound); 5.9 s in 3 s is 1.97 of 2 (no such warning). A remote server's CPU
    is not the measuring process's, so nothing is said then."""
    import pandas as pd

    from analysis.report.ceiling import _ceiling_bound, ceiling_ratio
    from analysis.report.load import Run
    from analysis.report.summary import Summary
    from overhead.contract.ceiling import MixCeiling

    steps = pd.DataFrame({"step": [0], "users": [4], "requests": [100],
                          "throughput_rps": [9.0], "goodput_rps": [9.0]})
    main = pd.DataFrame({"step": [0], "users": [4], "size_class": ["1MP"], "requests": [100]})
    run = Run(path=Path("."), config={"machine": {"cores": 2}}, steps=steps,
              requests=pd.DataFrame(), spans=pd.DataFrame())
    settings = {"detector_instances": 1, "classifier_instances": 1, "intra_op_threads": 1}

    def sentence(cpu_s: float, backend: str = "embedded", **extra) -> str:
        rec = CeilingRecord("measured", backend=backend, settings={**settings, **extra},
                            mixes=(MixCeiling("1MP", 4.0, 10.0, 30, 3.0, 6, cpu_s),))
        cr = ceiling_ratio(rec, Summary(main=main, stages=pd.DataFrame(), steps=steps))
        return _ceiling_bound(run, rec, cr)

    bound = sentence(3.0)
    assert "kept 1.00 of the machine's 2 cores busy" in bound and "bound it, not the CPU" in bound
    assert "1 detector and 1 classifier instance(s)" in bound
    busy = sentence(5.9)
    assert "kept 1.97 of the machine's 2 cores busy" in busy and "bound it" not in busy
    assert sentence(3.0, backend="triton", cpu_of="this process") == ""
    assert "kept 1.00" in sentence(3.0, backend="triton", cpu_of="this process + server pid 7")
