"""What `docker compose up` needs from the code, checked without an engine (the engine run itself
is `make compose-test`: scripts/compose_test.sh + tests/compose_e2e.py):

* a models directory the runtime image mounts read-only is loaded without writing anything, and
  the runtime finds the builder's models whatever build stack it has installed (issue 11, failure 1:
  ``OSError: [Errno 30] Read-only file system: '.../.locks/...lock'``);
* the TF Serving client: REST by default in compose, gRPC without its imports fails clearly;
* the compose file: every third-party image is an OVERHEAD_*_IMAGE variable defaulting to upstream,
  the stand-ins declare non-root users, the Triton flavour/instance kind come from variables.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from pipelines.models import cache

ROOT = Path(__file__).resolve().parents[1]


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")}


@pytest.fixture(scope="module")
def builder_dir(tmp_path_factory) -> Path:
    """A models dir as the `models` service leaves it: built with TensorFlow present."""
    import tensorflow, tf2onnx  # noqa: F401,E401  (the [build] extra: make test installs it)
    d = tmp_path_factory.mktemp("models")
    info = cache.ensure_model("custom_cnn", d, formats=("onnx", "savedmodel"), in_process=False,
                              progress=False)
    assert (info.directory / cache.BUILD_FILE).is_file()
    return d


def test_reproduce_runtime_without_build_stack_then_fixed(builder_dir, monkeypatch):
    """The runtime image has no [build] extra: its versions differ from the builder's. Before the
    fix the key missed and the process opened a lock file in the (read-only) volume."""
    before = _tree(builder_dir)
    built = cache.ensure_model("custom_cnn", builder_dir, formats=("onnx", "savedmodel"))
    monkeypatch.setattr(cache, "build_versions",
                        lambda: {"tensorflow": "missing", "keras": "missing", "tf2onnx": "missing"})
    info = cache.ensure_model("custom_cnn", builder_dir)        # the gateway's call
    assert info.directory == built.directory
    assert _tree(builder_dir) == before                           # nothing written: no .locks


def test_read_only_dir_other_versions_installed(builder_dir, monkeypatch):
    """TensorFlow present but at other versions, and the directory read-only (a `:ro` volume):
    the build of the same settings is used, nothing is written."""
    before = _tree(builder_dir)
    built = cache.ensure_model("custom_cnn", builder_dir)
    monkeypatch.setattr(cache, "build_versions",
                        lambda: {"tensorflow": "0.0.1", "keras": "0.0.1", "tf2onnx": "0.0.1"})
    monkeypatch.setattr(cache, "_writable", lambda d: False)    # EROFS (root ignores chmod)
    assert cache.ensure_model("custom_cnn", builder_dir).directory == built.directory
    assert _tree(builder_dir) == before
    # other settings are NOT taken from a build made with different ones
    with pytest.raises(FileNotFoundError, match="cannot be built here.*read-only"):
        cache.ensure_model("custom_cnn", builder_dir, seed=7)
    assert _tree(builder_dir) == before


def test_writable_with_build_stack_keeps_the_honest_key(builder_dir, monkeypatch):
    """Where TensorFlow is installed and the dir is writable, another TF version is a miss (the
    fallback is only for processes that cannot build)."""
    monkeypatch.setattr(cache, "build_versions",
                        lambda: {"tensorflow": "0.0.1", "keras": "0.0.1", "tf2onnx": "0.0.1"})
    assert cache._can_build(builder_dir)
    calls = []
    monkeypatch.setattr(cache, "_build_keras", lambda *a, **k: calls.append(a) or
                        (_ for _ in ()).throw(RuntimeError("would build")))
    with pytest.raises(RuntimeError, match="would build"):
        cache.ensure_model("custom_cnn", builder_dir)
    assert calls


def test_read_only_bind_mount_for_real(builder_dir, tmp_path):
    """A real read-only mount when this process may make one (root with CAP_SYS_ADMIN); a child
    process without the build stack loads the model from it."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(builder_dir), str(ro)],
                      capture_output=True).returncode:
        pytest.fail("cannot bind-mount read-only here: run the tests as root (CI does)",
                    pytrace=False)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
        assert not os.access(ro, os.W_OK)
        code = ("import importlib.metadata as m, sys; real = m.version; "
                "m.version = lambda d: (_ for _ in ()).throw(m.PackageNotFoundError(d)) "
                "if d in ('tensorflow', 'tensorflow-cpu', 'tf-nightly', 'keras', 'tf2onnx') else real(d); "
                "from pipelines.models import ensure_model; "
                f"print(ensure_model('custom_cnn', {str(ro)!r}).directory)")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert Path(r.stdout.strip()).parent == ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_tfserving_grpc_without_its_imports_fails_clearly(monkeypatch):
    import builtins

    from pipelines.inference import tfserving

    real_import = builtins.__import__

    def no_tf(name, *a, **k):
        if name.startswith(("tensorflow_serving", "tensorflow")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tf)
    obj = tfserving.TFServingBackend.__new__(tfserving.TFServingBackend)
    obj.protocol, obj.host, obj.port, obj.model_name, obj.model_version = "grpc", "tfserving", 8500, "m", None
    with pytest.raises(RuntimeError, match=r"http://tfserving:8501"):
        obj._setup_grpc()


def test_compose_images_are_variables_with_upstream_defaults():
    text = (ROOT / "deploy" / "docker-compose.yml").read_text()
    from deploy.services import SERVICES

    for svc, var in (("triton", "OVERHEAD_TRITON_IMAGE"), ("tfserving", "OVERHEAD_TFSERVING_IMAGE"),
                     ("redis", "OVERHEAD_REDIS_IMAGE"), ("kafka", "OVERHEAD_KAFKA_IMAGE")):
        assert f"image: ${{{var}:-{SERVICES[svc].image}}}" in text, svc
    assert "OVERHEAD_TFSERVING_URL:-http://tfserving:8501" in text
    assert "OVERHEAD_TRITON_FLAVOUR:-onnxruntime" in text


def test_standin_dockerfiles_declare_non_root_users():
    for f in ["deploy/Dockerfile", *sorted(str(p.relative_to(ROOT)) for p in
                                        (ROOT / "deploy" / "compose").glob("*.Dockerfile"))]:
        users = re.findall(r"^USER (\S+)", (ROOT / f).read_text(), re.M)
        assert users and users[-1].split(":")[0] not in ("0", "root"), f


def test_triton_instance_kind_from_the_overlay():
    from deploy.triton.repository import TensorSpec, TritonModelSpec, config_pbtxt

    spec = TritonModelSpec("m", Path("m.onnx"), [TensorSpec("x", "TYPE_FP32", [3])],
                           [TensorSpec("y", "TYPE_FP32", [2])], instance_kind="KIND_GPU")
    assert "kind: KIND_GPU" in config_pbtxt(spec, "onnxruntime")
    gpu = (ROOT / "deploy" / "docker-compose.gpu.yml").read_text()
    assert "OVERHEAD_TRITON_INSTANCE_KIND: KIND_GPU" in gpu
    assert "OVERHEAD_DALI_DEVICE" not in gpu        # read by nothing: not claimed
