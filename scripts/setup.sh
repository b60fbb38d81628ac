#!/usr/bin/env bash
# Create .venv and install digitlab with the training stack and its test tools (idempotent; about a minute on a
# fresh machine). `pip install digitlab` alone is the inference runtime; `[train]` adds Keras, TensorFlow, JAX...
# Chromium (Debian's package) is only needed for the browser test; it is installed when we are root. In CI (CI set)
# a browser that can't be installed stops the setup: the browser tests must run there, not be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[train,sweep,track,dev]' 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import digitlab, keras, jax, sklearn, fastapi, onnxruntime, onnx" >/dev/null
no_browser() {
  if [ -n "${CI:-}" ] && [ "${CI}" != false ] && [ "${CI}" != 0 ]; then
    echo "setup: $1; CI needs it for the browser tests" >&2
    exit 1
  fi
  echo "setup: $1; browser tests will be skipped"
}
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || no_browser "could not install chromium"
  else
    no_browser "chromium not installed (needs root: apt-get install chromium)"
  fi
fi
.venv/bin/python -c "import playwright.sync_api" 2>/dev/null || no_browser "Python Playwright is not installed"
