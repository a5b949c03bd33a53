"""Fit an answer pointer (``memadapter.answer_pointer``) onto a trained adapter.

Each answerable question of the training streams gives one positive pair (the question and the
sentence of its answer event, the value's span as the target) and up to ``--negatives`` negative
pairs: other sentences of its stream (facts about other attributes, real filler), those sharing
most words with the question first, whose target is the null position. Every pair is read by the
frozen backbone once (:func:`encode_pairs`, the read path's :func:`~memadapter.modeling.read_answers.pair_ids`);
the head is then trained on the cached states. The epoch is chosen on validation streams by
``answer_em``: the share of questions whose best-margin answer over their pairs is the gold
(:func:`answer_accuracy`; epoch 0 is the untrained head). The adapter is saved with the pointer,
``answer_layers`` and ``read.answer_sentences``; refit its reader afterwards
(``memadapter.training.fit_reader``), since the pointer adds entries to every pool.

    python -m memadapter.training.fit_pointer --adapter modeling/adapters/smollm2-135m-prefix \\
        --out runs/pointer --data open:train:60 --data lifecycle:train:30 --data counterfactual:train:60 \\
        --val-data open:val_unseen_templates:12 --val-data counterfactual:val_squad:12 --filler-tokens 400

Example (plain tensors):
    >>> gold = [[(1, 2), None], [(0, 0)]]; logits = torch.full((3, 4, 2), -5.0)
    >>> logits[0, 2, 0] = logits[0, 3, 1] = 5.0; logits[1, 0] = 5.0; logits[2, 1] = 5.0
    >>> data = PairSet(logits, torch.ones(3, 4, dtype=torch.bool), torch.tensor([[2, 3], [0, 0], [1, 1]]),
    ...                [0, 0, 1], ["a b", None, "b"], [[-1, 7, 8, 9]] * 3)
    >>> words = {7: "x", 8: "a", 9: "b"}
    >>> answer_accuracy(lambda h: h, data, lambda ids: " ".join(words[i] for i in ids))  # question 0 reads "a b"; 1 reads "x"
    0.5
"""

from __future__ import annotations

import copy
import json
import random
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memadapter.answer_pointer import AnswerPointer, best_spans
from memadapter.bm25 import lexical_agreement
from memadapter.modeling.read_answers import pair_ids, pointer_features

from .answer_scoring import exact_match
from .filler import split_sentences
from .fit_reader import build_streams, fit_parser, parse_data
from .lifecycle_data import UNKNOWN


@dataclass
class PairSet:
    """Cached pairs: states [P, T, F] (position 0 the null token, then the sentence's tokens),
    valid [P, T], target (start, end) [P, 2] (0, 0: no answer here), the question each pair
    belongs to [P], its gold text (None for a negative) and the token id at each position (-1 at the null)."""

    states: torch.Tensor
    valid: torch.Tensor
    target: torch.Tensor
    question: list[int]
    gold: list[Optional[str]]
    ids: list[list[int]]


def stream_pairs(stream: dict, negatives: int, rng: random.Random) -> list[list[tuple[str, str, Optional[tuple[int, int]]]]]:
    """Per answerable question of ``stream``: [(question, sentence, value char span or None)],
    the positive first, then up to ``negatives`` other sentences, the most lexically agreeing first."""
    text, events = stream["text"], stream["events"]
    cuts = sorted((e["start"], e["end"]) for e in events)
    gaps, prev = [], 0
    for a, b in cuts:
        gaps.append(text[prev:a])
        prev = max(prev, b)
    filler = [s for s in split_sentences(" ".join(gaps + [text[prev:]])) if len(s.split()) >= 4]
    out = []
    for q in stream["questions"]:
        e = events[q["answer_event"]] if q.get("answer_event") is not None else None
        if q["answer"] == UNKNOWN or e is None or e.get("value_start") is None:
            continue
        sentence = text[e["start"]:e["end"]]
        pos = (q["question"], sentence, (e["value_start"] - e["start"], e["value_end"] - e["start"]))
        others = list(dict.fromkeys([text[o["start"]:o["end"]] for o in events if o.get("attribute") != q.get("attribute")]
                                    + filler))
        agree = lexical_agreement(q["question"], others, True) if others else []
        order = sorted(range(len(others)), key=lambda i: (-agree[i], rng.random()))
        out.append([pos] + [(q["question"], others[i], None) for i in order[:negatives]])
    return out


def _target(tokenizer: Any, sentence: str, span: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
    """The value's (first, last) token among the sentence's tokens (as :func:`pair_ids` cuts them,
    1-based: 0 is the null), (0, 0) for no span; None when no token overlaps the span."""
    if span is None:
        return 0, 0
    offs = tokenizer(" " + sentence.strip(), add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    lead = len(sentence) - len(sentence.lstrip()) - 1  # char c of sentence is char c - lead of " " + stripped
    a0, a1 = span[0] - lead, span[1] - lead
    inside = [i for i, (c0, c1) in enumerate(offs) if c1 > a0 and c0 < a1]
    return (inside[0] + 1, inside[-1] + 1) if inside else None


@torch.no_grad()
def encode_pairs(model: Any, groups: list[list[tuple[str, str, Optional[tuple[int, int]]]]], batch: int = 16,
                 progress: bool = True) -> PairSet:
    """Every pair of ``groups`` read by the backbone once (batches of ``batch`` pairs): the pointer's
    input states at the null token and the sentence's tokens."""
    tok, layers = model.tokenizer, list(model.config.answer_layers)
    flat, kept = [], 0
    for group in groups:
        if _target(tok, group[0][1], group[0][2]) is None:
            continue  # the value does not start and end on token boundaries
        gold = group[0][1][group[0][2][0]:group[0][2][1]]
        flat += [(kept, q, s, _target(tok, s, span), gold if span else None) for q, s, span in group]
        kept += 1
    states, targets, tokens, owners, golds = [], [], [], [], []
    for i in tqdm(range(0, len(flat), batch), desc="pointer pairs", unit="batch", disable=not progress):
        part = flat[i:i + batch]
        encoded = [pair_ids(tok, q, s) for _, q, s, _, _ in part]
        ids, mask = model._right_pad([e for e, _ in encoded])
        feats, _ = pointer_features(model, ids, mask, layers)
        for r, ((ids_r, n), (owner, _, _, target, gold)) in enumerate(zip(encoded, part)):
            states.append(feats[r, n - 1:len(ids_r)].float().cpu())  # [1 + T, F]: the null, then the text
            targets.append(target)
            tokens.append([-1] + ids_r[n:])
            owners.append(owner)
            golds.append(gold)
    width = max(len(s) for s in states)
    out = PairSet(torch.zeros(len(states), width, states[0].shape[-1]), torch.zeros(len(states), width, dtype=torch.bool),
                  torch.tensor(targets), owners, golds, tokens)
    for k, s in enumerate(states):
        out.states[k, :len(s)], out.valid[k, :len(s)] = s, True
    return out


def _spans(head: Callable[[torch.Tensor], torch.Tensor], data: PairSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    text = data.valid.clone()
    text[:, 0] = False  # position 0 is the null
    with torch.no_grad():
        return best_spans(head(data.states), text, torch.zeros(len(text), dtype=torch.long))


def answer_accuracy(head: Callable[[torch.Tensor], torch.Tensor], data: PairSet,
                    decode: Callable[[list[int]], str]) -> float:
    """Share of questions whose best-margin answer over all their pairs (its ids ``decode``d) is the gold (exact match)."""
    start, end, margin = _spans(head, data)
    best: dict[int, tuple[float, str]] = {}
    for k, q in enumerate(data.question):
        answer = decode(data.ids[k][int(start[k]):int(end[k]) + 1])
        if q not in best or float(margin[k]) > best[q][0]:
            best[q] = (float(margin[k]), answer)
    gold = {q: g for q, g in zip(data.question, data.gold) if g is not None}
    return sum(exact_match(best[q][1], gold[q]) for q in gold) / max(1, len(gold))


def fit_pointer(train: PairSet, val: PairSet, decode: Callable[[list[int]], str], epochs: int = 12, lr: float = 1e-3,
                batch: int = 32, seed: int = 0) -> tuple[AnswerPointer, list[dict]]:
    """AdamW on start and end cross-entropy over the null and the sentence's tokens; keeps the
    epoch with the best validation :func:`answer_accuracy` (ties: the earlier one)."""
    torch.manual_seed(seed)
    head = AnswerPointer(train.states.shape[-1])
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    best, best_acc = copy.deepcopy(head.state_dict()), answer_accuracy(head, val, decode)
    log = [{"epoch": 0, "loss": None, "val_answer_em": best_acc}]
    for epoch in range(1, epochs + 1):
        total = 0.0
        for idx in torch.randperm(len(train.valid)).split(batch):
            logits = head(train.states[idx]).masked_fill(~train.valid[idx, :, None], -1e9)  # [b, T, 2]
            loss = F.cross_entropy(logits[..., 0], train.target[idx, 0]) + F.cross_entropy(logits[..., 1], train.target[idx, 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        acc = answer_accuracy(head, val, decode)
        log.append({"epoch": epoch, "loss": total / len(train.valid), "val_answer_em": acc})
        if acc > best_acc:
            best, best_acc = copy.deepcopy(head.state_dict()), acc
    head.load_state_dict(best)
    return head, log


def _parser():
    p = fit_parser("python -m memadapter.training.fit_pointer", __doc__, "answer pointer")
    p.add_argument("--layers", default="8,16,30", help="hidden states the pointer reads (indices as read_layer's)")
    p.add_argument("--negatives", type=int, default=2, help="negative sentences per question")
    p.add_argument("--sentences", type=int, default=4, help="read.answer_sentences of the saved adapter")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .generation_eval import _load_model, _model_dirs

    args = _parser().parse_args(argv)
    args.set = []
    train_specs, val_specs = parse_data(args.data, "--data"), parse_data(args.val_data, "--val-data")
    model = _load_model(args, *_model_dirs(args))
    model.config.answer_layers = [int(x) for x in args.layers.split(",")]
    model.config.validate_fields()
    rng, progress = random.Random(args.seed), not args.no_progress
    groups = lambda specs, seed: [g for s in build_streams(specs, seed, args.filler_tokens)
                                  for g in stream_pairs(s, args.negatives, rng)]
    train = encode_pairs(model, groups(train_specs, args.seed), progress=progress)
    val = encode_pairs(model, groups(val_specs, args.seed + 1), progress=progress)
    head, log = fit_pointer(train, val, model._decode, epochs=args.epochs, seed=args.seed)
    model.answer_pointer = head.to(model.device, model.dtype)
    model.config.read.answer_sentences = args.sentences
    model._fingerprint_cache = None
    model.save_pretrained(args.out)
    report = {"data": args.data, "val_data": args.val_data, "filler_tokens": args.filler_tokens,
              "layers": model.config.answer_layers, "negatives": args.negatives, "train_pairs": len(train.valid),
              "val_pairs": len(val.valid), "best_val_answer_em": max(r["val_answer_em"] for r in log), "log": log}
    with open(f"{args.out}/fit_pointer.json", "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "log"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
