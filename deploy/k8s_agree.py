"""Does a rendered overlay of ``deploy/k8s/`` agree with ``deploy/services.py`` (names, ports,
images, ``OVERHEAD_*`` settings), the compose file (commands), ``overhead/config.py`` (option
names) and the Dockerfile (the ``app`` uid)? ``check_rendered`` lists every disagreement; an empty
list means they agree. Used by ``deploy/k8s_check.py`` and ``tests/test_k8s.py``.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from deploy import k8s_render as kr
from deploy.services import (
    APP_IMAGE,
    MODELS_CACHE,
    MODELS_IMAGE,
    MODELS_MOUNT,
    RESULTS_MOUNT,
    ROOT,
    SERVER_URLS,
    SERVICES,
    load_compose,
    options_env,
    port,
)

WORKLOADS = ("Deployment", "StatefulSet", "Job")
GPU_IMAGES = {"tfserving": "tensorflow/serving:2.16.1-gpu", "gateway": "overhead-gpu:0.1.0"}
PROBED = {"gateway", "worker", "triton", "tfserving", "redis", "locust-master", "locust-worker"}


def app_uid() -> int:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    return int(re.search(r"useradd [^\n]*--uid (\d+)", text).group(1))


def _by_kind(docs, kind) -> dict:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def _pod(doc) -> dict:
    return doc["spec"]["template"]["spec"]


def _env_names(container, configmaps) -> dict:
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    for src in container.get("envFrom") or []:
        cm = configmaps.get((src.get("configMapRef") or {}).get("name"))
        if cm is None:
            return {**env, "<missing ConfigMap>": src}
        env = {**cm.get("data", {}), **env}
    return env


def check_security(name, doc) -> list[str]:
    pod, errs = _pod(doc), []
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
        errs.append(f"{name}: pod securityContext needs runAsNonRoot and a non-zero runAsUser")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        errs.append(f"{name}: pod seccompProfile is not RuntimeDefault")
    images = {c["image"] for c in pod["containers"]}
    if images & {APP_IMAGE, MODELS_IMAGE, GPU_IMAGES["gateway"]} and psc.get("runAsUser") != app_uid():
        errs.append(f"{name}: runs as uid {psc.get('runAsUser')}, not the image's app user "
                    f"{app_uid()} (deploy/Dockerfile)")
    for c in pod["containers"] + (pod.get("initContainers") or []):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            errs.append(f"{name}/{c['name']}: allowPrivilegeEscalation is not false")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            errs.append(f"{name}/{c['name']}: capabilities do not drop ALL")
        if sc.get("readOnlyRootFilesystem") is not True:
            errs.append(f"{name}/{c['name']}: root filesystem is writable")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part) or {}):
                errs.append(f"{name}/{c['name']}: resources.{part} lacks cpu or memory")
    return errs


def check_command(name, container) -> list[str]:
    """The container runs what the compose service runs (the models Job: plus a marker), with
    compose's variables at their defaults."""
    compose = (load_compose().get("services") or {}).get(name) or {}
    # compose interpolation: ${VAR:-default} runs as its default unless the user sets VAR
    want = [re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", str(a)).replace("$$", "$")
            for a in compose.get("command") or []]
    got = (container.get("command") or []) + (container.get("args") or [])
    if name == "models":
        ok = " ".join(want) in " ".join(got)
    else:
        ok = got == want
    return [] if ok or not want else [f"{name}: runs {got}, compose runs {want}"]


def check_workload(name, doc, configmaps, server, gpu) -> list[str]:
    s = SERVICES.get(name)
    if s is None:
        return [f"{doc['kind']} {name}: not a service of deploy/services.py"]
    c = _pod(doc)["containers"][0]
    errs = check_security(name, doc) + check_command(name, c)
    want_image = GPU_IMAGES.get(name, s.image) if gpu else s.image
    if c["image"] != want_image:
        errs.append(f"{name}: image {c['image']!r} != {want_image!r}")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    if ports != s.ports:
        errs.append(f"{name}: container ports {ports} != services.py {s.ports}")
    env = _env_names(c, configmaps)
    unknown = sorted(e for e in env if e.startswith("OVERHEAD_") and e not in options_env(name))
    if unknown:
        errs.append(f"{name}: {unknown} name no option of {name} in overhead/config.py")
    need = {e for e in s.env if not e.endswith("_URL")}
    if name in ("gateway", "worker"):
        need.add(f"OVERHEAD_{server.upper()}_URL")
    if need - set(env):
        errs.append(f"{name}: environment lacks {sorted(need - set(env))}")
    if name in PROBED and not c.get("readinessProbe"):
        errs.append(f"{name}: no readinessProbe")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
    if name in ("gateway", "worker", "triton", "tfserving", "models") and MODELS_MOUNT not in mounts:
        errs.append(f"{name}: the models volume is not mounted at {MODELS_MOUNT}")
    if name == "gateway" and RESULTS_MOUNT not in mounts:
        errs.append(f"gateway: the results volume is not mounted at {RESULTS_MOUNT}")
    return errs


def check_services(docs, server, broker) -> list[str]:
    errs, services = [], _by_kind(docs, "Service")
    want = {"gateway", "locust-master", server} | ({"redis"} if broker == "redis" else set())
    if set(services) != want:
        errs.append(f"Services {sorted(services)} != {sorted(want)}")
    for name, svc in services.items():
        ports = {p.get("name"): p["port"] for p in svc["spec"].get("ports") or []}
        if name in SERVICES and ports != SERVICES[name].ports:
            errs.append(f"Service {name}: ports {ports} != services.py {SERVICES[name].ports}")
        if svc["spec"].get("type", "ClusterIP") != "ClusterIP":
            errs.append(f"Service {name}: type {svc['spec']['type']} (no public Service by default)")
    return errs


def check_config(cm, server, broker) -> list[str]:
    data, errs = cm.get("data") or {}, []
    want = {"OVERHEAD_BACKEND": server, f"OVERHEAD_{server.upper()}_URL": SERVER_URLS[server],
            "OVERHEAD_BROKER": kr.BROKER_URLS[broker], "OVERHEAD_MODELS_DIR": MODELS_CACHE}
    for k, v in want.items():
        if data.get(k) != v:
            errs.append(f"ConfigMap: {k}={data.get(k)!r}, services.py gives {v!r}")
    return errs


def check_urls(docs, server, broker, data) -> list[str]:
    """Every in-cluster URL names a rendered Service (or Strimzi's bootstrap) and its port."""
    services = _by_kind(docs, "Service")
    targets = {n: {p["port"] for p in s["spec"]["ports"]} for n, s in services.items()}
    for name, kafka in _by_kind(docs, "Kafka").items():
        targets[f"{name}-kafka-bootstrap"] = {lst["port"] for lst in kafka["spec"]["kafka"]["listeners"]}
    errs = []
    for key in ("OVERHEAD_BROKER", f"OVERHEAD_{server.upper()}_URL"):
        u = urlsplit(data.get(key, ""))
        if u.port not in targets.get(u.hostname, set()):
            errs.append(f"{key}={data.get(key)!r}: no Service {u.hostname} with port {u.port}")
    return errs


def check_scaler(docs, broker, data) -> list[str]:
    errs, so = [], _by_kind(docs, "ScaledObject").get("worker")
    if so is None:
        return ["no ScaledObject for the worker Deployment"]
    spec = so["spec"]
    if spec["scaleTargetRef"]["name"] not in _by_kind(docs, "Deployment"):
        errs.append(f"ScaledObject targets {spec['scaleTargetRef']['name']!r}: no such Deployment")
    if spec.get("minReplicaCount", 0) < 1:
        errs.append("ScaledObject: minReplicaCount < 1 (the gateway waits for a worker)")
    (t,) = spec["triggers"]
    name, group = kr.crops_consumer(broker)
    ns = so["metadata"].get("namespace")
    m = t["metadata"]
    if broker == "redis":
        want = {"type": "redis-streams", "stream": name, "consumerGroup": group,
                "address": f"redis.{ns}.svc:{port('redis')}"}
    else:
        want = {"type": "kafka", "topic": name, "consumerGroup": group,
                "bootstrapServers": f"{kr.KAFKA_BOOTSTRAP}.{ns}.svc:{port('kafka', 'kafka')}",
                "offsetResetPolicy": kr.kafka_offset_reset()}
        partitions = int(parse_qs(urlsplit(data.get("OVERHEAD_BROKER", "")).query)
                         .get("partitions", ["4"])[0])
        for k in _by_kind(docs, "Kafka").values():
            partitions = min(partitions, int(k["spec"]["kafka"]["config"]["num.partitions"]))
        if spec["maxReplicaCount"] > partitions:
            errs.append(f"ScaledObject: maxReplicaCount {spec['maxReplicaCount']} > "
                        f"{partitions} partitions (idle consumers)")
    for k, v in want.items():
        got = t["type"] if k == "type" else m.get(k)
        if got != v:
            errs.append(f"ScaledObject trigger {k}={got!r}, expected {v!r}")
    return errs


def check_rendered(docs: list[dict], server: str, broker: str, gpu: bool = False) -> list[str]:
    errs = check_services(docs, server, broker)
    configmaps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    for d in docs:
        if d.get("kind") != "Namespace" and d["metadata"].get("namespace") != kr.NAMESPACE:
            errs.append(f"{d['kind']}/{d['metadata']['name']}: namespace is not {kr.NAMESPACE}")
        if d.get("kind") in WORKLOADS:
            errs += check_workload(d["metadata"]["name"], d, configmaps, server, gpu)
    want = {"gateway", "worker", "models", "locust-master", "locust-worker", server}
    want |= {"redis"} if broker == "redis" else set()
    have = {d["metadata"]["name"] for d in docs if d.get("kind") in WORKLOADS}
    if have != want:
        errs.append(f"workloads {sorted(have)} != {sorted(want)}")
    if len(configmaps) != 1:
        return errs + [f"expected one ConfigMap, found {sorted(configmaps)}"]
    (cm,) = configmaps.values()
    errs += check_config(cm, server, broker) + check_urls(docs, server, broker, cm.get("data", {}))
    errs += check_scaler(docs, broker, cm.get("data", {}))
    gw = next((d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == "gateway"), None)
    if gw:
        env = _env_names(_pod(gw)["containers"][0], configmaps)
        if env.get("OVERHEAD_PORT") != str(port("gateway")) or env.get("OVERHEAD_HOST") != "0.0.0.0":
            errs.append("gateway: OVERHEAD_PORT/OVERHEAD_HOST are not services.py's port on 0.0.0.0")
        if gpu and env.get("OVERHEAD_PREPROCESSOR") != "dali":
            errs.append("gateway (gpu): OVERHEAD_PREPROCESSOR is not dali")
    return errs
