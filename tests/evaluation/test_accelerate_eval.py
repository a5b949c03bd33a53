"""``accelerate launch --multi_gpu --num_processes 2 -m memadapter.eval`` on the CPU (gloo) gives the
same rows and predictions as one plain process, latency aside. (``--multi_gpu`` is what starts
the processes with accelerate 1.x; see tests/training/test_accelerate_launch.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from eval_helpers import word_tokenizer
from memadapter.eval import main

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--tasks", "niah_single,babilong_qa1", "--lengths", "160", "--methods", "full_context,tail,bm25",
        "--num-samples", "3", "--tail-tokens", "48", "--chunk-tokens", "40", "--top-k", "2", "--metrics", "plain",
        "--device", "cpu", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def _read(out: Path) -> tuple[list[dict], list[dict]]:
    rows = json.loads((out / "rows.json").read_text())
    preds = [json.loads(line) for line in (out / "preds.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("mean_latency_s")
    for p in preds:
        p.pop("latency_s")
    return rows, preds


def test_two_cpu_processes_give_the_rows_of_one(tmp_path, tiny_lm):
    base = tmp_path / "base"
    tiny_lm.save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    one, two = tmp_path / "one", tmp_path / "two"
    outputs = lambda out: ["--base", str(base), "--json", str(out / "rows.json"),  # noqa: E731
                           "--predictions", str(out / "preds.jsonl")]
    assert main([*ARGS, *outputs(one)]) == 0  # one plain process: this one (saves a second interpreter start)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "memadapter.eval", *ARGS, *outputs(two)]
    proc = subprocess.run(launch, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (rows1, preds1), (rows2, preds2) = _read(one), _read(two)
    assert {p.pop("process") for p in preds1} == {0}
    assert sorted({p.pop("process") for p in preds2}) == [0, 1]  # both processes answered a share
    assert len(rows1) == 2 * 3 and all(r["total"] == 3 for r in rows1)
    assert [p["id"] for p in preds1] == [p["id"] for p in preds2] and len(preds1) == 2 * 3 * 3
    assert rows2 == rows1 and preds2 == preds1
