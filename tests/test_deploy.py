"""Deployment: the Compose files (validated by the real ``docker-compose`` 1.29, offline), their
agreement with ``deploy/services.py``, and the no-Docker launcher (``python -m deploy.local``)
bringing up REAL tritonserver + redis-server / tansu + gateway + worker processes, serving a real
request (and a short Locust sweep), and leaving no process behind after SIGTERM.

A missing ``docker-compose`` is a FAILURE: run ``scripts/ensure_compose.sh``."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
GPU = ROOT / "deploy" / "docker-compose.gpu.yml"
COMBOS = [("triton", "redis"), ("triton", "kafka"), ("tfserving", "redis"), ("tfserving", "kafka")]


def compose_bin() -> str:
    path = shutil.which("docker-compose")
    if not path:
        pytest.fail("docker-compose (Debian's 1.29, used offline to validate the compose files) is "
                    "not installed: run scripts/ensure_compose.sh (make test should call it)")
    return path


def compose_config(*files: Path, profiles=(), env=None) -> dict:
    argv = [compose_bin()]
    for f in files:
        argv += ["-f", str(f)]
    for p in profiles:
        argv += ["--profile", p]
    e = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "OVERHEAD_"))}
    e.update(env or {})
    r = subprocess.run(argv + ["config"], capture_output=True, text=True, cwd=ROOT, env=e,
                       timeout=60)
    assert r.returncode == 0, f"{' '.join(argv)} config failed:\n{r.stderr}"
    return yaml.safe_load(r.stdout)


# -- compose files ---------------------------------------------------------------------------
@pytest.mark.parametrize("server,broker", COMBOS)
@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_compose_config_validates(server, broker, gpu):
    from deploy.services import compose_env

    files = (COMPOSE, GPU) if gpu else (COMPOSE,)
    cfg = compose_config(*files, profiles=(server, broker), env=compose_env(server, broker))
    services = cfg["services"]
    assert {server, broker, "gateway", "worker", "models"} <= set(services)
    gw = services["gateway"]
    assert gw["environment"]["OVERHEAD_BACKEND"] == server
    assert gw["environment"]["OVERHEAD_BROKER"].startswith(f"{broker}://{broker}:")
    if gpu:
        assert gw["environment"]["OVERHEAD_PREPROCESSOR"] == "dali"
        for name in ("triton", "tfserving", "gateway"):
            devs = services[name]["deploy"]["resources"]["reservations"]["devices"]
            assert devs[0]["capabilities"] == ["gpu"]


def test_images_pinned_healthchecks_and_loopback_ports():
    cfg = compose_config(COMPOSE, GPU, profiles=("triton", "tfserving", "redis", "kafka"))
    for name, s in cfg["services"].items():
        image = s.get("image")
        assert image, f"{name}: no image"
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned by a tag"
        if s.get("restart", "no") != "no":         # long-running
            assert s.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        for p in s.get("ports", []):
            assert str(p).startswith("127.0.0.1:"), f"{name}: port {p} not on 127.0.0.1"
    # one-shot model builder gates the servers and the app
    for name in ("triton", "tfserving", "gateway", "worker"):
        dep = cfg["services"][name]["depends_on"]["models"]
        assert dep["condition"] == "service_completed_successfully"
    assert cfg["services"]["locust-master"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    gw_cmd = " ".join(cfg["services"]["gateway"]["command"])
    assert "--host 0.0.0.0" in gw_cmd


def test_services_py_agrees_with_compose(tmp_path):
    from deploy.services import check_compose

    assert check_compose(COMPOSE) == []
    # ... and the check does catch a disagreement
    doc = yaml.safe_load(COMPOSE.read_text())
    doc["services"]["gateway"]["ports"] = ["127.0.0.1:8080:8080"]
    doc["services"]["redis"]["image"] = "redis:7"
    del doc["services"]["worker"]["healthcheck"]
    doc["services"]["gateway"]["environment"]["OVERHEAD_NO_SUCH_OPTION"] = "1"
    doc["services"]["worker"]["environment"]["OVERHEAD_K"] = "2"     # a gateway-only option
    doc["services"]["tfserving"]["command"].remove("--enable_model_warmup=true")
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(doc))
    errs = "\n".join(check_compose(bad))
    assert "gateway: published container ports" in errs
    assert "redis: image" in errs
    assert "worker: long-running service without a healthcheck" in errs
    assert "gateway: ['OVERHEAD_NO_SUCH_OPTION'] name no option" in errs
    assert "worker: ['OVERHEAD_K'] name no option" in errs
    assert "tfserving: command" in errs and "not the generated server flags" in errs


def test_compose_environment_names_options_of_the_config_tree():
    from deploy.services import SERVERS, compose_env, options_env

    for server in SERVERS:
        env = {k for k in compose_env(server, "redis") if k.startswith("OVERHEAD_")}
        assert env <= options_env("gateway") and env <= options_env("worker"), env


def test_containers_wait_for_what_the_config_tree_reads(monkeypatch):
    from deploy.services import compose_env, wait_targets

    for k, v in compose_env("tfserving", "kafka").items():
        monkeypatch.setenv(k, v)
    assert wait_targets() == ["kafka://kafka:9092", "tcp://tfserving:8501"]   # REST by default
    monkeypatch.setenv("OVERHEAD_BACKEND", "triton")
    monkeypatch.setenv("OVERHEAD_TRITON_URL", "grpc://triton:8001")
    assert wait_targets()[1] == "http://triton:8000/v2/health/ready"


# -- the no-Docker launcher --------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(f[2]) == pgid and f[0] != "Z":
                out.append(int(d.name))
    return out


def _corpus_jpeg() -> bytes:
    from pipelines.corpus import build_corpus

    images = build_corpus(sizes=("0.1MP",))
    return Path(images[0].path).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["redis", "kafka"])
def test_local_launcher_triton(broker, tmp_path):
    from triton_server import require_triton

    require_triton()
    run_dir = tmp_path / "run"
    log = open(tmp_path / "launcher.out", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "deploy.local", "--server", "triton", "--broker",
                             broker, "--workers", "1", "--free-ports", "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if "READY " in Path(log.name).read_text():
                break
            time.sleep(0.2)
        out = Path(log.name).read_text()
        assert "READY " in out, f"launcher not ready (rc {proc.poll()}):\n{out}"
        stack = json.loads((run_dir / "stack.json").read_text())
        names = [s["name"] for s in stack["services"]]
        assert names == ["triton", broker, "gateway", "worker-0"]
        for s in stack["services"]:
            assert s["name"] in out and str(s["pid"]) in out      # the table
        url = stack["gateway_url"]
        req = urllib.request.Request(url + "/v1/infer", data=_corpus_jpeg(), method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
            body = json.loads(r.read())
        assert body["detections"] and "label" in body["detections"][0]
        if broker == "redis":      # a short real Locust run through the stack
            sweep = subprocess.run(
                [sys.executable, "-m", "loadtest.sweep", "--host", url, "--out",
                 str(tmp_path / "sweep"), "--users", "2", "--step-seconds", "4",
                 "--warmup-seconds", "1", "--sizes", "0.1MP", "--no-report"],
                cwd=ROOT, capture_output=True, text=True, timeout=90)
            assert sweep.returncode == 0, sweep.stdout + sweep.stderr
            import pandas as pd

            reqs = pd.read_parquet(tmp_path / "sweep" / "requests.parquet")
            assert len(reqs) >= 5 and (reqs["status"] == 200).all()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("launcher did not stop within 60 s of SIGTERM")
        log.close()
    assert rc == 0, Path(log.name).read_text()
    assert "stopped" in Path(log.name).read_text()
    time.sleep(0.2)
    for s in stack["services"]:
        assert not _alive(s["pid"]), f"{s['name']} (pid {s['pid']}) still running"
        assert _group_members(s["pgid"]) == [], f"{s['name']}: its process group is still alive"
    assert not _alive(proc.pid)
