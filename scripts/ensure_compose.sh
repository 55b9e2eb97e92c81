#!/usr/bin/env bash
# Idempotent: make sure Debian's docker-compose (1.29) is installed; tests/test_deploy.py uses it
# OFFLINE (`docker-compose -f deploy/docker-compose.yml config`) to validate the compose files.
# No Docker engine is needed or started.
set -euo pipefail
if command -v docker-compose >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "ensure_compose.sh: docker-compose is missing and this user cannot run apt-get;" \
             "install it: apt-get install -y docker-compose" >&2
        exit 1
    fi
fi
echo "installing docker-compose (apt) ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-compose >/dev/null
docker-compose version --short
