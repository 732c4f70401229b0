#!/usr/bin/env bash
# The whole test suite, after setting up what it needs. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec "${FRTM_VENV:-.venv}/bin/python" -m pytest -q -ra "$@" tests
