"""Does the version-resolution stage pay? Pick accuracy on validation pools, with and without it.

For each validation split, every stream is ingested once and each question's pool is built as
``select`` builds it; the fitted scorer picks an entry, and the pick is right when it sits in the
answer event's sentence (``fit_reader.label_pool``). The same pick is then moved to its newest
version (``read_versions.newest_version``, the write path's thresholds). The stage stays only if
it does not lose on any split and gains on one (issue 24: a hand rule must pay on every held-out split).

    python -m experiments.version_stage_ablation --adapter runs/smollm2_open_reader \\
        --data open:val_unseen_templates:8 --data open:val_unseen_attributes:8 \\
        --data open:val_unseen_corpus:8 --data counterfactual:val_squad:8 --data lifecycle:validation:8 \\
        --json docs/results/version_stage_ablation.json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from memadapter.bench.stats import wilson_interval
from memadapter.modeling.read_scorer import score_pools
from memadapter.modeling.read_versions import newest_version
from memadapter.training.fit_reader import _char_starts, build_streams, grounded_once, label_pool, parse_data
from memadapter.training.generation_eval import _load_model, _model_dirs, question_ids


@torch.no_grad()
def split_picks(model: Any, streams: Sequence[dict]) -> dict[str, int]:
    """Counts over the questions of ``streams``: right picks without / with the stage, and moved picks."""
    tok, ingest = model.tokenizer, model.config.ingest
    out = {"questions": 0, "covered": 0, "plain": 0, "versions": 0, "moved": 0}
    for stream in tqdm(streams, desc="pools", unit="stream"):
        memory = model.new_memory()
        model.ingest(memory, stream["text"], progress=False)
        snapshot, starts = memory.snapshot(), _char_starts(tok, stream["text"])
        with grounded_once(model, memory):
            for q in stream["questions"]:
                memory.restore(snapshot)
                ids = torch.tensor([question_ids(tok, q["question"])])  # [1, T]
                qp = model.read_pools(memory, ids, torch.ones_like(ids))[0]
                out["questions"] += 1
                if not len(qp.pool):
                    continue
                positive = label_pool(qp.pool.order, starts, stream["events"][q["answer_event"]])
                scores, _ = score_pools(model.read_scorer, [(qp.question, qp.pool)])
                pick = int(scores[0, :len(qp.pool)].argmax())
                newest = newest_version(qp.pool, pick, ingest.slot_match_threshold, ingest.slot_update_match_threshold)
                out["covered"] += int(positive.any())
                out["plain"] += int(positive[pick])
                out["versions"] += int(positive[newest])
                out["moved"] += int(newest != pick)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.version_stage_ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True)
    p.add_argument("--base", default=None)
    p.add_argument("--data", action="append", required=True, metavar="BUILDER:SPLIT:STREAMS")
    p.add_argument("--seed", type=int, default=2, help="stream seed (fit_reader chose its epoch on seed 1)")
    p.add_argument("--filler-tokens", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.set, args.device, args.dtype = [], None, "float32"
    model = _load_model(args, *_model_dirs(args))
    rows = []
    for builder, split, n in parse_data(args.data, "--data"):
        c = split_picks(model, build_streams([(builder, split, n)], args.seed, args.filler_tokens))
        for name in ("plain", "versions"):
            lo, hi = wilson_interval(c[name], c["questions"])
            c[f"{name}_ci"] = [round(lo, 3), round(hi, 3)]
        rows.append({"builder": builder, "split": split, "streams": n, **c})
        print(json.dumps(rows[-1]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "adapter": args.adapter, "seed": args.seed, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
