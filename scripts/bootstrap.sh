#!/usr/bin/env bash
# Creates .venv and installs memadapter with its test and real-model extras.
# Torch: an already-installed torch is kept; otherwise a CPU wheel is preferred, first from the
# local wheel directory pip is configured with (offline, seconds), then from PyTorch's CPU index,
# so a fresh machine never pulls a multi-GB CUDA build just to run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install --no-index torch==2.13.0 2>/dev/null \
    || $PIP install torch --index-url https://download.pytorch.org/whl/cpu
fi
$PIP install -e ".[test,real]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import memadapter, torch; print('memadapter', memadapter.__version__, 'torch', torch.__version__)"
