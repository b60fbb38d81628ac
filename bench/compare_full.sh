#!/usr/bin/env bash
# The full `digitlab compare`: every classic model and the tutorial's network on all 60,000 training
# images, scored on the 10,000 test images. Niced, because the project's 2-core machines are shared.
#
#   bench/compare_full.sh                       # -> runs/compare-full/leaderboard.{md,html,...}, log beside it
#   bench/compare_full.sh --max-train svm=20000 # extra arguments go to `digitlab compare`
#
# A second invocation re-uses the saved models (SHA-256 checked) and only re-evaluates; add --retrain
# to measure the training times again.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/compare-full}
mkdir -p "$OUT"
start=$(date +%s)
nice -n 10 .venv/bin/digitlab compare --out "$OUT" "$@" 2>&1 | tee "$OUT/compare.log"
echo "wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/compare.log"
