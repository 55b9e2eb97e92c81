#!/usr/bin/env bash
# make compose-test: the REAL deploy/docker-compose.yml on a real Docker engine, with local images.
#   bash scripts/compose_test.sh [PYTHON] [-- args for tests/compose_e2e.py]
# 1. an engine: the one DOCKER_HOST / /var/run/docker.sock names if it answers, else a private
#    dockerd started here (data root /var/tmp/overhead-docker: the layer cache survives runs) and
#    stopped at the end by its PID;
# 2. the base image (debootstrap; no registry), the project's images (docker build --network host,
#    PYTHON_IMAGE=the local base) and the stand-ins of the third-party images (deploy/compose/);
# 3. tests/compose_e2e.py: triton+redis, triton+kafka, tfserving(double)+redis.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
PY="${1:-$here/.venv/bin/python}"; shift || true
[ "${1:-}" = "--" ] && shift
T0=$(date +%s)
command -v docker-compose >/dev/null || bash scripts/ensure_compose.sh
eval "$(bash scripts/docker_engine.sh start)"
export DOCKER_HOST
STARTED_PID="${OVERHEAD_DOCKERD_PID:-}"
cleanup() { [ -n "$STARTED_PID" ] && bash "$here/scripts/docker_engine.sh" stop "$STARTED_PID"; true; }
trap cleanup EXIT
echo "[compose] engine $DOCKER_HOST${STARTED_PID:+ (started here, PID $STARTED_PID)}"

BASE=overhead-base:bookworm
bash scripts/compose_base.sh "$BASE"
build() {   # build TAG DOCKERFILE [ARGS...]
    local tag=$1 file=$2; shift 2
    local t=$(date +%s)
    docker build --network host --quiet -f "$file" -t "$tag" "$@" . >/dev/null \
        || { echo "[compose] building $tag failed; again with output:" >&2;
             docker build --network host -f "$file" -t "$tag" "$@" . >&2; exit 1; }
    echo "[compose] image $tag ($(( $(date +%s) - t )) s)"
}
build overhead:0.1.0 deploy/Dockerfile --target runtime --build-arg PYTHON_IMAGE=$BASE
build overhead-models:0.1.0 deploy/Dockerfile --target models --build-arg PYTHON_IMAGE=$BASE
build overhead-standin/tritonserver:2.51 deploy/compose/triton.Dockerfile --build-arg BASE_IMAGE=$BASE
build overhead-standin/redis:7 deploy/compose/redis.Dockerfile --build-arg BASE_IMAGE=$BASE
build overhead-standin/tansu:0.6 deploy/compose/kafka.Dockerfile --build-arg BASE_IMAGE=$BASE
build overhead-standin/tfserving-double:0.1.0 deploy/compose/tfserving-double.Dockerfile \
    --build-arg MODELS_IMAGE=overhead-models:0.1.0
echo "[compose] images ready after $(( $(date +%s) - T0 )) s"
"$PY" tests/compose_e2e.py "$@"
echo "[compose] make compose-test: $(( $(date +%s) - T0 )) s wall"
