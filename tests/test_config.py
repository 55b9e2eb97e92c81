"""The one configuration tree (``overhead/config.py``): each option is declared once, and that one
declaration reaches the gateway's and the worker's ``--help``, the ``OVERHEAD_*`` environment,
``GET /v1/config``, the sweep and the Locust file. Precedence: command line > environment > default.
"""
import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from overhead.config import (GatewaySettings, LoadSettings, LocustSettings, WorkerSettings,
                             worker_argv)

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(autouse=True)
def _no_overhead_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("OVERHEAD_"):
            monkeypatch.delenv(k)


def _squash(text: str) -> str:
    return " ".join(text.split())


# -- one definition, seen everywhere ------------------------------------------------------------
# The only edit: one default in overhead/config.py (a copy of the package first on PYTHONPATH).
PATCHES = {"intra_op_threads: int = Field(1,": "intra_op_threads: int = Field(3,",
           "warmup_seconds: float = Field(5.0,": "warmup_seconds: float = Field(7.5,"}

CONFIG_PROBE = r"""
import json, os, sys
from fastapi.testclient import TestClient
import overhead.config
from overhead.config import WorkerSettings
from pipelines.gateway import create_app, parse_settings
from loadtest.sweep import parse_args, worker_options

def served(argv):   # the real app's GET /v1/config (no lifespan: the models are not loaded)
    r = TestClient(create_app(parse_settings(argv))).get("/v1/config")
    assert r.status_code == 200, r.text
    return r.json()["settings"]["intra_op_threads"]

out = {"config_file": overhead.config.__file__, "default": served([]),
       "worker": WorkerSettings().intra_op_threads, "worker_options": worker_options([]),
       "sweep_warmup": parse_args(["--out", "x"]).warmup_seconds}
os.environ["OVERHEAD_INTRA_OP_THREADS"] = "5"
out.update(env=served([]), cli=served(["--intra-op-threads", "7"]),
           worker_env=WorkerSettings().intra_op_threads)
print(json.dumps(out))
"""


LOCUST_PARSER = r"""
import sys
from locust import argument_parser, events
from locust.util.load_locustfile import load_locustfile
load_locustfile(sys.argv[1])
p = argument_parser.get_parser()
events.init_command_line_parser.fire(parser=p)
print(p.format_help())
print(p.parse_args(["-f", sys.argv[1]]).overhead_warmup_seconds)
"""


@pytest.fixture(scope="module")
def patched_tree(tmp_path_factory):
    """A copy of the ``overhead`` package with ONE changed default per patch, and the environment
    that puts it in front of the real one."""
    src = (REPO / "overhead" / "config.py").read_text()
    root = tmp_path_factory.mktemp("patched")
    shutil.copytree(REPO / "overhead", root / "overhead",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for old, new in PATCHES.items():
        assert src.count(old) == 1, f"{old!r} must be declared exactly once"
        src = src.replace(old, new)
    (root / "overhead" / "config.py").write_text(src)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(REPO)])
    return root, env


def _run(env, *argv, timeout=120) -> str:
    cwd = env["PYTHONPATH"].split(os.pathsep)[0]   # python -m / -c put the cwd first on sys.path
    r = subprocess.run([PY, *argv], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("module", ["pipelines.gateway", "pipelines.worker"])
def test_one_changed_default_shows_in_help(patched_tree, module):
    _root, env = patched_tree
    assert "(default: 1; env OVERHEAD_INTRA_OP_THREADS)" in _squash(_run(
        {**os.environ, "PYTHONPATH": str(REPO)}, "-m", module, "--help"))
    assert "(default: 3; env OVERHEAD_INTRA_OP_THREADS)" in _squash(_run(env, "-m", module, "--help"))


def test_one_changed_default_reaches_env_handling_v1_config_and_the_sweep(patched_tree):
    root, env = patched_tree
    got = json.loads(_run(env, "-c", CONFIG_PROBE).strip().splitlines()[-1])
    assert Path(got["config_file"]).is_relative_to(root)
    assert got["default"] == 3 and got["worker"] == 3                 # the patched default
    assert got["env"] == 5 and got["worker_env"] == 5                 # OVERHEAD_* beats it
    assert got["cli"] == 7                                            # the command line beats both
    opts = got["worker_options"]                                      # the sweep's workers get it
    assert opts[opts.index("--intra-op-threads") + 1] == "3"
    assert got["sweep_warmup"] == 7.5


def test_one_changed_load_default_shows_in_the_sweep_and_locust_help(patched_tree):
    _root, env = patched_tree
    assert "(default: 7.5; env OVERHEAD_WARMUP_SECONDS)" in _squash(
        _run(env, "-m", "loadtest.sweep", "--help"))
    # Locust's own --help leaves out a locustfile's options: its parser, as ``locust`` builds it
    got = _run(env, "-c", LOCUST_PARSER, str(REPO / "loadtest" / "locustfile.py")).splitlines()
    assert "(default: 7.5; env OVERHEAD_WARMUP_SECONDS)" in _squash("\n".join(got[:-1]))
    assert got[-1] == "7.5"


# -- precedence and the generated flags --------------------------------------------------------
def test_cli_beats_env_beats_default(monkeypatch):
    assert GatewaySettings.from_args([]).k == 4
    monkeypatch.setenv("OVERHEAD_K", "2")
    monkeypatch.setenv("OVERHEAD_BROKER", "memory://?maxsize=64")
    s = GatewaySettings.from_args([])
    assert s.k == 2 and s.broker == "memory://?maxsize=64"
    s = GatewaySettings.from_args(["--k", "3", "--broker", "memory://"])
    assert s.k == 3 and s.broker == "memory://"
    monkeypatch.setenv("OVERHEAD_SPANS", "0")
    assert GatewaySettings.from_args([]).spans is False
    assert GatewaySettings.from_args(["--spans"]).spans is True


def test_the_existing_command_lines_still_parse():
    s = GatewaySettings.from_args(["--no-spans", "--access-log", "--max-upload-mb", "8",
                                   "--reduced", "off", "--log-level", "warning", "--worker-batch",
                                   "4", "--models-dir", "/m"])
    assert (s.spans, s.access_log, s.reduced, s.log_level) == (False, True, "off", "warning")
    assert s.max_upload_bytes == 8 << 20 and s.classifier_batch == 4 and s.models_dir == "/m"
    with pytest.raises(SystemExit):
        GatewaySettings.from_args(["--reduced", "sometimes"])     # choices from the Literal
    w = WorkerSettings.from_args(["--broker", "redis://h:1", "--batch", "8", "--name", "w1",
                                  "--backend", "triton", "--triton-url", "grpc://t:8001"])
    assert (w.classifier_batch, w.name, w.group) == (8, "w1", "classifiers")
    assert w.backend_options == {"url": "grpc://t:8001"}


def test_worker_settings_are_the_gateways_own_fields():
    shared = set(WorkerSettings.model_fields) & set(GatewaySettings.model_fields)
    assert shared >= {"broker", "classifier", "backend", "triton_url", "tfserving_url",
                      "preprocessor", "intra_op_threads", "max_batch", "worker_batch"}
    for name in shared:   # one declaration: same type, default and help
        w, g = WorkerSettings.model_fields[name], GatewaySettings.model_fields[name]
        assert (w.annotation, w.default, w.description) == (g.annotation, g.default, g.description)
    gw = GatewaySettings(classifier="c", backend="tfserving", tfserving_url="grpc://t:8500",
                         max_batch=4, max_delay_ms=2.5, intra_op_threads=2)
    w = WorkerSettings.from_args(["--broker", "redis://h:1", *worker_argv(gw)])
    assert (w.classifier, w.classifier_batch, w.max_delay_ms, w.intra_op_threads) == ("c", 4, 2.5, 2)
    assert w.backend_options == gw.backend_options == {"url": "grpc://t:8500"}
    assert GatewaySettings().backend_options == {}                 # embedded: no server


def test_backend_urls_keep_their_defaults():
    s = GatewaySettings()
    assert (s.triton_url, s.tfserving_url) == ("http://127.0.0.1:8000", "http://127.0.0.1:8501")
    assert GatewaySettings(backend="triton").backend_options == {"url": "http://127.0.0.1:8000"}
    import pipelines.inference.tfserving as tfs
    import pipelines.inference.triton as tri
    for mod in (tri, tfs):                                         # no module-global URL left
        assert not hasattr(mod, "set_default_url") and not hasattr(mod, "DEFAULT_URL")


def test_sweep_and_locust_share_the_load_defaults(monkeypatch, tmp_path):
    import argparse

    from loadtest.schedule import ARRIVALS
    from loadtest.sweep import parse_args

    assert set(typing.get_args(typing.get_args(LoadSettings.model_fields["arrivals"].annotation)[0])) \
        == set(ARRIVALS)
    sweep = parse_args(["--out", str(tmp_path)])
    p = argparse.ArgumentParser()
    LocustSettings.add_arguments(p, prefix="overhead-", defaults=LocustSettings())
    locust = p.parse_args([])
    for name in LoadSettings.model_fields:
        assert getattr(sweep, name) == getattr(locust, f"overhead_{name}") \
            == LoadSettings.model_fields[name].default, name
    assert sweep.warmup_seconds == 5.0
    monkeypatch.setenv("OVERHEAD_WARMUP_SECONDS", "2")
    assert parse_args(["--out", str(tmp_path)]).warmup_seconds == 2.0
    assert parse_args(["--out", str(tmp_path), "--warmup-seconds", "1"]).warmup_seconds == 1.0
    p = argparse.ArgumentParser()
    LocustSettings.add_arguments(p, prefix="overhead-", defaults=LocustSettings())
    assert p.parse_args([]).overhead_warmup_seconds == 2.0
    unknown = parse_args(["--out", str(tmp_path), "--k", "2"]).gateway_args
    assert unknown == ["--k", "2"]                                  # still passed to the gateway


def test_empty_env_is_unset_and_a_misspelt_option_is_an_error(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("OVERHEAD_ARRIVALS", "")
    monkeypatch.setenv("OVERHEAD_K", "")
    assert LocustSettings().arrivals is None and GatewaySettings().k == 4
    monkeypatch.setenv("OVERHEAD_K", "many")
    with pytest.raises(ValidationError):
        GatewaySettings()
    with pytest.raises(ValidationError):
        GatewaySettings(kk=2)


def test_locustfile_help_lists_every_overhead_option():
    """Locust prints ``--help`` before importing a locustfile (locustio/locust#2917), so the
    locustfile prints Locust's help with its options when run as a script."""
    import subprocess
    import sys
    from pathlib import Path

    from overhead.config import LocustSettings

    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(repo / "loadtest" / "locustfile.py"), "--help"],
                         capture_output=True, text=True, timeout=60, cwd=repo)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in LocustSettings.model_fields:
        assert f"--overhead-{name.replace('_', '-')}" in out.stdout, name
    assert "--users" in out.stdout        # Locust's own options too


def test_pools_are_sized_from_the_cores_and_a_worker_batches_one_images_crops():
    cores = len(os.sched_getaffinity(0))
    s = GatewaySettings()
    assert (s.workers, s.threads) == (max(1, min(cores - 1, 8)), min(2 * cores, 16))
    assert s.worker_batch is None and s.classifier_batch == s.k == 4    # the crops of one image
    assert GatewaySettings(k=6).classifier_batch == 6
    assert GatewaySettings(k=2, max_batch=8).classifier_batch == 8
    assert GatewaySettings(k=6, worker_batch=1).classifier_batch == 1
    assert WorkerSettings().classifier_batch == 4     # a worker process alone: the default k
    # a worker process started for a gateway gets the gateway's k as its batch
    w = WorkerSettings.from_args(["--broker", "redis://h:1", *worker_argv(GatewaySettings(k=6))])
    assert w.classifier_batch == 6
