#!/usr/bin/env bash
# Idempotent: the browser test (tests/test_browser.py) drives Debian's chromium through Playwright.
#   - chromium (Debian package; Playwright's own browser download cannot reach its host here)
#   - playwright (Python client, from PyPI; no `playwright install`)
# Usage: scripts/ensure_browser.sh [PYTHON]   (default: .venv/bin/python next to this script)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-${PYTHON_BIN:-$here/.venv/bin/python}}"

if [ ! -x /usr/bin/chromium ]; then
    echo "ensure_browser: installing chromium (apt) ..."
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if ! "$PY" -c 'import playwright' >/dev/null 2>&1; then
    echo "ensure_browser: installing playwright (pip) ..."
    "$PY" -m pip install --quiet --disable-pip-version-check 'playwright>=1.40'
fi
