#!/usr/bin/env bash
# issue 26 on one GPU: `memadapter bench perf` on random-init bf16 shapes of SmolLM2-135M,
# Llama-3.2-1B and Qwen2.5-1.5B (configs only, no weights download), 8K and 32K tokens, within
# about 5 minutes on one H200. Rows go to $OUT (default bench/out/gpu_perf).
#   bash bench/gpu_perf.sh            # the GPU run
#   bash bench/gpu_perf.sh --tiny     # the same commands on the CPU at small sizes (checks the script)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT:-bench/out/gpu_perf}
mkdir -p "$OUT"
if [ "${1:-}" = "--tiny" ]; then
  ARGS=(--device cpu --dtype float32 --tokens 512 --repeats 1 --new-tokens 2 --small-shapes --no-reference)
  LIMIT=600
else
  ARGS=(--device cuda --dtype bfloat16 --tokens 8192,32768 --repeats 3 --new-tokens 64 --no-reference)
  LIMIT=100  # seconds per backbone: three of them stay inside 5 minutes
fi
for bb in smollm2-135m llama-3.2-1b qwen2.5-1.5b; do
  echo "== $bb"
  timeout "$LIMIT" "$PY" -m memadapter.cli bench perf --backbone "$bb" "${ARGS[@]}" --json "$OUT/$bb.json" \
    || echo "!! $bb did not finish within ${LIMIT}s (exit $?)"
done
"$PY" - "$OUT" <<'PYEOF'
import json, pathlib, sys
rows = [r for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json")) for r in json.loads(p.read_text())]
print(f"{'backbone':<22}{'metric':<28}{'tokens':>7}{'batch':>6}{'value':>12}{'baseline':>12}{'ratio':>8}")
for r in rows:
    f = lambda x: "-" if x is None else f"{x:.4g}"
    print(f"{r['backbone']:<22}{r['metric']:<28}{r['tokens']:>7}{r['batch']:>6}{f(r['value']):>12}{f(r['baseline']):>12}{f(r['ratio']):>8}")
PYEOF
