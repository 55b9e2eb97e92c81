"""TF Serving support: the deployment files (``deploy/tfserving``) and the ``tfserving`` client
backend over REST (row and columnar formats) and gRPC (real ``tensorflow-serving-api`` protos).

The real ``tensorflow_model_server`` cannot run here (no binary, no Docker engine): the server
side is a TEST DOUBLE (``tests/tfserving_double.py``): a real gRPC server implementing
``PredictionService.Predict`` / ``ModelService.GetModelStatus`` and a real HTTP server with TF
Serving's REST schema, both running a real SavedModel (``custom_cnn``) in TensorFlow. Outputs are
compared with the ONNX model run by the embedded backend."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from tfserving_double import TFServingDouble

MODEL = "custom_cnn"


@pytest.fixture(scope="module")
def cnn():
    from pipelines.models import ensure_model

    return ensure_model(MODEL, formats=("onnx", "savedmodel"))


@pytest.fixture(scope="module")
def tfs_dir(cnn, tmp_path_factory):
    from deploy.tfserving.config import TFServingSettings, write_config

    out = tmp_path_factory.mktemp("tfserving")
    write_config(out, [cnn], TFServingSettings(max_batch=8, batch_timeout_us=500,
                                               num_batch_threads=2, max_enqueued_batches=50,
                                               allowed_batch_sizes=[1, 2, 4, 8]),
                 base_path="/models")
    return out


@pytest.fixture(scope="module")
def double(tfs_dir):
    with TFServingDouble(tfs_dir, [MODEL]) as srv:
        yield srv


@pytest.fixture(scope="module")
def items(cnn):
    rng = np.random.default_rng(0)
    h, w = cnn.input_hw
    return rng.random((3, h, w, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def expected(cnn, items):
    from pipelines.inference import make_backend

    b = make_backend("embedded", cnn)
    try:
        return b.infer_batch(items).outputs["probs"]
    finally:
        b.close()


def test_config_files(tfs_dir):
    cfg = (tfs_dir / "models.config").read_text()
    assert f'name: "{MODEL}"' in cfg and f'base_path: "/models/{MODEL}"' in cfg
    assert 'model_platform: "tensorflow"' in cfg and "versions: 1" in cfg
    bp = (tfs_dir / "batching_parameters.txt").read_text()
    for line in ("max_batch_size { value: 8 }", "batch_timeout_micros { value: 500 }",
                 "num_batch_threads { value: 2 }", "max_enqueued_batches { value: 50 }",
                 "allowed_batch_sizes: 4"):
        assert line in bp
    assert (tfs_dir / MODEL / "1" / "saved_model.pb").exists()
    # the text files parse as the real protos
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    msc = text_format.Parse(cfg, model_server_config_pb2.ModelServerConfig())
    assert msc.model_config_list.config[0].name == MODEL
    assert list(msc.model_config_list.config[0].model_version_policy.specific.versions) == [1]
    # (BatchingParameters' proto is not in tensorflow-serving-api: checked as text above)
    from deploy.tfserving.config import TFServingSettings
    with pytest.raises(ValueError, match="must end with max_batch"):
        TFServingSettings(max_batch=8, allowed_batch_sizes=[1, 2, 4])


@pytest.mark.parametrize("how", ["rest-instances", "rest-inputs", "grpc"])
def test_round_trip_equals_embedded(how, double, cnn, items, expected):
    from pipelines.inference import make_backend

    url = double.grpc_url if how == "grpc" else double.rest_url
    fmt = "inputs" if how == "rest-inputs" else "instances"
    b = make_backend("tfserving", cnn, url=url, rest_format=fmt, max_batch=4)  # extra opts ignored
    try:
        r = b.infer(items[0])
        assert r.outputs["probs"].shape == (cnn.num_classes,) and r.batch_size == 1
        np.testing.assert_allclose(r.outputs["probs"], expected[0], atol=1e-4)
        assert r.start_ns <= r.end_ns and [s[0] for s in r.spans] == ["serialize", "serialize"]
        rb = b.infer_batch(items)
        np.testing.assert_allclose(rb.outputs["probs"], expected, atol=1e-4)
        assert rb.batch_size == 3
        d = b.describe()
        assert d["backend"] == "tfserving" and d["protocol"] == how.split("-")[0].replace("rest", "http")
    finally:
        b.close()


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_missing_model_is_a_clear_error(proto, double, cnn):
    from pipelines.inference import make_backend
    from pipelines.inference.tfserving import TFServingUnavailable

    url = double.grpc_url if proto == "grpc" else double.rest_url
    with pytest.raises(TFServingUnavailable) as ei:
        make_backend("tfserving", cnn, url=url, model_name="no_such_model")
    msg = str(ei.value)
    assert "no_such_model" in msg and url.split("://")[1] in msg and "not served" in msg
    with pytest.raises(TFServingUnavailable, match="version 7"):
        make_backend("tfserving", cnn, url=url, model_version=7)


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_server_down_is_fast_and_clear(proto, cnn):
    from pipelines.inference import make_backend
    from pipelines.inference.tfserving import TFServingUnavailable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]            # closed again: nothing listens there
    t0 = time.monotonic()
    with pytest.raises(TFServingUnavailable) as ei:
        make_backend("tfserving", cnn, url=f"{proto}://127.0.0.1:{port}", connect_timeout_s=2)
    assert time.monotonic() - t0 < 3
    assert "unreachable" in str(ei.value) and f"127.0.0.1:{port}" in str(ei.value)
    assert MODEL in str(ei.value)


def test_server_gone_mid_run_raises_unavailable(tfs_dir, cnn, items):
    from pipelines.inference import make_backend
    from pipelines.inference.tfserving import TFServingUnavailable

    srv = TFServingDouble(tfs_dir, [MODEL]).start()
    b = make_backend("tfserving", cnn, url=srv.rest_url, timeout_s=3)
    try:
        b.infer(items[0])
        srv.stop()
        t0 = time.monotonic()
        with pytest.raises(TFServingUnavailable):
            b.infer(items[0])
        assert time.monotonic() - t0 < 4
    finally:
        b.close()
        srv.stop()


def test_server_flags_and_warmup_against_the_doubles_schema(cnn, tmp_path):
    """Issue 17 item 6: the generated flags start the double (TF Serving's flag table, real protos)
    and its warm-up requests are replayed at load, one per batch size."""
    from deploy.tfserving.config import WARMUP_FILE, TFServingSettings, server_flags, write_config
    from tfserving_double import parse_server_flags

    s = TFServingSettings(max_batch=4, allowed_batch_sizes=[1, 2, 4], grpc_max_threads=8,
                          intra_op_parallelism=1, inter_op_parallelism=1, warmup_iterations=2)
    res = write_config(tmp_path, [cnn], s, base_path="/models/tfserving")
    flags = res["flags"]
    assert (tmp_path / "server_flags.txt").read_text().split() == flags
    f = parse_server_flags(flags)
    assert f == {"port": 8500, "rest_api_port": 8501, "model_config_file": "/models/tfserving/models.config",
                 "enable_batching": True, "batching_parameters_file": "/models/tfserving/batching_parameters.txt",
                 "grpc_max_threads": 8, "tensorflow_intra_op_parallelism": 1,
                 "tensorflow_inter_op_parallelism": 1, "enable_model_warmup": True,
                 "num_request_iterations_for_warmup": 2}
    assert (tmp_path / MODEL / "1" / WARMUP_FILE).stat().st_size > 0
    with TFServingDouble.from_flags(flags, {"/models/tfserving": tmp_path}) as srv:
        assert srv.warmup_log == {MODEL: [1, 2, 4]}
        assert srv.flags["grpc_max_threads"] == 8
    # defaults: 0 threads = the server's own choice, flags left out; no batching, no warm-up
    off = server_flags(TFServingSettings(enable_batching=False, enable_model_warmup=False), "/m")
    assert off == ["--port=8500", "--rest_api_port=8501", "--model_config_file=/m/models.config"]
    for bad in (["--grpc_max_thread=8"], ["--grpc_max_threads=eight"], ["--enable_model_warmup=yes"]):
        with pytest.raises(ValueError):
            parse_server_flags(bad)
    with pytest.raises(ValueError, match="must be >= 0"):
        TFServingSettings(grpc_max_threads=-1)


def _compose_main():
    """deploy/compose/tfserving_double_main.py (the double image's entry point), imported."""
    import importlib.util

    from deploy.services import ROOT

    spec = importlib.util.spec_from_file_location(
        "tfserving_double_main", ROOT / "deploy" / "compose" / "tfserving_double_main.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compose_runs_the_generated_server_flags(cnn, items, expected, tmp_path):
    """The compose/k8s ``tfserving`` command IS the generator's flags for the deployment's settings
    (what build-models writes to server_flags.txt); the double's image entry point starts from it,
    checking every flag against TF Serving's table and replaying the generated warm-up file."""
    import argparse

    import yaml

    from deploy.services import COMPOSE_FILE, TFSERVING_DIR, tfserving_command, tfserving_settings
    from deploy.tfserving.config import (add_settings_arguments, settings_argv, settings_from_args,
                                         write_config)
    from pipelines.inference import make_backend

    s = tfserving_settings()
    p = argparse.ArgumentParser()
    add_settings_arguments(p)
    assert settings_from_args(p.parse_args(settings_argv(s))) == s      # build-models passes s
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["tfserving"]["command"]
    assert compose == tfserving_command()
    for flag in ("--grpc_max_threads=8", "--tensorflow_intra_op_parallelism=2",
                 "--tensorflow_inter_op_parallelism=1", "--enable_model_warmup=true",
                 "--enable_batching=true", f"--batching_parameters_file={TFSERVING_DIR}/batching_parameters.txt"):
        assert flag in compose
    write_config(tmp_path, [cnn], s, base_path=TFSERVING_DIR)
    assert (tmp_path / "server_flags.txt").read_text().split() == compose
    main = _compose_main()
    srv = main.start(compose, {TFSERVING_DIR: tmp_path}, host="127.0.0.1")
    try:
        assert srv.warmup_log == {MODEL: [1, s.max_batch]}              # one request per size
        assert srv.flags["tensorflow_intra_op_parallelism"] == 2 and srv.flags["grpc_max_threads"] == 8
        b = make_backend("tfserving", cnn, url=srv.rest_url, timeout_s=30)
        try:
            np.testing.assert_allclose(b.infer_batch(items).outputs["probs"], expected, atol=1e-4)
        finally:
            b.close()
    finally:
        srv.stop()
    # TF Serving refuses these at start-up; so does the double (exit 1, nothing listens)
    for bad in (["--tensorflow_intra_op_parallelism=two"], ["--grpc_max_thread=8"]):
        with pytest.raises(ValueError):
            main.start(compose + bad, {TFSERVING_DIR: tmp_path}, host="127.0.0.1")
    assert main.main(compose + ["--enable_model_warmup=maybe"]) == 1
    from tfserving_double import parse_server_flags
    assert parse_server_flags(["--rest_api_enable_cors_support=true", "--num_tflite_pools=2"]) == \
        {"rest_api_enable_cors_support": True, "num_tflite_pools": 2}   # main.cc's other flags
    (tmp_path / "batching_parameters.txt").unlink()
    with pytest.raises(OSError):
        main.start(compose, {TFSERVING_DIR: tmp_path}, host="127.0.0.1")
