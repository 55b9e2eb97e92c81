#!/usr/bin/env bash
# Idempotent: make sure the REAL Triton Inference Server the Triton tests start is installed.
#   - the server venv (default .venv-triton, or $OVERHEAD_TRITON_VENV), its own because the server
#     side needs numpy<2: nvidia-pytriton==0.7.0 (bundles tritonserver 2.51 + the Python backend)
#     and onnxruntime (the generated model.py runs ONNX Runtime inside Triton's Python backend);
#   - the backend directory deploy/triton/server.py uses (python backend .so, utils, 3.11 stub);
#   - the client in the main venv: tritonclient[http,grpc].
# Needs a CPython 3.8-3.13 with venv (the wheel ships stubs for those). Only PyPI is used.
# Usage: scripts/ensure_triton.sh [PYTHON]   (default: .venv/bin/python next to this script)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-${PYTHON_BIN:-$here/.venv/bin/python}}"
TVENV="${OVERHEAD_TRITON_VENV:-$here/.venv-triton}"
PIP=(--quiet --disable-pip-version-check)

# the server venv's base interpreter: the one the main venv was made from (same Python version)
BASE_PY="${TRITON_BASE_PYTHON:-$("$PY" -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')}"

server_ok() {
    [ -x "$TVENV/bin/python" ] && "$TVENV/bin/python" - <<'PYEOF' 2>/dev/null
import importlib.metadata as m, sys
import numpy, onnxruntime, pytriton, os
assert m.version("nvidia-pytriton") == "0.7.0"
assert int(numpy.__version__.split(".")[0]) < 2
assert os.path.isfile(os.path.join(os.path.dirname(pytriton.__file__), "tritonserver", "bin", "tritonserver"))
PYEOF
}

if ! server_ok; then
    echo "ensure_triton: creating the Triton server venv $TVENV (nvidia-pytriton 0.7.0, numpy<2, onnxruntime) ..."
    [ -x "$TVENV/bin/python" ] || "$BASE_PY" -m venv "$TVENV"
    "$TVENV/bin/python" -m pip install "${PIP[@]}" "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime>=1.18"
    server_ok || { echo "ensure_triton: the server venv at $TVENV is still not usable" >&2; exit 1; }
fi

if ! "$PY" -c 'import tritonclient.http, tritonclient.grpc' 2>/dev/null; then
    echo "ensure_triton: pip installing tritonclient[http,grpc] into $("$PY" -c 'import sys; print(sys.prefix)') ..."
    "$PY" -m pip install "${PIP[@]}" "tritonclient[http,grpc]>=2.51"
fi

# prepare the backend directory and start a real server once on an empty repository
cd "$here"
OVERHEAD_TRITON_VENV="$TVENV" "$PY" - <<'PYEOF'
import tempfile, time
import importlib.metadata as md
from deploy.triton.server import TritonInstall, TritonServer
inst = TritonInstall()
inst.prepare_backends()
t0 = time.monotonic()
with tempfile.TemporaryDirectory() as repo, TritonServer(repo) as srv:
    ok = srv.ready()
assert ok, "tritonserver did not become ready"
print(f"ensure_triton: tritonserver OK ({inst.binary}, nvidia-pytriton {inst.version()}, "
      f"ready+stop {time.monotonic() - t0:.1f} s); tritonclient {md.version('tritonclient')}")
PYEOF
