"""The ONE description of Overhead's deployment topology: service names, ports, images, profiles,
environment. Used by the no-Docker launcher (``deploy/local.py``) and checked against
``deploy/docker-compose.yml`` (``check_compose``; ``tests/test_deploy.py`` fails on any
disagreement).

    python -m deploy.services                     # the table: service, profile, ports, image
    python -m deploy.services --check [FILE]     # compose file vs this module; rc 1 on mismatch
    python -m deploy.services wait [--timeout S] # (in containers) wait for OVERHEAD_BROKER and the
                                                 # inference server named by OVERHEAD_BACKEND
    python -m deploy.services build-models --out /models   # (in the models container)

Ports are the ports INSIDE the containers (and the default loopback ports of ``deploy.local``);
published ports bind 127.0.0.1 on the host only.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
GPU_COMPOSE_FILE = ROOT / "deploy" / "docker-compose.gpu.yml"

APP_IMAGE = "overhead:0.1.0"              # deploy/Dockerfile, target runtime
MODELS_IMAGE = "overhead-models:0.1.0"    # deploy/Dockerfile, target models (+ TensorFlow)

SERVERS = ("triton", "tfserving")          # compose profiles; deploy.local: triton | embedded
BROKERS = ("redis", "kafka")               # compose profiles; deploy.local: + memory
DEFAULT_PROFILES = ("triton", "redis")

MODELS = ("ssd_mobilenetv2", "mobilenetv2")
MODELS_MOUNT = "/models"                   # the shared models volume, in every container
MODELS_CACHE = f"{MODELS_MOUNT}/cache"     # OVERHEAD_MODELS_DIR
TRITON_REPO = f"{MODELS_MOUNT}/triton"     # deploy.triton.repository --flavour onnxruntime
# Written by the TF Serving generator (python -m deploy.tfserving.config --out TFSERVING_DIR):
# models.config, batching_parameters.txt, server_flags.txt, <model>/1/ with its warm-up requests.
TFSERVING_DIR = f"{MODELS_MOUNT}/tfserving"
# TF Serving's thread pools are sized for the CPUs its container gets (deploy/k8s: requests cpu "2")
TFSERVING_CPUS = 2
RESULTS_MOUNT = "/results"


@dataclass(frozen=True)
class Service:
    name: str
    image: str
    ports: dict = field(default_factory=dict)       # role -> port inside the container
    published: tuple = ()                            # roles published on 127.0.0.1 of the host
    profiles: tuple = ()
    env: tuple = ()                                  # environment variable NAMES it must set
    long_running: bool = True                        # False: one-shot (no healthcheck)
    local: str | None = None                         # what deploy.local runs for it


SERVICES: dict[str, Service] = {s.name: s for s in [
    Service("models", MODELS_IMAGE, long_running=False, env=("OVERHEAD_MODELS_DIR",),
            local="deploy.triton.repository (python flavour) into the run directory"),
    Service("triton", "nvcr.io/nvidia/tritonserver:24.08-py3",
            ports={"http": 8000, "grpc": 8001, "metrics": 8002}, profiles=("triton",),
            local="tritonserver from .venv-triton (deploy/triton/server.py)"),
    Service("tfserving", "tensorflow/serving:2.16.1",
            ports={"grpc": 8500, "rest": 8501}, profiles=("tfserving",)),
    Service("redis", "redis:7.2.5-alpine", ports={"redis": 6379}, profiles=("redis",),
            local="redis-server, AOF on (deploy/local_servers.py)"),
    Service("kafka", "apache/kafka:3.8.0", ports={"kafka": 9092, "controller": 9093},
            profiles=("kafka",), local="tansu, Kafka protocol (deploy/local_servers.py)"),
    Service("gateway", APP_IMAGE, ports={"http": 8000}, published=("http",),
            env=("OVERHEAD_HOST", "OVERHEAD_PORT", "OVERHEAD_BACKEND", "OVERHEAD_TRITON_URL",
                 "OVERHEAD_BROKER", "OVERHEAD_WORKERS", "OVERHEAD_MODELS_DIR",
                 "OVERHEAD_PREPROCESSOR"),
            local="python -m pipelines.gateway"),
    Service("worker", APP_IMAGE, env=("OVERHEAD_BROKER", "OVERHEAD_BACKEND", "OVERHEAD_TRITON_URL",
                                      "OVERHEAD_MODELS_DIR"),
            local="python -m pipelines.worker (N processes)"),
    Service("locust-master", APP_IMAGE, ports={"web": 8089, "master": 5557}, published=("web",)),
    Service("locust-worker", APP_IMAGE),
]}

# deploy.local: default loopback ports (each falls back to a free port when taken; --free-ports
# always picks free ones). Triton's are not 8000/8001 here because the gateway has 8000.
LOCAL_PORTS = {"gateway": 8000, "triton-http": 8010, "triton-grpc": 8011,
               "redis": 6379, "kafka": 9092}

# The gateway's in-container URLs for each profile (compose service names are the host names).
# claim_idle_ms: unacknowledged crops are redelivered within the gateway's 30 s result timeout
BROKER_URLS = {"redis": "redis://redis:6379/0?claim_idle_ms=10000", "kafka": "kafka://kafka:9092"}
SERVER_URLS = {"triton": "grpc://triton:8001", "tfserving": "http://tfserving:8501"}


def options_env(service: str) -> set[str]:
    """The ``OVERHEAD_*`` names the service's program reads: its settings class in
    ``overhead/config.py`` (the models builder: ``ModelsSettings`` and the model cache directory)."""
    from overhead import config

    cls = {"gateway": config.GatewaySettings, "worker": config.WorkerSettings,
           "locust-master": config.LocustSettings, "locust-worker": config.LocustSettings
           }.get(service)
    if service == "models":
        return ({config.WorkerSettings.env_name("models_dir")}
                | {config.ModelsSettings.env_name(n) for n in config.ModelsSettings.model_fields})
    return {cls.env_name(n) for n in cls.model_fields} if cls else set()


def port(service: str, role: str | None = None) -> int:
    ports = SERVICES[service].ports
    return ports[role] if role else next(iter(ports.values()))


def compose_env(server: str = "triton", broker: str = "redis") -> dict:
    """The environment that selects a server/broker pair for ``docker-compose``."""
    env = {"COMPOSE_PROFILES": f"{server},{broker}", "OVERHEAD_BACKEND": server,
           "OVERHEAD_BROKER": BROKER_URLS[broker]}
    if server == "triton":
        env["OVERHEAD_TRITON_URL"] = SERVER_URLS["triton"]
    else:
        env["OVERHEAD_TFSERVING_URL"] = SERVER_URLS["tfserving"]
    return env


def tfserving_settings():
    """The TF Serving settings of the compose and Kubernetes deployments (one source): batching
    threads and TensorFlow's intra-op pool = the CPUs, one inter-op thread (one socket), gRPC
    threads 4 x CPUs (TF Serving's own default formula, made explicit), model warm-up on."""
    from deploy.tfserving.config import TFServingSettings

    return TFServingSettings(num_batch_threads=TFSERVING_CPUS, grpc_max_threads=4 * TFSERVING_CPUS,
                             intra_op_parallelism=TFSERVING_CPUS, inter_op_parallelism=1,
                             enable_batching=True, enable_model_warmup=True)


def tfserving_command() -> list[str]:
    """``tensorflow_model_server``'s flags in compose and Kubernetes: the generator's
    ``server_flags`` (also written to ``TFSERVING_DIR/server_flags.txt`` by ``build-models``)."""
    from deploy.tfserving.config import server_flags

    return server_flags(tfserving_settings(), TFSERVING_DIR, port("tfserving", "grpc"),
                        port("tfserving", "rest"))


# -- compose cross-check ----------------------------------------------------------------------
def load_compose(path=COMPOSE_FILE) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def _container_port(spec) -> tuple[str | None, int]:
    """('127.0.0.1', 8000) from '127.0.0.1:8000:8000' (host ip, container port)."""
    if isinstance(spec, dict):
        return spec.get("host_ip"), int(spec["target"])
    parts = str(spec).split("/")[0].split(":")
    return (parts[0] if len(parts) >= 3 else None), int(parts[-1])   # 127.0.0.1:${VAR:-P}:P too


def check_compose(path=COMPOSE_FILE) -> list[str]:
    """Disagreements between ``SERVICES`` and the compose file (empty list = they agree)."""
    doc = load_compose(path)
    services = doc.get("services") or {}
    errs = []
    if set(services) != set(SERVICES):
        errs.append(f"services differ: compose-only {sorted(set(services) - set(SERVICES))}, "
                    f"services.py-only {sorted(set(SERVICES) - set(services))}")
    for name, s in SERVICES.items():
        c = services.get(name)
        if c is None:
            continue
        image = re.sub(r"^\$\{[A-Z0-9_]+:-(.+)\}$", r"\1", str(c.get("image")))   # ${VAR:-default}
        if image != s.image:
            errs.append(f"{name}: image {c.get('image')!r} != {s.image!r}")
        if tuple(c.get("profiles") or ()) != s.profiles:
            errs.append(f"{name}: profiles {c.get('profiles')} != {list(s.profiles)}")
        published = [_container_port(p) for p in c.get("ports") or []]
        want = [s.ports[r] for r in s.published]
        if sorted(p for _, p in published) != sorted(want):
            errs.append(f"{name}: published container ports {[p for _, p in published]} != {want}")
        for ip, p in published:
            if ip != "127.0.0.1":
                errs.append(f"{name}: port {p} is published on {ip or 'all interfaces'}, "
                            f"not 127.0.0.1")
        env = c.get("environment") or {}
        env_names = set(env) if isinstance(env, dict) else {e.split("=")[0] for e in env}
        missing = [e for e in s.env if e not in env_names]
        if missing:
            errs.append(f"{name}: environment lacks {missing}")
        unknown = sorted(e for e in env_names | set(s.env)
                         if e.startswith("OVERHEAD_") and e not in options_env(name))
        if unknown:
            errs.append(f"{name}: {unknown} name no option of {name} in overhead/config.py")
        if s.long_running and not c.get("healthcheck"):
            errs.append(f"{name}: long-running service without a healthcheck")
        if not s.long_running and c.get("restart") not in (None, "no"):
            errs.append(f"{name}: one-shot service must not restart")
        # every container port the stack uses is mentioned somewhere in the service definition
        text = repr(c)
        for role, p in s.ports.items():
            if str(p) not in text:
                errs.append(f"{name}: port {p} ({role}) appears nowhere in its compose definition")
    cmd = " ".join(map(str, (services.get("triton") or {}).get("command") or []))
    if TRITON_REPO not in cmd:
        errs.append(f"triton: command does not read {TRITON_REPO}")
    tfs = [str(a) for a in (services.get("tfserving") or {}).get("command") or []]
    if tfs != tfserving_command():
        errs.append(f"tfserving: command {tfs} is not the generated server flags "
                    f"{tfserving_command()} (deploy.services.tfserving_settings)")
    gw = services.get("gateway", {}).get("environment") or {}
    if isinstance(gw, dict):
        if str(gw.get("OVERHEAD_PORT")) != str(port("gateway")):
            errs.append(f"gateway: OVERHEAD_PORT {gw.get('OVERHEAD_PORT')} != {port('gateway')}")
        if gw.get("OVERHEAD_HOST") != "0.0.0.0":
            errs.append("gateway: OVERHEAD_HOST must be 0.0.0.0 inside the container")
        for key, table in (("OVERHEAD_BROKER", BROKER_URLS), ("OVERHEAD_TRITON_URL", SERVER_URLS)):
            default = DEFAULT_PROFILES[1] if key == "OVERHEAD_BROKER" else "triton"
            if table[default] not in str(gw.get(key)):
                errs.append(f"gateway: {key} default is not {table[default]} ({gw.get(key)!r})")
    return errs


# -- in-container helpers ----------------------------------------------------------------------
def _probe(url: str, timeout_s: float = 1.0) -> bool:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    if parts.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False
    default = {"redis": 6379, "kafka": 9092, "grpc": 8001}.get(parts.scheme, 80)
    try:
        with socket.create_connection((parts.hostname, parts.port or default), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_targets(settings=None) -> list[str]:
    """What a gateway/worker container waits for: its broker and its inference server (compose
    1.29 cannot make ``depends_on`` conditional on a profile, so the containers wait). Read from
    the ``OVERHEAD_*`` environment by the config tree unless ``settings`` are given."""
    from overhead.config import WorkerSettings

    s = settings or WorkerSettings()
    out = []
    if s.broker.startswith(("redis://", "kafka://")):
        out.append(s.broker.split("?")[0])
    if s.backend == "triton":
        u = urlsplit(s.triton_url)
        out.append(f"http://{u.hostname}:{port('triton', 'http')}/v2/health/ready")
    elif s.backend == "tfserving":
        u = urlsplit(s.tfserving_url)
        out.append(f"tcp://{u.hostname}:{u.port or port('tfserving', 'rest')}")
    return out


def wait(targets: list[str], timeout_s: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout_s
    pending = list(targets)
    while pending:
        pending = [t for t in pending if not _probe(t)]
        if not pending:
            break
        if time.monotonic() > deadline:
            print(f"not reachable after {timeout_s:g} s: {pending}", file=sys.stderr)
            return False
        time.sleep(1.0)
    return True


def build_models(out: str = MODELS_MOUNT) -> int:
    """The one-shot ``models`` service: ONNX + SavedModel, the Triton repository (onnxruntime
    flavour) and, when the TF Serving generator is installed, its config files."""
    py = sys.executable
    cache = f"{out}/cache"
    from overhead.config import ModelsSettings

    ms = ModelsSettings()   # OVERHEAD_TRITON_FLAVOUR (python: the stand-in server), _INSTANCE_KIND
    flavour, kind = ms.triton_flavour, ms.triton_instance_kind
    steps = [[py, "-m", "pipelines.models", "build", *MODELS, "--savedmodel", "--models-dir", cache],
             [py, "-m", "deploy.triton.repository", "--out", f"{out}/triton", "--models",
              ",".join(MODELS), "--flavour", flavour, "--instance-kind", kind, "--models-dir", cache]]
    import importlib.util

    if importlib.util.find_spec("deploy.tfserving.config") is not None:
        # with the deployment's settings: server_flags.txt = the compose command
        from deploy.tfserving.config import settings_argv

        steps.append([py, "-m", "deploy.tfserving.config", "--out", f"{out}/tfserving", "--models",
                      ",".join(MODELS), "--models-dir", cache, "--base-path", f"{out}/tfserving",
                      *settings_argv(tfserving_settings())])
    for argv in steps:
        print("+", " ".join(argv), flush=True)
        rc = subprocess.call(argv)
        if rc:
            return rc
    return 0


def table() -> str:
    rows = [("service", "profile", "ports (in container)", "published", "image")]
    for s in SERVICES.values():
        rows.append((s.name, ",".join(s.profiles) or "-",
                     " ".join(f"{r}:{p}" for r, p in s.ports.items()) or "-",
                     " ".join(f"127.0.0.1:{s.ports[r]}" for r in s.published) or "-", s.image))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m deploy.services", description=__doc__.split("\n")[0])
    ap.add_argument("--check", nargs="?", const=str(COMPOSE_FILE), default=None, metavar="FILE",
                    help="compare the compose file with this module")
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("wait", help="wait for the broker and inference server from the env")
    w.add_argument("--timeout", type=float, default=300.0)
    w.add_argument("targets", nargs="*", help="URLs (default: from OVERHEAD_* env)")
    b = sub.add_parser("build-models", help="models + Triton repository + TF Serving config")
    b.add_argument("--out", default=MODELS_MOUNT)
    args = ap.parse_args(argv)
    if args.check:
        errs = check_compose(args.check)
        for e in errs:
            print(e)
        print("compose file agrees with deploy/services.py" if not errs else
              f"{len(errs)} disagreement(s)")
        return 1 if errs else 0
    if args.cmd == "wait":
        targets = args.targets or wait_targets()
        print(f"waiting for {targets}", flush=True)
        return 0 if wait(targets, args.timeout) else 1
    if args.cmd == "build-models":
        return build_models(args.out)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
