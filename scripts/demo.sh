#!/usr/bin/env bash
# The main job on the embedded default: propagate the first-frame mask of the shipped demo clip (DAVIS
# 'rollerblade', 35 frames at 854x480) with the default model (MobileNetV2), then score it with DAVIS J&F.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PY="${FRTM_VENV:-.venv}/bin/python"
OUT=${OUT:-results/demo}
"$PY" -m frtm_plugin track --davis data/demo --out "$OUT" --threads "$(nproc)" "$@"
"$PY" -m frtm_plugin evaluate --davis data/demo --results "$OUT"
