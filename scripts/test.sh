#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up, lint, check the layers, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check digitlab tests bench
.venv/bin/lint-imports --config pyproject.toml
.venv/bin/python -m pytest -q -n 2 -rs "$@"  # -rs: every skip and its reason
