#!/usr/bin/env bash
# Create .venv and install digitlab with its test tools (idempotent; about a minute on a fresh machine).
# Chromium (Debian's package) is only needed for the browser test; it is installed when we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import digitlab, keras, jax, sklearn, fastapi" >/dev/null
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "setup: could not install chromium; browser tests will be skipped"
  else
    echo "setup: chromium not installed (needs root: apt-get install chromium); browser tests will be skipped"
  fi
fi
