"""Offline checks of ``deploy/k8s/``: render every overlay with ``kubectl kustomize``, validate the
core kinds with kubernetes-validate (strict: unknown fields are errors) and the KEDA / Strimzi
custom resources against their vendored CRD schemas (``deploy/k8s/crds``), and compare what was
rendered with ``deploy/services.py``, the compose file and ``overhead/config.py``.

    python -m deploy.k8s_check            # every overlay; rc 1 on any error
    python -m deploy.k8s_check deploy/k8s/overlays/triton-kafka

Nothing here talks to a cluster (``kubectl apply --dry-run=client`` needs an API server).
"""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import yaml

from deploy.k8s_render import K8S_DIR

OVERLAYS_DIR = K8S_DIR / "overlays"
CRDS_DIR = K8S_DIR / "crds"
KUBERNETES_VERSION = "1.32.0"       # the kubectl installed on the project's machines
CUSTOM = {("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobject.yaml",
          ("kafka.strimzi.io/v1", "Kafka"): "kafka.strimzi.io_kafka.yaml",
          ("kafka.strimzi.io/v1", "KafkaNodePool"): "kafka.strimzi.io_kafkanodepool.yaml"}
TRIGGER_KEYS = CRDS_DIR / "keda-trigger-metadata.yaml"


def overlays() -> list[Path]:
    return sorted(p for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())


def overlay_combo(path: Path) -> tuple[str, str, bool]:
    """(server, broker, gpu) from the components an overlay uses."""
    k = yaml.safe_load((Path(path) / "kustomization.yaml").read_text())
    names = {Path(c).name for c in k.get("components") or []}
    from deploy.services import BROKERS, SERVERS

    server = next(s for s in SERVERS if s in names)
    broker = next(b for b in BROKERS if b in names)
    return server, broker, "gpu" in names


def kustomize(path: Path) -> list[dict]:
    r = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True,
                       timeout=60, check=False)
    if r.returncode:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{r.stderr}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


# -- schemas ---------------------------------------------------------------------------------
def strict_schema(node):
    """A CRD's structural schema as the API server applies it with ``fieldValidation=Strict``
    (kubectl's default): unknown fields are errors unless the schema preserves them."""
    if isinstance(node, dict):
        out = {k: (strict_schema(v) if k != "properties" else
                   {p: strict_schema(s) for p, s in v.items()}) for k, v in node.items()}
        if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict_schema(v) for v in node]
    return node


@functools.cache
def crd_validator(file: str):
    import jsonschema

    schema = yaml.safe_load((CRDS_DIR / file).read_text())["openAPIV3Schema"]
    return jsonschema.Draft7Validator(strict_schema(schema))


@functools.cache
def trigger_keys() -> dict:
    return yaml.safe_load(TRIGGER_KEYS.read_text())


def validate(doc: dict) -> list[str]:
    """Schema errors of one rendered object (empty: valid)."""
    where = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    custom = CUSTOM.get((doc.get("apiVersion"), doc.get("kind")))
    if custom:
        errs = [f"{where}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in crd_validator(custom).iter_errors(doc)]
        if doc["kind"] == "ScaledObject":
            for t in doc.get("spec", {}).get("triggers") or []:
                known = trigger_keys().get(t.get("type"))
                if known is None:
                    errs.append(f"{where}: trigger type {t.get('type')!r} has no vendored keys")
                    continue
                errs += [f"{where}: {t['type']} trigger: unknown metadata key {k!r}"
                         for k in sorted(set(t.get("metadata") or {}) - set(known))]
        return errs
    import kubernetes_validate as kv

    try:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as e:
        return [f"{where}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kv.SchemaNotFoundError:
        return [f"{where}: no schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    return []


def check_overlay(path: Path) -> list[str]:
    from deploy.k8s_agree import check_rendered

    docs = kustomize(path)
    server, broker, gpu = overlay_combo(path)
    return [e for d in docs for e in validate(d)] + check_rendered(docs, server, broker, gpu)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])] or overlays()
    bad = 0
    for p in paths:
        errs = check_overlay(p)
        bad += bool(errs)
        print(f"{p}: {'ok' if not errs else f'{len(errs)} error(s)'}")
        for e in errs:
            print(f"  {e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
