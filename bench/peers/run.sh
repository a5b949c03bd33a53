#!/usr/bin/env bash
# kvpress presses on the same task file as `memadapter eval`, scored by the same code.
# Builds bench/peers/.venv-kvpress (kvpress 0.5.5 pins transformers < 5.3, so never the project's .venv).
#   TASKS=niah_single,niah_rewritten LENGTHS=4K NUM=6 bash bench/peers/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=bench/peers/.venv-kvpress
OUT=${OUT:-docs/eval/peers}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  # A CPU torch first (the local wheel dir has the +cpu build; else PyTorch's CPU index), as scripts/bootstrap.sh does.
  "$VENV/bin/python" -m pip -q install "torch==2.13.0+cpu" \
    || "$VENV/bin/python" -m pip -q install torch --index-url https://download.pytorch.org/whl/cpu
  "$VENV/bin/python" -m pip -q install "kvpress==0.5.5" "transformers>=4.56,<5.3"
fi
MODEL=$(.venv/bin/python -c "from memadapter.modeling.real_models import load_smollm2, default_cache_dir; load_smollm2(); print(default_cache_dir())")
.venv/bin/python -m memadapter.cli eval --write-tasks "$OUT/tasks.jsonl" --tasks "${TASKS:-niah_single,niah_rewritten}" \
  --lengths "${LENGTHS:-4K}" --num-samples "${NUM:-6}" --seed "${SEED:-0}"
OMP_NUM_THREADS=1 "$VENV/bin/python" bench/peers/kvpress_eval.py --tasks-file "$OUT/tasks.jsonl" --model "$MODEL" \
  --out "$OUT/predictions.jsonl" --presses "${PRESSES:-streaming_llm,snapkv,knorm,expected_attention}" \
  --ratios "${RATIOS:-0.5,0.8,0.9}"
.venv/bin/python -m memadapter.evaluation.score "$OUT/predictions.jsonl" --json "$OUT/rows.json"
