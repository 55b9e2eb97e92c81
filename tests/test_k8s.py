"""Kubernetes manifests (deploy/k8s), offline: every overlay rendered by the real ``kubectl
kustomize``, the core kinds validated by kubernetes-validate (strict), the KEDA / Strimzi custom
resources by their vendored CRD schemas (deploy/k8s/crds), and the agreement of what was rendered
with deploy/services.py, the compose file and overhead/config.py. Each check is also shown to FAIL
on a deliberately broken manifest. Nothing is applied to a cluster.

A missing ``kubectl`` is a FAILURE (it renders the overlays; scripts/ensure_kubectl.sh checks for
>= 1.27, which ``make test`` runs).
"""
from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from deploy import k8s_agree, k8s_check, k8s_render
from deploy.services import BROKERS, SERVERS, SERVICES, options_env

sys.path.insert(0, os.path.dirname(__file__))
from servers import redis_server  # noqa: F401  (fixture: a REAL redis-server)

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
COMBOS = [(s, b) for s in SERVERS for b in BROKERS]


@pytest.fixture(scope="module", autouse=True)
def kubectl():
    if not shutil.which("kubectl"):
        pytest.fail("kubectl is not installed: it renders the Kustomize overlays (kubectl kustomize)")


def render_combo(tmp_path, server, broker, gpu=False) -> list[dict]:
    """Render base + components through a throw-away overlay (relative paths: kustomize refuses
    absolute ones)."""
    d = tmp_path / f"{server}-{broker}-{gpu}"
    d.mkdir()
    rel = os.path.relpath(K8S, d)
    comps = [f"{rel}/components/{c}" for c in (server, broker, *(("gpu",) if gpu else ()))]
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "namespace": k8s_render.NAMESPACE, "resources": [f"{rel}/base"], "components": comps}))
    return k8s_check.kustomize(d)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """(server, broker, gpu) -> rendered objects, for every combination (4 x cpu/gpu)."""
    tmp = tmp_path_factory.mktemp("k8s")
    return {(s, b, g): render_combo(tmp, s, b, g) for s, b in COMBOS for g in (False, True)}


def find(docs, kind, name) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


# -- the shipped overlays ----------------------------------------------------------------------
def test_generated_files_are_current():
    assert k8s_render.stale(k8s_render.render()) == [], "run python -m deploy.k8s_render"


def test_every_overlay_renders_validates_and_agrees():
    overlays = k8s_check.overlays()
    combos = {k8s_check.overlay_combo(p)[:2] for p in overlays}
    assert combos == set(COMBOS), f"an overlay per server x broker: {sorted(combos)}"
    assert any(k8s_check.overlay_combo(p)[2] for p in overlays), "no gpu overlay"
    for p in overlays:
        assert k8s_check.check_overlay(p) == [], p.name


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("server,broker", COMBOS)
def test_combination_validates_and_agrees(rendered, server, broker, gpu):
    docs = rendered[(server, broker, gpu)]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Job", "PersistentVolumeClaim", "ScaledObject"} <= kinds
    assert ("StatefulSet" in kinds) == (broker == "redis")
    assert {"Kafka", "KafkaNodePool"} <= kinds if broker == "kafka" else "Kafka" not in kinds
    errors = [e for d in docs for e in k8s_check.validate(d)]
    assert errors == []
    assert k8s_agree.check_rendered(docs, server, broker, gpu) == []
    srv = find(docs, "Deployment", server)["spec"]["template"]["spec"]["containers"][0]
    assert ("nvidia.com/gpu" in srv["resources"]["limits"]) == gpu


def test_gpu_images_agree_with_the_compose_gpu_file():
    """The gpu component's images are the compose GPU overlay's (``${VAR:-default}`` resolved to
    its default)."""
    import re

    from deploy.services import GPU_COMPOSE_FILE, load_compose

    compose = load_compose(GPU_COMPOSE_FILE)["services"]
    images = {n: re.sub(r"\$\{[^:}]+:-([^}]+)\}", r"\1", s["image"])
              for n, s in compose.items() if s.get("image")}
    assert images == k8s_agree.GPU_IMAGES


def test_autoscaler_threshold_is_derived_from_per_crop_time(rendered):
    """lag per worker = target backlog / per-crop time; KEDA scales to ceil(lag / threshold)."""
    assert k8s_render.lag_threshold(4.9, 0.5) == 103
    assert k8s_render.lag_threshold(10.0, 0.5) == 50
    for broker, key in (("redis", "lagCount"), ("kafka", "lagThreshold")):
        so = find(rendered[("triton", broker, False)], "ScaledObject", "worker")
        assert so["spec"]["triggers"][0]["metadata"][key] == str(k8s_render.lag_threshold())
    text = k8s_render.scaled_object("redis", per_crop_ms=10.0, target_backlog_s=1.0)
    assert 'lagCount: "100"' in text


def test_sweep_job_validates_and_matches_the_gateway(rendered):
    from loadtest.sweep import parse_args

    docs = k8s_check.kustomize(K8S / "sweep")
    assert [e for d in docs for e in k8s_check.validate(d)] == []
    (job,) = docs
    assert k8s_agree.check_security("sweep", job) == []
    c = job["spec"]["template"]["spec"]["containers"][0]
    args = parse_args(c["args"])           # the real sweep CLI accepts the Job's arguments
    gw = find(rendered[("triton", "redis", False)], "Deployment", "gateway")
    env = {e["name"]: e.get("value") for e in gw["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert args.host == f"http://gateway:{SERVICES['gateway'].ports['http']}"
    assert env["OVERHEAD_SPANS_DIR"] == f"{args.out}/spans", "the sweep would find no spans"
    assert c["image"] == SERVICES["gateway"].image


def test_results_pod_validates_and_mounts_the_results_volume():
    (pod,) = k8s_check.kustomize(K8S / "fetch")
    assert k8s_check.validate(pod) == []
    assert k8s_agree.check_security("results", {"spec": {"template": pod}}) == []
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
    assert claims == {"results"} and pod["metadata"]["namespace"] == k8s_render.NAMESPACE


def test_env_names_are_config_options(rendered):
    """Every OVERHEAD_* the manifests set is an option of overhead/config.py for that program."""
    for docs in rendered.values():
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        for key in cm["data"]:
            assert key in options_env("gateway") & options_env("worker"), key


# -- each check fails on a broken manifest ---------------------------------------------------
def broken(docs, kind, name, edit) -> list[dict]:
    out = copy.deepcopy(docs)
    edit(find(out, kind, name))
    return out


def _container(d):
    return d["spec"]["template"]["spec"]["containers"][0]


SCHEMA_BREAKS = {
    "deployment replicas as a string": ("Deployment", "gateway",
                                        lambda d: d["spec"].__setitem__("replicas", "two")),
    "deployment typo'd container key": ("Deployment", "worker",
                                        lambda d: _container(d).__setitem__("imagePullPolcy", "Always")),
    "statefulset unknown field": ("StatefulSet", "redis",
                                  lambda d: d["spec"].__setitem__("replica", 1)),
    "scaledobject typo'd trigger key": ("ScaledObject", "worker",
                                        lambda d: d["spec"]["triggers"][0].__setitem__(
                                            "metdata", d["spec"]["triggers"][0].pop("metadata"))),
    "scaledobject typo'd trigger metadata": ("ScaledObject", "worker",
                                             lambda d: d["spec"]["triggers"][0]["metadata"]
                                             .__setitem__("lagCont", "5")),
    "scaledobject maxReplicaCount as a string": ("ScaledObject", "worker",
                                                 lambda d: d["spec"].__setitem__("maxReplicaCount", "8")),
}
KAFKA_BREAKS = {
    "kafka listener without tls": ("Kafka", "kafka",
                                   lambda d: d["spec"]["kafka"]["listeners"][0].pop("tls")),
    "kafka unknown spec field": ("Kafka", "kafka",
                                 lambda d: d["spec"]["kafka"].__setitem__("listener", [])),
    "nodepool unknown role": ("KafkaNodePool", "dual-role",
                              lambda d: d["spec"].__setitem__("roles", ["controler"])),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_BREAKS) + sorted(KAFKA_BREAKS))
def test_schema_validation_rejects_a_broken_field(rendered, case):
    kind, name, edit = SCHEMA_BREAKS.get(case) or KAFKA_BREAKS[case]
    docs = rendered[("triton", "kafka" if case in KAFKA_BREAKS else "redis", False)]
    (doc,) = [d for d in broken(docs, kind, name, edit) if d["kind"] == kind
              and d["metadata"]["name"] == name]
    assert k8s_check.validate(doc), f"{case}: accepted"
    assert k8s_check.validate(find(docs, kind, name)) == []     # the unbroken one passes


AGREEMENT_BREAKS = {
    "service port": ("Service", "triton",
                     lambda d: d["spec"]["ports"][1].__setitem__("port", 9001), "ports"),
    "unknown OVERHEAD_ option": ("Deployment", "gateway",
                                 lambda d: _container(d)["env"].append({"name": "OVERHEAD_WORKRES",
                                                                        "value": "0"}),
                                 "no option"),
    "image": ("Deployment", "worker",
              lambda d: _container(d).__setitem__("image", "overhead:latest"), "image"),
    "root user": ("Deployment", "gateway",
                  lambda d: d["spec"]["template"]["spec"]["securityContext"].__setitem__(
                      "runAsUser", 0), "runAsUser"),
    "writable root fs": ("Deployment", "triton",
                         lambda d: _container(d)["securityContext"].__setitem__(
                             "readOnlyRootFilesystem", False), "writable"),
    "command differs from compose": ("Job", "models",
                                     lambda d: _container(d).__setitem__(
                                         "command", ["python", "-m", "deploy.services"]),
                                     "compose runs"),
    "public service": ("Service", "gateway",
                       lambda d: d["spec"].__setitem__("type", "LoadBalancer"), "public"),
    "stream name": ("ScaledObject", "worker",
                    lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("stream", "crops"),
                    "stream"),
}


@pytest.mark.parametrize("case", sorted(AGREEMENT_BREAKS))
def test_agreement_check_fails_when_k8s_and_services_disagree(rendered, case):
    kind, name, edit, words = AGREEMENT_BREAKS[case]
    docs = rendered[("triton", "redis", False)]
    errs = k8s_agree.check_rendered(broken(docs, kind, name, edit), "triton", "redis")
    assert any(words in e for e in errs), f"{case}: {errs}"


def test_agreement_check_fails_on_a_kafka_topic_with_too_few_partitions(rendered):
    docs = rendered[("triton", "kafka", False)]
    errs = k8s_agree.check_rendered(
        broken(docs, "Kafka", "kafka",
               lambda d: d["spec"]["kafka"]["config"].__setitem__("num.partitions", 2)),
        "triton", "kafka")
    assert any("partitions" in e for e in errs), errs


def test_stale_generated_file_is_reported(tmp_path):
    files = k8s_render.render()
    for p, text in files.items():
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text(text)
    assert k8s_render.stale(files, tmp_path) == []
    env = tmp_path / "components" / "kafka" / "broker.env"
    env.write_text(env.read_text().replace("kafka-kafka-bootstrap", "kafka"))
    assert k8s_render.stale(files, tmp_path) == ["components/kafka/broker.env"]


# -- the metric KEDA reads, on a REAL redis-server with the REAL broker ---------------------------
def test_redis_lag_metric_names_the_brokers_stream_and_survives_delete_on_ack(redis_server):  # noqa: F811
    """KEDA's redis-streams lagCount reads XINFO GROUPS ``lag`` of the ScaledObject's stream and
    group. With the broker's own names (default prefix, the worker's group) and its
    delete-on-ack, that lag is defined and counts exactly the crops not yet delivered."""
    from brokers.redis_streams import RedisStreamsBroker
    from overhead.contract.topics import CROPS

    stream, group = k8s_render.crops_consumer("redis")
    broker = RedisStreamsBroker.from_url(redis_server.url)
    try:
        broker.consume(CROPS, group, "w0", max_messages=1, timeout_s=0.01)   # the group exists
        for i in range(10):
            broker.publish(CROPS, b"crop %d" % i)
        got = broker.consume(CROPS, group, "w1", max_messages=4, timeout_s=1.0)
        assert len(got) == 4
        broker.ack(CROPS, group, got[:3])
        (info,) = [g for g in broker.client.xinfo_groups(stream) if g["name"].decode() == group]
        assert info["lag"] == 6 and info["pending"] == 1
        assert broker.client.xlen(stream) == 7         # acked entries were deleted
    finally:
        broker.client.delete(stream)
        broker.close()
