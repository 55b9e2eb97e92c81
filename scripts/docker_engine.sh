#!/usr/bin/env bash
# Start a private Docker engine when none answers; print the DOCKER_HOST to use.
#   eval "$(bash scripts/docker_engine.sh start)"   -> exports DOCKER_HOST (and OVERHEAD_DOCKERD_PID
#                                                      when this script started the engine)
#   bash scripts/docker_engine.sh stop PID          -> stops only that engine, by its PID
# The data root is persistent (/var/tmp/overhead-docker by default) so the layer cache survives
# between runs on the same machine.
set -euo pipefail
D=${OVERHEAD_DOCKER_ROOT:-/var/tmp/overhead-docker}

answers() { DOCKER_HOST="$1" timeout 10 docker info >/dev/null 2>&1; }

case "${1:-start}" in
start)
    if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then
        echo "export DOCKER_HOST=$DOCKER_HOST"; exit 0; fi
    if answers unix:///var/run/docker.sock; then
        echo "export DOCKER_HOST=unix:///var/run/docker.sock"; exit 0; fi
    if answers "unix://$D/docker.sock"; then       # ours, left running by an earlier run
        echo "export DOCKER_HOST=unix://$D/docker.sock"; exit 0; fi
    [ "$(id -u)" = 0 ] || { echo "no Docker engine answers, and starting dockerd needs root" >&2; exit 1; }
    if ! command -v dockerd >/dev/null; then
        echo "installing Debian's docker.io (dockerd) ..." >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >&2
    fi
    mkdir -p "$D/data" "$D/exec"
    rm -f "$D/docker.sock" "$D/pid"
    # setsid: the engine outlives this script's process group; it is stopped by PID only
    setsid dockerd --host "unix://$D/docker.sock" --data-root "$D/data" --exec-root "$D/exec" \
        --pidfile "$D/pid" >"$D/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        if answers "unix://$D/docker.sock"; then
            echo "export DOCKER_HOST=unix://$D/docker.sock OVERHEAD_DOCKERD_PID=$(cat "$D/pid")"
            exit 0
        fi
        sleep 1
    done
    echo "dockerd did not answer within 60 s; see $D/dockerd.log" >&2
    exit 1 ;;
stop)
    pid=${2:?usage: docker_engine.sh stop PID}
    kill "$pid" 2>/dev/null || exit 0
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 1; done
    kill -9 "$pid" 2>/dev/null || true ;;
*) echo "usage: $0 start | stop PID" >&2; exit 2 ;;
esac
