"""Fit the answer pointer's restatement weights (``AnswerPointer.restated``) on a trained adapter.

A correction that repeats the sentence it corrects changes one part of it, and that part is the
answer however odd it sounds (:mod:`memadapter.restatement`). The pointer gets, per token, whether
its word replaces or is inserted into the earlier sentence the sentence restates most; a weight
per feature and score turns them into start and end scores. Only these weights are fitted; the
pointer stays as it is.

Pairs, per question of the training streams with a value to answer: the sentence of its answer
event (target: the value's span) and up to ``--negatives`` sentences of other facts' events, those
sharing most words with the question first (the look-alike, another entity's fact in the same
template; target: the null position, "no answer here"). Each sentence is paired with the
sentence before it in the stream that it restates most (:func:`~memadapter.restatement.nearest_earlier`,
the read path's choice among the retrieved chunks' sentences). A question none of whose
sentences restates anything teaches the weights nothing and is left out. The frozen pointer reads
each pair once (``--cache DIR`` keeps its scores per data spec, so a refit costs seconds); the
per-token features (:data:`~memadapter.restatement.FEATURES`) are computed from the pairs, the
weights fitted on the cached scores (AdamW, start and end cross-entropy), and the epoch is chosen on validation streams by
:func:`~memadapter.training.fit_pointer.question_accuracy` (epoch 0: the weights at zero, the
pointer as it was).

Fit on streams the pointer was not fitted on (``--seed`` other than ``fit_pointer``'s): on its own
training streams a refitted pointer is already right, so the weights learn nothing there (v11,
docs/RESULTS.md 2026-12-07: zero weights kept; the same pointer with ``--seed 3``: validation
question accuracy 0.40 -> 0.48).

    python -m memadapter.training.fit_restatement --adapter modeling/adapters/smollm2-135m-prefix \\
        --out runs/restated --data counterfactual:train:60 --data open:train:60 --data lifecycle:train:30 \\
        --val-data counterfactual:val_squad:12 --val-data open:val_unseen_templates:12 --filler-tokens 400 --seed 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from memadapter.bm25 import lexical_agreement
from memadapter.modeling.read_answers import pair_ids, pointer_features, sentence_changes
from memadapter.restatement import FEATURES as RESTATEMENT_FEATURES, nearest_earlier
from memadapter.sentences import sentence_spans

from .fit_pointer import PairSet, _target, question_accuracy
from .fit_reader import build_streams, fit_parser, fit_setup, save_report
from .lifecycle_data import UNKNOWN

# question, sentence, value char span in it (None: no answer here), the earlier sentence it restates (None: none)
Pair = tuple[str, str, Optional[tuple[int, int]], Optional[str]]


def stream_pairs(stream: dict, negatives: int) -> list[list[Pair]]:
    """Per question of ``stream`` with a value to answer: its pairs (module docstring), the
    answer's first; only questions with a pair that restates an earlier sentence."""
    text, events = stream["text"], stream["events"]
    spans = sentence_spans(text)
    sentences = [text[s:e] for s, e in spans]

    def sentence_of(e: dict) -> Optional[int]:
        at = e.get("value_start", e["start"])
        return next((k for k, (s, t) in enumerate(spans) if s <= at < t), None)

    def pair(question: str, e: dict, answer: bool) -> Optional[Pair]:
        k = sentence_of(e)
        if k is None:
            return None
        j = nearest_earlier(sentences[k], sentences[:k])
        span = (e["value_start"] - spans[k][0], e["value_end"] - spans[k][0]) if answer else None
        if span is not None and not (0 <= span[0] < span[1] <= len(sentences[k])):
            return None
        return question, sentences[k], span, None if j is None else sentences[j]

    out = []
    for q in stream["questions"]:
        e = events[q["answer_event"]] if q.get("answer_event") is not None else None
        if e is None or q["answer"] == UNKNOWN or e.get("value_start") is None:
            continue
        fact = (e.get("entity"), e.get("attribute"))
        others = [o for o in events if (o.get("entity"), o.get("attribute")) != fact and o.get("value_start") is not None]
        agree = lexical_agreement(q["question"], [text[o["start"]:o["end"]] for o in others], True) if others else []
        chosen = [others[i] for i in sorted(range(len(others)), key=lambda i: -agree[i])[:negatives]]
        group = [pair(q["question"], e, True)] + [pair(q["question"], o, False) for o in chosen]
        group = [g for g in group if g is not None]
        if group and group[0][2] is not None and any(g[3] is not None for g in group):
            out.append(group)
    return out


@dataclass
class Encoded:
    """Pairs read once by the backbone and the frozen pointer: its scores ``logits`` [P, T, 3] at
    the null token and the sentence's tokens, ``valid`` [P, T], ``target`` (start, end) [P, 2]
    ((0, 0): no answer here), per pair its question's index, the gold text on an answer pair, the
    token ids (-1 at the null) and the pair itself. The features are computed from the pairs
    when fitting (:func:`pair_set`), so a cache of it outlives a change of features."""

    logits: torch.Tensor
    valid: torch.Tensor
    target: torch.Tensor
    question: list[int]
    gold: list[Optional[str]]
    ids: list[list[int]]
    pairs: list[Pair]

    def save(self, path: str) -> None:
        """``path``.safetensors (tensors) and ``path``.json (the rest); nothing is pickled."""
        save_file({"logits": self.logits, "valid": self.valid, "target": self.target}, f"{path}.safetensors")
        with open(f"{path}.json", "w") as f:
            json.dump({"question": self.question, "gold": self.gold, "ids": self.ids, "pairs": self.pairs}, f)

    @classmethod
    def load(cls, path: str) -> "Encoded":
        t = load_file(f"{path}.safetensors")
        with open(f"{path}.json") as f:
            j = json.load(f)
        return cls(t["logits"], t["valid"], t["target"], j["question"], j["gold"], j["ids"],
                   [(q, s, None if span is None else tuple(span), e) for q, s, span, e in j["pairs"]])


@torch.no_grad()
def encode_pairs(model: Any, groups: list[list[Pair]], batch: int = 16, progress: bool = True) -> Encoded:
    """Every pair read once by the backbone and the frozen pointer (restatement weights unused). A
    group whose answer does not start and end on token boundaries is left out, and so is any other
    pair of that kind."""
    tok, layers = model.tokenizer, list(model.config.answer_layers)
    flat = []  # (question index, pair, target, gold)
    for group in groups:
        targets = [_target(tok, s, span) for _, s, span, _ in group]
        if targets[0] is None:
            continue
        question, sentence, span, _ = group[0]
        q = len({f[0] for f in flat})
        flat += [(q, p, t, sentence[span[0]:span[1]] if k == 0 else None)
                 for k, (p, t) in enumerate(zip(group, targets)) if t is not None]
    rows, tokens = [], []
    for i in tqdm(range(0, len(flat), batch), desc="restatement pairs", unit="batch", disable=not progress):
        encoded = [pair_ids(tok, p[0], p[1]) for _, p, _, _ in flat[i:i + batch]]
        ids, mask = model._right_pad([e for e, _ in encoded])
        feats, _ = pointer_features(model, ids, mask, layers)
        logits = model.answer_pointer(feats).float().cpu()  # [b, T, 3]
        for r, (ids_r, n) in enumerate(encoded):
            rows.append(logits[r, n - 1:len(ids_r)])  # [1 + T, 3]: the null, then the sentence's tokens
            tokens.append([-1] + ids_r[n:])
    width = max(len(r) for r in rows)
    out = Encoded(torch.zeros(len(rows), width, 3), torch.zeros(len(rows), width, dtype=torch.bool),
                  torch.tensor([f[2] for f in flat]), [f[0] for f in flat], [f[3] for f in flat], tokens,
                  [f[1] for f in flat])
    for k, r in enumerate(rows):
        out.logits[k, :len(r)], out.valid[k, :len(r)] = r, True
    return out


def pair_set(encoded: Sequence[Encoded], tokenizer: Any) -> PairSet:
    """Encoded parts -> one :class:`~memadapter.training.fit_pointer.PairSet` whose ``states`` [P, T,
    3 + R] hold the pointer's scores and each token's :data:`~memadapter.restatement.FEATURES`."""
    width = max(e.logits.shape[1] for e in encoded)
    states, valid, target, question, gold, ids = [], [], [], [], [], []
    for e in encoded:
        x = torch.zeros(len(e.pairs), width, 3 + len(RESTATEMENT_FEATURES))
        x[:, :e.logits.shape[1], :3] = e.logits
        for k, (_, sentence, _, earlier) in enumerate(e.pairs):
            found = sentence_changes(tokenizer, sentence, earlier)
            if found is not None and len(found) == int(e.valid[k].sum()) - 1:
                x[k, 1:1 + len(found), 3:] = torch.tensor(found)
        states.append(x)
        valid.append(F.pad(e.valid, (0, width - e.valid.shape[1])))
        target.append(e.target)
        base = len(set(question))  # question indices stay distinct across parts
        question += [base + q for q in e.question]
        gold += e.gold
        ids += e.ids
    return PairSet(torch.cat(states), torch.cat(valid), torch.cat(target), torch.zeros(len(question)),
                   question, gold, ids)


def _encoded(model: Any, spec: tuple[str, str, int], seed: int, args: argparse.Namespace) -> Encoded:
    """The pairs of one data spec, from ``args.cache`` when it holds them (else encoded, and saved there)."""
    path = args.cache and os.path.join(args.cache, "_".join(map(str, spec)) +
                                       f"_seed{seed}_filler{args.filler_tokens}_neg{args.negatives}")
    if path and os.path.exists(f"{path}.json"):
        return Encoded.load(path)
    groups = [g for s in build_streams([spec], seed, args.filler_tokens) for g in stream_pairs(s, args.negatives)]
    out = encode_pairs(model, groups, progress=not args.no_progress)
    if path:
        os.makedirs(args.cache, exist_ok=True)
        out.save(path)
    return out


def restated_head(weights: torch.Tensor):
    """Cached [..., T, 3 + R] (pointer scores, features) -> scores [..., T, 3] with ``weights`` [R, 2]."""
    def head(x: torch.Tensor) -> torch.Tensor:
        bias = x[..., 3:] @ weights  # [..., T, 2]
        return x[..., :3] + torch.cat([bias, torch.zeros_like(bias[..., :1])], -1)
    return head


def fit_weights(train: PairSet, val: PairSet, decode, epochs: int = 300, lr: float = 0.1) -> tuple[torch.Tensor, list[dict]]:
    """AdamW on the start and end cross-entropy over whole ``train``; keeps the epoch with the best
    validation question accuracy (ties: the earlier one; epoch 0 is zeros)."""
    w = torch.zeros(train.states.shape[-1] - 3, 2, requires_grad=True)
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=0.0)
    best, best_acc = w.detach().clone(), question_accuracy(restated_head(w.detach()), val, decode)
    log = [{"epoch": 0, "loss": None, "val_question_accuracy": best_acc}]
    for epoch in range(1, epochs + 1):
        logits = restated_head(w)(train.states).masked_fill(~train.valid[..., None], -1e9)
        loss = F.cross_entropy(logits[..., 0], train.target[:, 0]) + F.cross_entropy(logits[..., 1], train.target[:, 1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % 10 == 0 or epoch == epochs:
            acc = question_accuracy(restated_head(w.detach()), val, decode)
            log.append({"epoch": epoch, "loss": float(loss.detach()), "val_question_accuracy": acc, "weights": w.detach().tolist()})
            if acc > best_acc:
                best, best_acc = w.detach().clone(), acc
    return best, log


def _parser():
    p = fit_parser("python -m memadapter.training.fit_restatement", __doc__, "answer pointer's restatement weights", cache=True)
    p.add_argument("--negatives", type=int, default=3, help="sentences of other facts per question")
    p.add_argument("--epochs", type=int, default=300)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    model, train_specs, val_specs = fit_setup(args, pointer=True)
    train = pair_set([_encoded(model, spec, args.seed, args) for spec in train_specs], model.tokenizer)
    val = pair_set([_encoded(model, spec, args.seed + 1, args) for spec in val_specs], model.tokenizer)
    weights, log = fit_weights(train, val, model._decode, epochs=args.epochs)
    with torch.no_grad():
        model.answer_pointer.restated.copy_(weights.to(model.answer_pointer.restated))
    model._fingerprint_cache = None
    model.save_pretrained(args.out)
    report = {"data": args.data, "val_data": args.val_data, "filler_tokens": args.filler_tokens,
              "negatives": args.negatives, "features": list(RESTATEMENT_FEATURES), "train_pairs": len(train.valid),
              "val_pairs": len(val.valid), "train_questions": len(set(train.question)),
              "val_questions": len(set(val.question)), "weights": weights.tolist(),
              "val_question_accuracy_at_zero": log[0]["val_question_accuracy"],
              "best_val_question_accuracy": max(r["val_question_accuracy"] for r in log), "log": log}
    save_report(args.out, "fit_restatement", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
