"""Vendor the schemas of the custom resources deploy/k8s uses (KEDA ScaledObject, Strimzi Kafka and
KafkaNodePool) from their upstream repositories, as data for tests/test_k8s.py.

    python scripts/vendor_crds.py --keda MIRROR_OF_kedacore/keda --keda-ref v2.20.2 \\
        --strimzi MIRROR_OF_strimzi/strimzi-kafka-operator --strimzi-ref 1.2.0

MIRROR is a git directory (a clone or a bare mirror); files are read with ``git show REF:PATH``.
Kept: the served+storage version's ``openAPIV3Schema`` without its ``description`` texts (the
schema itself is unchanged), and the trigger metadata keys KEDA's redis-streams and kafka scalers
read (their ``keda:"name=..., order=triggerMetadata..."`` struct tags), which the CRD leaves as a
free string map. Each file starts with a header naming the source, the ref and the license.
"""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "crds"
KEDA_URL = "https://github.com/kedacore/keda"
STRIMZI_URL = "https://github.com/strimzi/strimzi-kafka-operator"
CRDS = [  # (project, path in the repository, output file)
    ("keda", "config/crd/bases/keda.sh_scaledobjects.yaml", "keda.sh_scaledobject.yaml"),
    ("strimzi", "packaging/install/cluster-operator/040-Crd-kafka.yaml",
     "kafka.strimzi.io_kafka.yaml"),
    ("strimzi", "packaging/install/cluster-operator/045-Crd-kafkanodepool.yaml",
     "kafka.strimzi.io_kafkanodepool.yaml"),
]
SCALERS = {  # trigger -> [(Go file, the metadata struct read from it)]
    "redis-streams": [("pkg/scalers/redis_streams_scaler.go", "redisStreamsMetadata"),
                      ("pkg/scalers/redis_scaler.go", "redisConnectionInfo")],
    "kafka": [("pkg/scalers/kafka_scaler.go", "kafkaMetadata")]}
TAG = re.compile(r'keda:"name=([^,"]+),\s*order=([^,"]+)')


def show(repo: str, ref: str, path: str) -> str:
    return subprocess.run(["git", "-C", repo, "show", f"{ref}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def strip_descriptions(node, in_properties: bool = False):
    """The schema without ``description`` keywords (a PROPERTY named description is kept)."""
    if isinstance(node, dict):
        return {k: strip_descriptions(v, in_properties=(k == "properties" and not in_properties))
                for k, v in node.items()
                if in_properties or not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def header(url: str, ref: str, path: str, what: str) -> str:
    return (f"# {what}\n# Source: {url} @ {ref}, {path}\n# License: Apache-2.0 (the upstream "
            f"project's LICENSE); descriptions removed, schema unchanged.\n"
            f"# Regenerate: python scripts/vendor_crds.py (see its docstring).\n")


def vendor_crd(repo: str, ref: str, url: str, path: str, out: str) -> None:
    crd = yaml.safe_load(show(repo, ref, path))
    ver = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    doc = {"group": crd["spec"]["group"], "kind": crd["spec"]["names"]["kind"],
           "version": ver["name"],
           "openAPIV3Schema": strip_descriptions(ver["schema"]["openAPIV3Schema"])}
    text = header(url, ref, path, f"openAPIV3Schema of {doc['kind']} {doc['group']}/{doc['version']}")
    (OUT / out).write_text(text + yaml.safe_dump(doc, sort_keys=False, width=100))
    print(f"wrote {OUT / out}")


def vendor_trigger_keys(repo: str, ref: str) -> None:
    keys = {}
    for trigger, paths in SCALERS.items():
        names = set()
        for path, struct in paths:
            src = show(repo, ref, path)
            body = re.search(rf"type {struct} struct \{{(.*?)\n\}}", src, re.DOTALL).group(1)
            for m in TAG.finditer(body):
                if "triggerMetadata" in m.group(2):
                    names |= {n.strip() for n in m.group(1).split(";")}
        keys[trigger] = sorted(names)
    text = header(KEDA_URL, ref, ", ".join(p for ps in SCALERS.values() for p, _ in ps),
                  "trigger metadata keys KEDA's scalers read (order=triggerMetadata struct tags)")
    (OUT / "keda-trigger-metadata.yaml").write_text(text + yaml.safe_dump(keys, width=100))
    print(f"wrote {OUT / 'keda-trigger-metadata.yaml'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keda", required=True)
    ap.add_argument("--keda-ref", default="v2.20.2")
    ap.add_argument("--strimzi", required=True)
    ap.add_argument("--strimzi-ref", default="1.2.0")
    a = ap.parse_args()
    repos = {"keda": (a.keda, a.keda_ref, KEDA_URL), "strimzi": (a.strimzi, a.strimzi_ref, STRIMZI_URL)}
    OUT.mkdir(parents=True, exist_ok=True)
    for project, path, out in CRDS:
        vendor_crd(*repos[project], path, out)
    vendor_trigger_keys(a.keda, a.keda_ref)


if __name__ == "__main__":
    main()
