"""Feasibility probe (issue 24): can a small start/end pointer over the frozen backbone's hidden
states, the question placed before one sentence, find the answer span in that sentence, and say
"no answer here" (a null position) for a sentence that does not answer it?

Pairs are (question, sentence, the value's character span or none). A question's positive is the
sentence of its answer event; its negatives are up to two other sentences of its stream (facts
about other attributes and real filler), those sharing most words with the question first.
Training pairs come from the train splits (open, lifecycle, counterfactual SQuAD half 0); the
probe is scored on the validation halves (unseen templates, attributes, corpus; counterfactual
SQuAD and HotpotQA): span exact match on positives, and how often the positive's answer outscores
every negative of its question (the pick a reader over pointer answers would make). No test half
is read.

    OMP_NUM_THREADS=2 python -m experiments.answer_pointer_probe --json runs/pointer_probe.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from memadapter.answer_pointer import best_spans
from memadapter.bm25 import lexical_agreement
from memadapter.modeling.real_models import load_smollm2
from memadapter.training.answer_scoring import exact_match
from memadapter.training.filler import split_sentences
from memadapter.training.fit_reader import build_streams
from memadapter.training.lifecycle_data import UNKNOWN

def pairs(streams: list[dict], rng: random.Random) -> list[list[tuple]]:
    """Per answerable question: [(question, sentence, a0, a1)] positive first, then negatives (a0 = -1)."""
    out = []
    for s in streams:
        text, events = s["text"], s["events"]
        covered = [(e["start"], e["end"]) for e in events]
        filler = [x for x in split_sentences(" ".join(text[a:b] for a, b in _gaps(covered, len(text)))) if len(x) > 20]
        for q in s["questions"]:
            if q["answer"] == UNKNOWN or q.get("answer_event") is None:
                continue
            e = events[q["answer_event"]]
            if e.get("value_start") is None:
                continue
            pos = (q["question"], text[e["start"]:e["end"]], e["value_start"] - e["start"], e["value_end"] - e["start"])
            others = [text[o["start"]:o["end"]] for o in events if o.get("attribute") != q.get("attribute")] + filler
            others = list(dict.fromkeys(others))
            if others:
                agree = lexical_agreement(q["question"], others, True)
                order = sorted(range(len(others)), key=lambda i: (-agree[i], rng.random()))
                negs = [(q["question"], others[i], -1, -1) for i in order[:2]]
            else:
                negs = []
            out.append([pos] + negs)
    return out


def _gaps(spans, n):
    spans, prev, out = sorted(spans), 0, []
    for a, b in spans:
        if a > prev:
            out.append((prev, a))
        prev = max(prev, b)
    return out + [(prev, n)]


def encode_one(model, tok, q, sent, a0, a1, layers):
    prefix = f"Question: {q}\nText:"
    enc = tok(prefix + " " + sent, return_offsets_mapping=True, add_special_tokens=False)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    base = len(prefix) + 1
    text_tok = [i for i, (c0, c1) in enumerate(offs) if c1 > base]
    if not text_tok:
        return None
    null = text_tok[0] - 1  # the token before the text: "no answer here"
    keep = [null] + text_tok
    if a0 >= 0:
        starts = [i for i in text_tok if offs[i][1] > base + a0]
        ends = [i for i in text_tok if offs[i][0] < base + a1]
        if not starts or not ends:
            return None
        s, e = keep.index(starts[0]), keep.index(ends[-1])
    else:
        s = e = 0
    with torch.no_grad():
        hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    h = torch.cat([hs[l][0] for l in layers], -1)[keep]  # [1 + T, L*H]
    return {"h": h, "s": s, "e": e, "sent": sent, "gold": sent[a0:a1] if a0 >= 0 else None,
            "offs": [None] + [(offs[i][0] - base, offs[i][1] - base) for i in text_tok]}


def encode(model, tok, groups, layers):
    out = []
    for g in groups:
        items = [encode_one(model, tok, *p, layers) for p in g]
        if items[0] is not None:
            out.append([x for x in items if x is not None])
    return out


def best_span(logits: torch.Tensor) -> tuple[int, int, float]:
    """logits [1 + T, 2] -> (start, end, span score - null score); position 0 is the null."""
    text = torch.ones(1, logits.shape[0], dtype=torch.bool)
    text[0, 0] = False
    start, end, margin = best_spans(logits[None], text, torch.zeros(1, dtype=torch.long))
    return int(start), int(end), float(margin)


def evaluate(head, groups) -> dict:
    em = pick = 0
    for g in groups:
        res = [best_span(head(d["h"])) for d in g]
        s, e, _ = res[0]
        d = g[0]
        em += exact_match(d["sent"][d["offs"][s][0]:d["offs"][e][1]], d["gold"])
        pick += all(res[0][2] > r[2] for r in res[1:])
    n = max(1, len(groups))
    return {"span_em": round(em / n, 3), "pick": round(pick / n, 3)}


def make_head(kind: str, dim: int) -> nn.Module:
    return nn.Linear(dim, 2) if kind == "linear" else nn.Sequential(nn.Linear(dim, 256), nn.GELU(), nn.Linear(256, 2))


def fit(kind, train, val, epochs, log):
    torch.manual_seed(0)
    head = make_head(kind, train[0][0]["h"].shape[-1])
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    flat = [d for g in train for d in g]
    rows = []
    for epoch in range(epochs):
        for i in torch.randperm(len(flat)).tolist():
            d = flat[i]
            logits = head(d["h"])
            loss = F.cross_entropy(logits[:, 0][None], torch.tensor([d["s"]])) + F.cross_entropy(logits[:, 1][None], torch.tensor([d["e"]]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % 3 == 2 or epoch == epochs - 1:
            with torch.no_grad():
                row = {"head": kind, "epoch": epoch + 1, **{k.split(":")[1]: evaluate(head, v) for k, v in val.items()}}
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", default="8,16,30")
    p.add_argument("--train", default="open:train:60,lifecycle:train:30,counterfactual:train:60")
    p.add_argument("--val", default="open:val_unseen_templates:12,open:val_unseen_attributes:12,"
                   "open:val_unseen_corpus:12,counterfactual:val_squad:12,counterfactual:val_hotpotqa:12")
    p.add_argument("--heads", default="linear,mlp")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--filler-tokens", type=int, default=400)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rng = random.Random(0)
    model, tok = load_smollm2()
    model.eval()
    layers = [int(x) for x in a.layers.split(",")]
    t0 = time.time()
    spec = lambda s: [(b, sp, int(n)) for b, sp, n in (x.split(":") for x in s.split(","))]
    train = encode(model, tok, pairs(build_streams(spec(a.train), 0, a.filler_tokens), rng), layers)
    val = {v: encode(model, tok, pairs(build_streams(spec(v), 1, a.filler_tokens), rng), layers) for v in a.val.split(",")}
    print(f"encoded {len(train)} train, {sum(map(len, val.values()))} val questions in {time.time() - t0:.0f} s", flush=True)
    rows = [r for kind in a.heads.split(",") for r in fit(kind, train, val, a.epochs, print)]
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"layers": layers, "train_questions": len(train),
                       "val_questions": {k: len(v) for k, v in val.items()}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
