#!/usr/bin/env bash
# Build the local base image (Debian bookworm + python3) without a registry: debootstrap, copy the
# host's CA bundle in (pip inside a build checks certificates), `docker import`.
#   bash scripts/compose_base.sh [IMAGE]     (default overhead-base:bookworm; skipped when present)
set -euo pipefail
IMAGE=${1:-overhead-base:bookworm}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "[compose] base image $IMAGE present"; exit 0; fi
command -v debootstrap >/dev/null || apt-get install -y debootstrap >/dev/null
MIRROR=${OVERHEAD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DIR=$(mktemp -d /var/tmp/overhead-rootfs.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
echo "[compose] debootstrap bookworm into $DIR (about a minute) ..."
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,curl bookworm "$DIR" "$MIRROR" \
    >"$DIR.log" 2>&1 || { tail -20 "$DIR.log"; exit 1; }
rm -f "$DIR.log"
cp /etc/ssl/certs/ca-certificates.crt "$DIR/etc/ssl/certs/ca-certificates.crt"
# `python` as well as `python3` (the python:*-slim images have both)
ln -sf python3 "$DIR/usr/bin/python"
rm -rf "$DIR"/var/cache/apt/archives/*.deb "$DIR"/var/lib/apt/lists/*
tar -C "$DIR" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "[compose] imported $IMAGE"
