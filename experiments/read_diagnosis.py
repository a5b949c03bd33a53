"""Where does a read miss? Per validation question, the stage that loses the gold answer.

For each question of a dev split this reads the committed adapter's pool for it (no generation)
and files the question under the first stage that fails:

- ``chunk``: no retrieved chunk holds the answer event's sentence;
- ``sentence``: the chunk is retrieved but no pool entry comes from that sentence;
- ``span``: entries come from the sentence but none has the gold value (exact match);
- ``score``: an entry holds the gold value but the scorer picks another;
- ``ok``: the scorer's pick holds the gold value.

It reads the stream's gold (answer event and value) only after the pool is built, to file the
question; nothing here is fed back into the read. Validation halves only.

    OMP_NUM_THREADS=1 python -m experiments.read_diagnosis --builder counterfactual --split val_squad \\
        --num-streams 6 --filler-tokens 8000 --seed 2 --json runs/diag_squad.json
"""
import argparse
import collections
import json

import torch
from tqdm import tqdm

from memadapter.training import generation_eval as ge
from memadapter.training.answer_scoring import exact_match
from memadapter.training.lifecycle_data import UNKNOWN

STAGES = ("chunk", "sentence", "span", "score", "ok")  # the first stage that loses the gold answer, or ok


def _norm(s: str) -> str:
    return " ".join(s.split()).lower()


def diagnose(model, tok, stream) -> list[dict]:
    text, questions = ge._inputs(stream, 0, None)
    ctx = ge._stream_context(model, tok, text, ["memory"])
    out = []
    for q in questions:
        ctx.memory.restore(ctx.snapshot)
        ids = torch.tensor([ge.question_ids(tok, q["question"])])  # [1, T]
        qp = model.read_pools(ctx.memory, ids, torch.ones_like(ids))[0]
        scores, valid = model.score_pools([qp])
        pick = int(scores[0].masked_fill(~valid[0], float("-inf")).argmax()) if len(qp.pool) else -1
        # the gold, read only now, to file the question
        ev = stream["events"][q["answer_event"]] if q.get("answer_event", -1) >= 0 else None
        gold_sentence = _norm(text[ev["start"]:ev["end"]]) if ev else ""
        index = ctx.memory.indexes[0]
        in_chunk = bool(ev) and any(gold_sentence[:60] in _norm(index.text(i) or "") for i in qp.chunks)
        from_sentence = [j for j, s in enumerate(qp.pool.sentences) if gold_sentence and
                         (_norm(s)[:40] in gold_sentence or gold_sentence[:40] in _norm(s))]
        # an entry without a value is a withdrawal: the injection says it as "unknown" (read_injection)
        said = [UNKNOWN if v is None else v for v in qp.pool.value_texts]
        gold_entries = [j for j, v in enumerate(said) if v and exact_match(v, q["answer"])]
        picked = said[pick] if pick >= 0 else None
        if pick >= 0 and picked and exact_match(picked, q["answer"]):
            stage = "ok"
        elif gold_entries:
            stage = "score"
        elif from_sentence:
            stage = "span"
        elif in_chunk:
            stage = "sentence"
        else:
            stage = "chunk"
        out.append({"stream": stream["id"], "kind": q["kind"], "question": q["question"], "gold": q["answer"],
                    "stage": stage, "picked": picked, "picked_type": qp.pool.event_types[pick] if pick >= 0 else None,
                    "picked_sentence": qp.pool.sentences[pick][:160] if pick >= 0 else None,
                    "gold_sentence": gold_sentence[:160], "pool": len(qp.pool),
                    "from_sentence_values": [qp.pool.value_texts[j] for j in from_sentence]})
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--adapter", default="modeling/adapters/smollm2-135m-prefix")
    p.add_argument("--base", default=None)
    p.add_argument("--builder", default="counterfactual", choices=("lifecycle", "open", "counterfactual"))
    p.add_argument("--split", default="val_squad")
    p.add_argument("--synthetic-names", type=float, default=0.0)
    p.add_argument("--num-streams", type=int, default=6)
    p.add_argument("--filler-tokens", type=int, default=8000)
    p.add_argument("--filler-source", default="auto")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if "test" in args.split:
        raise SystemExit("read_diagnosis reads validation halves only")
    args.set, args.dtype, args.device = [], "float32", None
    model = ge._load_model(args, *ge._model_dirs(args))
    rows = []
    for stream in tqdm(list(ge._streams(args)), desc="diagnose", unit="stream"):
        rows += diagnose(model, model.tokenizer, stream)
    counts = collections.Counter(r["stage"] for r in rows)
    print(args.builder, args.split, dict(counts), "of", len(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "counts": counts, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
