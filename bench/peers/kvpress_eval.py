"""Peers of ``memadapter eval``: kvpress presses through kvpress's own pipeline, on the same task file.

Runs in its own virtualenv (kvpress 0.5.5 pins transformers < 5.3; the project needs 5.x), so it
imports nothing from memadapter: it reads the task JSONL that ``memadapter eval --write-tasks``
wrote and writes predictions in memadapter's format; ``python -m memadapter.evaluation.score``
(in the project's environment) scores them with the same code as every other method.

The prompt is the one our methods build: the instruction and the context go into kvpress's
compressed context, the question line stays uncompressed, and the answer prefix opens the answer.

    python bench/peers/kvpress_eval.py --tasks-file tasks.jsonl --model DIR --out peers.jsonl \\
        --presses streaming_llm,snapkv,knorm,expected_attention --ratios 0.5,0.8,0.9
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PRESSES = {"streaming_llm": "StreamingLLMPress", "snapkv": "SnapKVPress", "knorm": "KnormPress",
           "expected_attention": "ExpectedAttentionPress"}


def parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--tasks-file", required=True)
    p.add_argument("--model", required=True, help="a local model dir (e.g. the SmolLM2 cache of memadapter)")
    p.add_argument("--out", required=True)
    p.add_argument("--presses", default=",".join(PRESSES))
    p.add_argument("--ratios", default="0.5,0.8,0.9")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import kvpress
    import torch
    from transformers import pipeline

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.presses.split(",") if n.strip()]
    bad = [n for n in names if n not in PRESSES]
    if bad:
        raise SystemExit(f"--presses: unknown {bad}; expected names from {sorted(PRESSES)}")
    ratios = [float(r) for r in args.ratios.split(",")]
    pipe = pipeline("kv-press-text-generation", model=args.model, device=args.device, dtype=torch.float32)
    window = int(pipe.model.config.max_position_embeddings)
    with open(args.tasks_file, encoding="utf-8") as fh:
        samples = [json.loads(line) for line in fh if line.strip()]
    with open(args.out, "w", encoding="utf-8") as out:
        for s in samples:
            context = f"{s['instruction']}\n{s['context']}\n"
            for name in names:
                for ratio in ratios:
                    out.write(json.dumps(answer(pipe, kvpress, s, context, name, ratio, window)) + "\n")
                    out.flush()
    return 0


def answer(pipe, kvpress, s: dict, context: str, name: str, ratio: float, window: int) -> dict:
    press = getattr(kvpress, PRESSES[name])(compression_ratio=ratio)
    record = {"id": s["id"], "task": s["task"], "length": s["length"], "method": f"kvpress_{name}_{ratio}",
              "references": s["references"], "stale_values": s["stale_values"], "metric": s["metric"],
              "active": [], "note": "", "prediction": None, "latency_s": 0.0}
    if s["length"] > window:  # the press compresses after prefill: the whole context must fit first
        record["note"] = f"length {s['length']} > the backbone's window {window}"
        return record
    start = time.perf_counter()
    out = pipe(context, question=s["question"], answer_prefix=s["answer_prefix"].strip(), press=press,
               max_new_tokens=s["max_new_tokens"])
    record["prediction"] = out["answer"].strip()
    record["latency_s"] = time.perf_counter() - start
    return record


if __name__ == "__main__":
    sys.exit(main())
