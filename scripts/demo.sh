#!/usr/bin/env bash
# The main job on the embedded default: build the persistent FiftyOne video dataset 'frtm-demo' from the shipped
# clip (DAVIS 'rollerblade', 35 frames at 854x480, with its first-frame mask and ground truth), propagate the mask
# with the plugin's operator and the offline default model, score it with DAVIS J&F, print J&F and FPS, and say how
# to open it in the App. Extra arguments go to `python -m frtm_plugin demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export FIFTYONE_DATABASE_VALIDATION=${FIFTYONE_DATABASE_VALIDATION:-false} FIFTYONE_DO_NOT_TRACK=${FIFTYONE_DO_NOT_TRACK:-true}
exec "${FRTM_VENV:-.venv}/bin/python" -m frtm_plugin demo "$@"
