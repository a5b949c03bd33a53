"""Refit a trained adapter's span tagger on broad data, from cached read-layer states.

The GroundingHead reads the frozen backbone's hidden states at ``read_layer``, so every training
chunk is read by the backbone once (:func:`collect_chunks`, cut exactly as ``ingest`` cuts it) and
the head is then trained for many epochs on the cached states in seconds per epoch. Only the layers
that decide *where* spans are and what they are trained (the context convolution, the tagger and
the event, lifecycle and confidence layers); the norm and the key and value projections, whose
space the query head, the slots and the reader share, stay as they are. The epoch is chosen on
validation streams by :func:`span_scores`' ``pair_f1`` (epoch 0 is the head as it was).

    python -m memadapter.training.fit_grounding --adapter modeling/adapters/smollm2-135m-prefix \\
        --out runs/smollm2_grounding --data open:train:150 --data lifecycle:train:60 \\
        --data counterfactual:train:60 --val-data open:val_unseen_templates:10 \\
        --val-data open:val_unseen_attributes:10 --val-data counterfactual:val_squad:10 --filler-tokens 1500

Example (plain tensors):
    >>> gold = [[((1, 3), (5, 6)), ((8, 9), None)]]
    >>> pred = [[((1, 3), (5, 6)), ((8, 10), None)]]
    >>> s = span_scores(pred, gold); s["pair_recall"], s["pair_f1"]
    (0.5, 0.5)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from memadapter.heads import IGNORE_INDEX, GroundingHead
from memadapter.spans import decode_pairs_batched

from .fit_reader import build_streams, fit_parser, fit_setup
from .labels import token_labels

Span = tuple[int, int]
Pair = tuple[Span, Optional[Span]]  # (key span, value span or None), chunk-relative, end exclusive
TRAINED = ("context", "tagger", "event", "confidence")  # GroundingHead layers refitted


@dataclass
class Chunk:
    """One ingest chunk of a labelled stream: read-layer states [T, H] (float16), tag / event /
    confidence targets [T], word starts [T] (None: ``snap_spans`` off) and its gold pairs."""

    hidden: torch.Tensor
    tags: torch.Tensor
    events: torch.Tensor
    confidence: torch.Tensor
    words: Optional[torch.Tensor]
    gold: list[Pair]


def _gold_pairs(labels: dict, start: int, end: int) -> list[Pair]:
    """The labelled events whose key starts in [start, end), as chunk-relative pairs."""
    out = []
    for (k0, k1), (v0, v1) in zip(labels["key_spans"], labels["value_spans"]):
        if start <= k0 < end and k1 <= end and (v0 < 0 or (start <= v0 and v1 <= end)):
            out.append(((k0 - start, k1 - start), None if v0 < 0 else (v0 - start, v1 - start)))
    return out


@torch.no_grad()
def collect_chunks(model: Any, streams: Iterable[dict], progress: bool = True) -> list[Chunk]:
    """Each stream tokenised with its labels, cut as ingest cuts it and read to the read layer once."""
    out = []
    for stream in tqdm(list(streams), desc="states", unit="stream", disable=not progress):
        labels = token_labels(stream, model.tokenizer)
        ids = labels["input_ids"]
        for s, e in model._chunk_bounds(ids):
            ids_t, mask = model._right_pad([ids[s:e]])
            words = model._word_marks([ids[s:e]])
            out.append(Chunk(model._hidden(ids_t, mask)[0].to(torch.float16).cpu(),
                             torch.tensor(labels["tag_ids"][s:e]), torch.tensor(labels["event_targets"][s:e]),
                             torch.tensor(labels["confidence_targets"][s:e], dtype=torch.float32),
                             None if words is None else torch.tensor(words[0]), _gold_pairs(labels, s, e)))
    return out


def save_chunks(chunks: Sequence[Chunk], path: str) -> None:
    """``chunks`` as one safetensors file (states, targets and word starts concatenated; lengths and
    gold pairs beside them), so a second fit skips the backbone."""
    cat = {name: torch.cat([getattr(c, name) for c in chunks]) for name in ("hidden", "tags", "events", "confidence")}
    if chunks and chunks[0].words is not None:
        cat["words"] = torch.cat([c.words for c in chunks])
    cat["lengths"] = torch.tensor([len(c.tags) for c in chunks], dtype=torch.long)
    save_file(cat, path, metadata={"gold": json.dumps([c.gold for c in chunks])})


def load_chunks(path: str) -> list[Chunk]:
    """What :func:`save_chunks` wrote (never unpickles)."""
    with safe_open(path, "pt") as f:
        gold = json.loads(f.metadata()["gold"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    cuts = [0] + t["lengths"].cumsum(0).tolist()
    out = []
    for i, g in enumerate(gold):
        part = {k: v[cuts[i]:cuts[i + 1]] for k, v in t.items() if k != "lengths"}
        out.append(Chunk(part["hidden"], part["tags"], part["events"], part["confidence"], part.get("words"),
                         [(tuple(k), None if v is None else tuple(v)) for k, v in g]))
    return out


def _batch(chunks: Sequence[Chunk]) -> tuple[torch.Tensor, ...]:
    """Right-padded hidden [B, T, H] (float32), mask [B, T], tags, events [B, T] (-100 padded), confidence [B, T]."""
    T = max(c.hidden.shape[0] for c in chunks)
    B, H = len(chunks), chunks[0].hidden.shape[1]
    hidden = torch.zeros(B, T, H)
    mask = torch.zeros(B, T, dtype=torch.bool)
    tags = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    events = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    conf = torch.full((B, T), float("nan"))
    for b, c in enumerate(chunks):
        n = c.hidden.shape[0]
        hidden[b, :n], mask[b, :n], tags[b, :n], events[b, :n], conf[b, :n] = c.hidden.float(), True, c.tags, c.events, c.confidence
    return hidden, mask, tags, events, conf


@torch.no_grad()
def propose_pairs(head: GroundingHead, chunks: Sequence[Chunk], batch: int = 16) -> list[list[Pair]]:
    """The pairs ingest would decode from ``head``'s tags in each chunk (word snapping as the chunk says)."""
    out = []
    for i in range(0, len(chunks), batch):
        part = chunks[i:i + batch]
        hidden, mask = _batch(part)[:2]
        tags = head(hidden, mask).tag_logits.argmax(-1)  # [B, T]
        words = None
        if part[0].words is not None:
            words = torch.ones_like(mask)  # padding begins words, as ingest pads its marks
            for b, c in enumerate(part):
                words[b, :len(c.words)] = c.words
        ks, vs, has_value, cmask = decode_pairs_batched(tags, mask.sum(-1), words)
        for b in range(len(part)):
            n = int(cmask[b].sum())
            out.append([((int(ks[b, j, 0]), int(ks[b, j, 1])),
                         (int(vs[b, j, 0]), int(vs[b, j, 1])) if bool(has_value[b, j]) else None) for j in range(n)])
    return out


def span_scores(pred: Sequence[Sequence[Pair]], gold: Sequence[Sequence[Pair]]) -> dict:
    """Exact-span agreement over chunks: ``key_recall`` / ``key_precision`` (key spans),
    ``value_recall`` (gold values that some proposal carries exactly), ``pair_recall`` (gold
    events proposed with exactly their key and value, or no value when they have none) and
    ``pair_f1`` (the same hits against gold and proposals: a spurious proposal costs, as it
    costs ingest a slot)."""
    n_gold = n_pred = keys_hit = keys_right = vals = vals_hit = pairs_hit = 0
    for p, g in zip(pred, gold):
        pk, gk = {k for k, _ in p}, {k for k, _ in g}
        pv = {v for _, v in p if v is not None}
        n_gold, n_pred = n_gold + len(g), n_pred + len(p)
        keys_hit += len(gk & pk)
        keys_right += sum(k in gk for k, _ in p)
        vals += sum(v is not None for _, v in g)
        vals_hit += sum(v is not None and v in pv for _, v in g)
        pairs_hit += len(set(g) & set(p))
    return {"gold": n_gold, "proposed": n_pred, "key_recall": keys_hit / max(1, n_gold),
            "key_precision": keys_right / max(1, n_pred), "value_recall": vals_hit / max(1, vals),
            "pair_recall": pairs_hit / max(1, n_gold), "pair_f1": 2 * pairs_hit / max(1, n_gold + n_pred)}


def fit_head(head: GroundingHead, train: Sequence[Chunk], val: Sequence[Chunk], epochs: int = 8, lr: float = 1e-3,
             batch: int = 16, seed: int = 0, progress: bool = True) -> tuple[GroundingHead, list[dict]]:
    """Adam on ``GroundingHead.loss`` over the :data:`TRAINED` layers of a copy of ``head``; keeps the
    epoch with the best validation ``pair_f1`` (epoch 0: ``head`` as given; ties keep the earlier).
    Spurious spans count against it because each one can take a slot."""
    head = copy.deepcopy(head).float()
    for name, p in head.named_parameters():
        p.requires_grad_(name.split(".")[0] in TRAINED)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    gold = [c.gold for c in val]
    best_score = span_scores(propose_pairs(head, val), gold)
    best, log = copy.deepcopy(head.state_dict()), [{"epoch": 0, "loss": None, **best_score}]
    g = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        head.train()
        order, total = torch.randperm(len(train), generator=g).tolist(), 0.0
        for i in tqdm(range(0, len(order), batch), desc=f"epoch {epoch}", disable=not progress, leave=False):
            hidden, mask, tags, events, conf = _batch([train[j] for j in order[i:i + batch]])
            loss = head.loss(head(hidden, mask), tags, events, conf)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        head.eval()
        score = span_scores(propose_pairs(head, val), gold)
        log.append({"epoch": epoch, "loss": total / max(1, -(-len(order) // batch)), **score})
        if progress:
            print(json.dumps(log[-1]), file=sys.stderr)
        if score["pair_f1"] > best_score["pair_f1"]:
            best, best_score = copy.deepcopy(head.state_dict()), score
    head.load_state_dict(best)
    return head, log


def _parser() -> argparse.ArgumentParser:
    p = fit_parser("python -m memadapter.training.fit_grounding", __doc__, "refitted tagger")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--cache", default=None, help="folder for the read states (train/val .safetensors); reused when present")
    return p


def _chunks(model: Any, cache: Optional[str], spec: tuple[str, str, int], seed: int, filler: Optional[int],
            progress: bool) -> list[Chunk]:
    """One (builder, split, streams) spec's chunks, read from ``cache`` when it holds them (the file
    name says the spec, seed and filler length, so a changed spec never reads stale states)."""
    name = f"{spec[0]}_{spec[1]}_{spec[2]}_seed{seed}_filler{filler}.safetensors"
    path = None if cache is None else os.path.join(cache, name)
    if path and os.path.exists(path):
        return load_chunks(path)
    chunks = collect_chunks(model, build_streams([spec], seed, filler), progress)
    if path:
        os.makedirs(cache, exist_ok=True)
        save_chunks(chunks, path)
    return chunks


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    model, train_specs, val_specs = fit_setup(args)
    progress = not args.no_progress
    train = [c for spec in train_specs for c in _chunks(model, args.cache, spec, args.seed, args.filler_tokens, progress)]
    val_parts = {":".join(map(str, spec)): _chunks(model, args.cache, spec, args.seed + 1, args.filler_tokens, progress)
                 for spec in val_specs}
    val = [c for part in val_parts.values() for c in part]
    before = {name: span_scores(propose_pairs(model.grounding, part), [c.gold for c in part])
              for name, part in val_parts.items()}
    head, log = fit_head(model.grounding, train, val, epochs=args.epochs, lr=args.lr, seed=args.seed, progress=progress)
    after = {name: span_scores(propose_pairs(head, part), [c.gold for c in part]) for name, part in val_parts.items()}
    model.grounding.load_state_dict(head.state_dict())
    model.save_pretrained(args.out)
    report = {"data": args.data, "val_data": args.val_data, "filler_tokens": args.filler_tokens, "epochs": args.epochs,
              "lr": args.lr, "train_chunks": len(train), "val_chunks": len(val), "trained": list(TRAINED),
              "val_before": before, "val_after": after, "log": log}
    with open(f"{args.out}/fit_grounding.json", "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "log"} | {"chosen": max(
        log, key=lambda r: (r["pair_f1"], -r["epoch"]))}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
