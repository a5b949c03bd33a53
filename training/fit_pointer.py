"""Fit an answer pointer (``memadapter.answer_pointer``) onto a trained adapter.

Each question of the training streams gives pairs of (question, sentence). An answerable one's
positive is the sentence of its answer event, the value's span as the target; a withdrawn one's is
the retraction, with no span and the withdrawal target, then the sentences of the fact's earlier
versions (read alone, each answers it). Then come up to ``--negatives`` other sentences of its stream
(facts about other attributes, real filler), those sharing most words with the question first, and
every retraction of another fact: their target is the null position, and they withdraw nothing.
Every pair is read by the frozen backbone once (:func:`encode_pairs`, the read path's
:func:`~memadapter.modeling.read_answers.pair_ids`); the head is then trained on the cached states.
The epoch is chosen on validation streams by ``question_accuracy`` (:func:`question_accuracy`; epoch
0 is the untrained head). The adapter is saved with the pointer, ``answer_layers`` and
``read.answer_sentences``; refit its reader afterwards (``memadapter.training.fit_reader``), since the
pointer adds entries to every pool.

    python -m memadapter.training.fit_pointer --adapter modeling/adapters/smollm2-135m-prefix \\
        --out runs/pointer --data open:train:60 --data lifecycle:train:30 --data counterfactual:train:60 \\
        --val-data open:val_unseen_templates:12 --val-data counterfactual:val_squad:12 --filler-tokens 400

Example (plain tensors: question 0 asks for "a b", question 1 was withdrawn):
    >>> logits = torch.full((3, 4, 3), -5.0)
    >>> logits[0, 2, 0] = logits[0, 3, 1] = 5.0; logits[1, 0, :2] = 5.0; logits[2, 3, 2] = 5.0
    >>> data = PairSet(logits, torch.ones(3, 4, dtype=torch.bool), torch.tensor([[2, 3], [0, 0], [0, 0]]),
    ...                torch.tensor([0.0, 0.0, 1.0]), [0, 0, 1], ["a b", None, None], [[-1, 7, 8, 9]] * 3)
    >>> words = {7: "x", 8: "a", 9: "b"}
    >>> question_accuracy(lambda h: h, data, lambda ids: " ".join(words[i] for i in ids))
    1.0
"""

from __future__ import annotations

import copy
import random
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memadapter.answer_pointer import AnswerPointer, best_spans, withdraws
from memadapter.bm25 import lexical_agreement
from memadapter.modeling.read_answers import pair_ids, pointer_features

from .answer_scoring import exact_match
from .filler import split_sentences
from .fit_reader import build_streams, fit_parser, fit_setup, save_report
from .lifecycle_data import UNKNOWN


Pair = tuple[str, str, Optional[tuple[int, int]], bool]  # question, sentence, value char span (None: none), withdraws


@dataclass
class PairSet:
    """Cached pairs: states [P, T, F] (position 0 the null token, then the sentence's tokens),
    valid [P, T], target (start, end) [P, 2] (0, 0: no answer here), withdraw [P] (1.0: the
    sentence withdraws the asked fact), the question each pair belongs to [P], the question's gold
    text on its answer pair (else None) and the token id at each position (-1 at the null)."""

    states: torch.Tensor
    valid: torch.Tensor
    target: torch.Tensor
    withdraw: torch.Tensor
    question: list[int]
    gold: list[Optional[str]]
    ids: list[list[int]]


def _fact(e: dict) -> tuple:
    return e.get("entity"), e.get("attribute")


def filler_sentences(stream: dict) -> list[str]:
    """The sentences of ``stream``'s text outside every event's span, of at least 4 words."""
    text, gaps, prev = stream["text"], [], 0
    for a, b in sorted((e["start"], e["end"]) for e in stream["events"]):
        gaps.append(text[prev:a])
        prev = max(prev, b)
    return [s for s in split_sentences(" ".join(gaps + [text[prev:]])) if len(s.split()) >= 4]


def stream_pairs(stream: dict, negatives: int, rng: random.Random) -> list[list[Pair]]:
    """Per question of ``stream`` with an answer event: its pairs (module docstring), positives first."""
    text, events = stream["text"], stream["events"]
    filler = filler_sentences(stream)
    sentence = lambda e: text[e["start"]:e["end"]]
    span = lambda e: (e["value_start"] - e["start"], e["value_end"] - e["start"])
    out = []
    for q in stream["questions"]:
        e = events[q["answer_event"]] if q.get("answer_event") is not None else None
        if e is None:
            continue
        if q["answer"] == UNKNOWN and e["event_type"] == "retract":
            earlier = [o for o in events if _fact(o) == _fact(e) and o["start"] < e["start"]
                       and o["event_type"] in ("new", "update") and o.get("value_start") is not None]
            positives = [(q["question"], sentence(e), None, True)] + [(q["question"], sentence(o), span(o), False) for o in earlier]
        elif q["answer"] != UNKNOWN and e.get("value_start") is not None:
            positives = [(q["question"], sentence(e), span(e), False)]
        else:
            continue
        others = list(dict.fromkeys([sentence(o) for o in events if o.get("attribute") != q.get("attribute")] + filler))
        agree = lexical_agreement(q["question"], others, True) if others else []
        order = sorted(range(len(others)), key=lambda i: (-agree[i], rng.random()))
        chosen = [others[i] for i in order[:negatives]]
        chosen += [sentence(o) for o in events if o["event_type"] == "retract" and _fact(o) != _fact(e)
                   and sentence(o) not in chosen]
        out.append(positives + [(q["question"], s, None, False) for s in chosen])
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
def encode_pairs(model: Any, groups: list[list[Pair]], batch: int = 16, progress: bool = True) -> PairSet:
    """Every pair of ``groups`` read by the backbone once (batches of ``batch`` pairs): the pointer's
    input states at the null token and the sentence's tokens. A group whose first pair's value does
    not start and end on token boundaries is left out, and so is any other pair of that kind."""
    tok, layers = model.tokenizer, list(model.config.answer_layers)
    flat, kept = [], 0
    for group in groups:
        targets = [_target(tok, s, span) for _, s, span, _ in group]
        if targets[0] is None:
            continue
        question, sentence, span, _ = group[0]
        gold = sentence[span[0]:span[1]] if span else None
        flat += [(kept, q, s, t, gold if k == 0 else None, w) for k, ((q, s, _, w), t) in enumerate(zip(group, targets))
                 if t is not None]
        kept += 1
    states, tokens = [], []
    for i in tqdm(range(0, len(flat), batch), desc="pointer pairs", unit="batch", disable=not progress):
        encoded = [pair_ids(tok, q, s) for _, q, s, _, _, _ in flat[i:i + batch]]
        ids, mask = model._right_pad([e for e, _ in encoded])
        feats, _ = pointer_features(model, ids, mask, layers)
        for r, (ids_r, n) in enumerate(encoded):
            states.append(feats[r, n - 1:len(ids_r)].float().cpu())  # [1 + T, F]: the null, then the text
            tokens.append([-1] + ids_r[n:])
    width = max(len(s) for s in states)
    out = PairSet(torch.zeros(len(states), width, states[0].shape[-1]), torch.zeros(len(states), width, dtype=torch.bool),
                  torch.tensor([p[3] for p in flat]), torch.tensor([float(p[5]) for p in flat]),
                  [p[0] for p in flat], [p[4] for p in flat], tokens)
    for k, s in enumerate(states):
        out.states[k, :len(s)], out.valid[k, :len(s)] = s, True
    return out


def _read(head: Callable[[torch.Tensor], torch.Tensor], data: PairSet) -> tuple[torch.Tensor, ...]:
    """(start, end, margin, withdrawal score) per pair."""
    text = data.valid.clone()
    text[:, 0] = False  # position 0 is the null
    with torch.no_grad():
        logits = head(data.states)
        return (*best_spans(logits[..., :2], text, torch.zeros(len(text), dtype=torch.long)), withdraws(logits, text))


def question_accuracy(head: Callable[[torch.Tensor], torch.Tensor], data: PairSet,
                      decode: Callable[[list[int]], str]) -> float:
    """Share of questions read right from all their pairs: a withdrawn one when some pair's
    withdrawal score is above 0; an answerable one when none is and the best-margin answer (its ids
    ``decode``d) is the gold (exact match)."""
    start, end, margin, withdrawal = _read(head, data)
    best: dict[int, tuple[float, str]] = {}
    fired: dict[int, bool] = {}
    withdrawn: dict[int, bool] = {}
    for k, q in enumerate(data.question):
        answer = decode(data.ids[k][int(start[k]):int(end[k]) + 1])
        if q not in best or float(margin[k]) > best[q][0]:
            best[q] = (float(margin[k]), answer)
        fired[q] = fired.get(q, False) or float(withdrawal[k]) > 0
        withdrawn[q] = withdrawn.get(q, False) or bool(data.withdraw[k] > 0)
    gold = {q: g for q, g in zip(data.question, data.gold) if g is not None}
    right = [fired[q] if withdrawn[q] else (not fired[q] and q in gold and exact_match(best[q][1], gold[q])) for q in best]
    return sum(right) / max(1, len(right))


def _loss(head: AnswerPointer, data: PairSet, idx: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Start and end cross-entropy over the null and the sentence's tokens, plus the withdrawal's
    binary cross-entropy at the last token (positives weighted by ``pos_weight``)."""
    valid = data.valid[idx]
    logits = head(data.states[idx]).masked_fill(~valid[:, :, None], -1e9)  # [b, T, 3]
    last = valid.sum(-1) - 1  # [b]
    withdraw = logits[torch.arange(len(idx)), last, 2]
    return (F.cross_entropy(logits[..., 0], data.target[idx, 0]) + F.cross_entropy(logits[..., 1], data.target[idx, 1])
            + F.binary_cross_entropy_with_logits(withdraw, data.withdraw[idx], pos_weight=pos_weight))


def fit_pointer(train: PairSet, val: PairSet, decode: Callable[[list[int]], str], epochs: int = 12, lr: float = 1e-3,
                batch: int = 32, seed: int = 0) -> tuple[AnswerPointer, list[dict]]:
    """AdamW on :func:`_loss` (withdrawals weighted to balance the classes); keeps the epoch with
    the best validation :func:`question_accuracy` (ties: the earlier one)."""
    torch.manual_seed(seed)
    head = AnswerPointer(train.states.shape[-1])
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    positives = float(train.withdraw.sum())
    pos_weight = torch.tensor((len(train.withdraw) - positives) / max(1.0, positives))
    best, best_acc = copy.deepcopy(head.state_dict()), question_accuracy(head, val, decode)
    log = [{"epoch": 0, "loss": None, "val_question_accuracy": best_acc}]
    for epoch in range(1, epochs + 1):
        total = 0.0
        for idx in torch.randperm(len(train.valid)).split(batch):
            loss = _loss(head, train, idx, pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        acc = question_accuracy(head, val, decode)
        log.append({"epoch": epoch, "loss": total / len(train.valid), "val_question_accuracy": acc})
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
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    model, train_specs, val_specs = fit_setup(args)
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
              "val_pairs": len(val.valid), "withdrawn_train_pairs": int(train.withdraw.sum()),
              "best_val_question_accuracy": max(r["val_question_accuracy"] for r in log), "log": log}
    save_report(args.out, "fit_pointer", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
