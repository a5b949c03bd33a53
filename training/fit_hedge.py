"""Fit the answer pointer's hedge head (``AnswerPointer.hedge``) on a trained adapter.

Hearsay names a fact's entity, attribute and a value without stating it: "It was wrongly said that
...", "My friend thinks ..., but it isn't", "| ... | Hall 12S? (rumour) |". The pointer reads such a
sentence like a statement and proposes its value, and the reader, which has no input that tells
them apart, picks it over the plain statement (docs/RESULTS.md, 2026-12-07: 10 of the 24 open-text
misses whose gold was in the pool). The hedge head is one linear score over the pointer's input at
the sentence's last token (which has read the question and the whole sentence); the reader gets its
sigmoid as the feature ``answer_hedge`` and learns how far to trust a hedged answer. The span and
withdrawal scores are left as they are: every refit of them moved answers between the newest,
older and hedged sentences of a fact (v11, v12).

Pairs, per stream: every event's sentence (positive: an "irrelevant" event, the generators'
rumours and hypotheticals; negative: a statement, an update, a withdrawal) and up to
``--filler`` filler sentences (negatives: real text must not read as hearsay), each behind the
question about its fact where the stream asks one, else the stream's question sharing most words
with it. The backbone reads every pair once (``--cache DIR`` keeps the states per data spec); the
head is fitted with AdamW on the class-balanced binary cross-entropy, and the epoch is chosen on
validation streams by ROC AUC (epoch 0: the zero head, AUC 0.5).

Fit it on streams the reader will not be fitted on (``--seed`` other than ``fit_reader``'s): on its
own training streams the score is surer than on new text, and a reader fitted there would trust it
too much. Refit the reader afterwards (``memadapter.training.fit_reader``).

    python -m memadapter.training.fit_hedge --adapter modeling/adapters/smollm2-135m-prefix --out runs/hedge \\
        --data open:train:100 --data lifecycle:train:50 --data counterfactual:train:50 \\
        --val-data open:val_unseen_templates:8 --val-data open:val_unseen_attributes:8 \\
        --val-data counterfactual:val_squad:8 --filler-tokens 400 --seed 3 --cache runs/hedge_cache

Example (plain tensors: feature 0 marks the hedged pairs):
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(40, 3, generator=g); y = torch.zeros(40); y[::4] = 1.0; x[:, 0] += 4 * y
    >>> head, log = fit_head(x, y, x, y, epochs=50)
    >>> log[0]["val_auc"], log[-1]["val_auc"] > 0.95
    (0.5, True)
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from memadapter.answer_pointer import last_text_token
from memadapter.bm25 import lexical_agreement
from memadapter.modeling.read_answers import pair_ids, pointer_features

from .fit_pointer import filler_sentences
from .fit_reader import build_streams, fit_parser, fit_setup, save_report

HEDGED = "irrelevant"  # the generators' event type of rumours and hypotheticals

Pair = tuple[str, str, bool]  # question, sentence, hedged


def stream_pairs(stream: dict, filler: int, rng: random.Random) -> list[Pair]:
    """The pairs of one stream (module docstring): every event's sentence, then ``filler`` filler sentences."""
    text, events, questions = stream["text"], stream["events"], stream["questions"]
    if not questions:
        return []
    asks = {}
    for q in questions:
        e = events[q["answer_event"]] if q.get("answer_event") is not None else None
        if e is not None:
            asks.setdefault((e.get("entity"), e.get("attribute")), q["question"])
    fill = filler_sentences(stream)
    sentences = [(text[e["start"]:e["end"]].strip(), e["event_type"] == HEDGED, asks.get((e.get("entity"), e.get("attribute"))))
                 for e in events] + [(s.strip(), False, None) for s in rng.sample(fill, min(filler, len(fill)))]
    out = []
    for sentence, hedged, question in sentences:
        if question is None:  # the stream's question sharing most words with the sentence
            agree = lexical_agreement(sentence, [q["question"] for q in questions], True)
            question = questions[max(range(len(questions)), key=lambda i: agree[i])]["question"]
        out.append((question, sentence, hedged))
    return out


@torch.no_grad()
def encode_pairs(model: Any, pairs: Sequence[Pair], batch: int = 16, progress: bool = True) -> torch.Tensor:
    """[P, F]: the pointer's input (``answer_layers`` concatenated) at each pair's last sentence token."""
    tok, layers, out = model.tokenizer, list(model.config.answer_layers), []
    for i in tqdm(range(0, len(pairs), batch), desc="hedge pairs", unit="batch", disable=not progress):
        encoded = [pair_ids(tok, q, s) for q, s, _ in pairs[i:i + batch]]
        ids, mask = model._right_pad([e for e, _ in encoded])
        feats, _ = pointer_features(model, ids, mask, layers)
        n = torch.tensor([k for _, k in encoded], device=ids.device)
        text = mask.bool() & (torch.arange(ids.shape[1], device=ids.device)[None, :] >= n[:, None])  # [b, T]
        last = last_text_token(text)
        out.append(feats[torch.arange(len(last), device=ids.device), last].float().cpu())  # [b, F]
    return torch.cat(out)


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The probability that a positive outscores a negative (ties count half); 0.5 without both classes.

    >>> roc_auc(torch.tensor([0.1, 0.9, 0.5, 0.5]), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    0.875
    """
    pos, neg = scores[labels > 0], scores[labels <= 0]
    if not len(pos) or not len(neg):
        return 0.5
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def fit_head(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
             epochs: int = 200, lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0) -> tuple[nn.Linear, list[dict]]:
    """A zero-initialised linear head fitted full-batch with AdamW on the class-balanced binary
    cross-entropy; keeps the epoch with the best validation ROC AUC (ties: the earlier one)."""
    torch.manual_seed(seed)
    head = nn.Linear(train_x.shape[-1], 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    positives = float(train_y.sum())
    pos_weight = torch.tensor((len(train_y) - positives) / max(1.0, positives))
    score = lambda x: head(x)[:, 0].detach()  # noqa: E731
    best, best_auc = copy.deepcopy(head.state_dict()), roc_auc(score(val_x), val_y)
    log = [{"epoch": 0, "loss": None, "val_auc": best_auc}]
    for epoch in range(1, epochs + 1):
        loss = F.binary_cross_entropy_with_logits(head(train_x)[:, 0], train_y, pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % 10 == 0 or epoch == epochs:
            auc = roc_auc(score(val_x), val_y)
            log.append({"epoch": epoch, "loss": float(loss.detach()), "val_auc": auc})
            if auc > best_auc:
                best, best_auc = copy.deepcopy(head.state_dict()), auc
    head.load_state_dict(best)
    return head, log


def _encoded(model: Any, spec: tuple[str, str, int], seed: int, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, list[Pair]]:
    """(states [P, F], labels [P], pairs) of one data spec, from ``args.cache`` when it holds them."""
    path = args.cache and os.path.join(args.cache, "_".join(map(str, spec)) + f"_seed{seed}_filler{args.filler_tokens}"
                                       f"_fill{args.filler}.safetensors")
    pairs = [p for s in build_streams([spec], seed, args.filler_tokens) for p in stream_pairs(s, args.filler, random.Random(seed))]
    labels = torch.tensor([float(h) for _, _, h in pairs])
    if path and os.path.exists(path):
        t = load_file(path)
        if torch.equal(t["labels"], labels):
            return t["states"], labels, pairs
    states = encode_pairs(model, pairs, progress=not args.no_progress)
    if path:
        os.makedirs(args.cache, exist_ok=True)
        save_file({"states": states, "labels": labels}, path)
    return states, labels, pairs


def _parser() -> argparse.ArgumentParser:
    p = fit_parser("python -m memadapter.training.fit_hedge", __doc__, "answer pointer's hedge head", cache=True)
    p.add_argument("--filler", type=int, default=3, help="filler sentences per stream (negatives)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    model, train_specs, val_specs = fit_setup(args, pointer=True)
    train = [_encoded(model, spec, args.seed, args) for spec in train_specs]
    val = [_encoded(model, spec, args.seed + 1, args) for spec in val_specs]
    cat = lambda parts, i: torch.cat([p[i] for p in parts])  # noqa: E731
    head, log = fit_head(cat(train, 0), cat(train, 1), cat(val, 0), cat(val, 1), epochs=args.epochs, lr=args.lr, seed=args.seed)
    with torch.no_grad():
        model.answer_pointer.hedge.load_state_dict({k: v.to(model.answer_pointer.hedge.weight) for k, v in head.state_dict().items()})
    model._fingerprint_cache = None
    model.save_pretrained(args.out)
    per_spec = {}
    for spec, (x, y, _) in zip(val_specs, val):
        with torch.no_grad():
            score = head(x)[:, 0]
        per_spec[":".join(map(str, spec))] = {
            "pairs": len(y), "hedged": int(y.sum()), "auc": roc_auc(score, y),
            "share_above_0": {"hedged": float((score[y > 0] > 0).float().mean()) if y.sum() else None,
                              "other": float((score[y <= 0] > 0).float().mean())}}
    report = {"data": args.data, "val_data": args.val_data, "filler_tokens": args.filler_tokens, "filler": args.filler,
              "seed": args.seed, "train_pairs": int(sum(len(y) for _, y, _ in train)),
              "train_hedged": int(sum(float(y.sum()) for _, y, _ in train)),
              "best_val_auc": max(r["val_auc"] for r in log), "val_per_spec": per_spec, "log": log}
    save_report(args.out, "fit_hedge", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
