#!/usr/bin/env bash
# Check that kubectl >= 1.27 is installed; tests/test_k8s.py uses it OFFLINE (`kubectl kustomize`,
# which needs Kustomize components: kubectl >= 1.21; 1.27+ tested). No cluster is needed or used.
# Debian's kubernetes-client (1.20) is too old: install kubectl from https://pkgs.k8s.io
# (apt repository) or the kubectl binary from https://dl.k8s.io.
set -euo pipefail
if ! command -v kubectl >/dev/null 2>&1; then
    echo "ensure_kubectl.sh: kubectl is missing (needed by tests/test_k8s.py); install kubectl >= 1.27" >&2
    exit 1
fi
minor=$(kubectl version --client -o json 2>/dev/null | python3 -c 'import json,sys,re; print(re.sub(r"\D.*", "", json.load(sys.stdin)["clientVersion"]["minor"]))')
if [ "${minor:-0}" -lt 27 ]; then
    echo "ensure_kubectl.sh: kubectl 1.${minor} is too old; install kubectl >= 1.27" >&2
    exit 1
fi
