#!/usr/bin/env bash
# The main job on a fresh machine: set up, then train the tutorial's network on MNIST and write its report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# --overwrite: running the quickstart again replaces its own earlier run (only files digitlab wrote)
.venv/bin/digitlab train --model seed-ann --out runs/quickstart-seed-ann --overwrite "$@"
