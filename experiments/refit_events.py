"""Refit a trained adapter's event-type layer (new / update / retract / irrelevant) on its own
candidates' pooled features, everything else frozen.

The joint training reads event types token by token, and a retraction is the rarest event and the
only one without a value, so the GroundingHead types some retractions as updates or new facts
(the SmolLM2 prefix adapter: 136/150 on validation streams, against 99%+ for the other types),
and a retraction typed so writes no tombstone. The event layer is linear and the head mean-pools its logits over a
candidate's tokens, so pooling the head's features first and fitting the layer on those pooled
vectors is exact: a class-balanced logistic regression, started from the trained weights, over
the frozen backbone's hidden states of training-split streams (read chunk by chunk as ``ingest``
reads them). ``--type-reads-relation`` also widens a value-less candidate's pooled tokens to its
relation region (``GroundingHead.type_spans``): the words after a retraction's key.

    python -m experiments.refit_events --adapter modeling/adapters/smollm2-135m-prefix \\
        --out runs/refit_events --num-streams 300 --type-reads-relation

Measured there (docs/RESULTS.md, seventh step): retractions 149/150, but the write controller,
trained on the old event probabilities, then writes differently and dev answers dropped.
``--lifecycle`` therefore fits a second layer that only types the memory operation (tombstone or
write) and leaves the controller's inputs as trained (``MemAdapterConfig.lifecycle_typing``).
"""

from __future__ import annotations

import argparse
import copy
import random
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memadapter.heads import EVENT_TYPES, pool_spans

from memadapter.training.labels import token_labels
from memadapter.training.lifecycle_data import SPLIT_DEFAULTS, build_dataset


def pooled_events(model: Any, streams: Sequence[dict], progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Each labelled event of ``streams`` that lies inside one ``chunk_tokens`` chunk -> the head's
    features pooled over the event's type span (gold key and value spans), and its type.
    Returns X [N, F] float32 and y [N] long."""
    head, chunk = model.grounding, model.config.chunk_tokens
    xs, ys = [], []
    for stream in tqdm(streams, desc="pooling events", disable=not progress):
        lab = token_labels(stream, model.tokenizer)
        ids = lab["input_ids"]
        for c0 in range(0, len(ids), chunk):
            row = ids[c0 : c0 + chunk]
            keys, values, types = [], [], []
            for k, v, t in zip(lab["key_spans"], lab["value_spans"], lab["event_types"]):
                v = k if v[0] < 0 else v  # a key without a value pools from its key, as propose does
                if k[0] >= c0 and max(k[1], v[1]) <= c0 + len(row):
                    keys.append([k[0] - c0, k[1] - c0]), values.append([v[0] - c0, v[1] - c0]), types.append(t)
            if not keys:
                continue
            t = torch.tensor([row], device=model._device())
            mask = torch.ones_like(t, dtype=torch.bool)
            with torch.no_grad():
                h = head.features(model._hidden(t, mask.long()), mask)[0]  # [T, F]
                spans = head.type_spans(torch.tensor(keys, device=h.device), torch.tensor(values, device=h.device), len(row))
                xs.append(pool_spans(h, spans).float().cpu())  # [n, F]
            ys.extend(types)
    if not xs:
        return torch.zeros(0, head.event.in_features), torch.zeros(0, dtype=torch.long)
    return torch.cat(xs), torch.tensor(ys, dtype=torch.long)


def typing_report(model: Any, streams: Sequence[dict], progress: bool = True) -> dict[str, dict[str, int]]:
    """How the head types the labelled events of ``streams`` as ``ingest`` reads them (chunk by chunk,
    its own spans): gold type -> {predicted type, or "none" when no candidate's key overlaps the
    event's key: count}."""
    chunk, report = model.config.chunk_tokens, {}
    for stream in tqdm(streams, desc="typing report", disable=not progress):
        lab = token_labels(stream, model.tokenizer)
        ids, found = lab["input_ids"], []
        for c0 in range(0, len(ids), chunk):
            row = ids[c0 : c0 + chunk]
            t = torch.tensor([row], device=model._device())
            with torch.no_grad():
                cands = model._propose(model._hidden(t, torch.ones_like(t)), torch.ones_like(t), [row])[0]
            found += [(c0 + c.key_span[0], c0 + c.key_span[1], EVENT_TYPES[c.event_type]) for c in cands]
        for (k0, k1), t in zip(lab["key_spans"], lab["event_types"]):
            pred = next((p for s, e, p in found if s < k1 and e > k0), "none")
            row = report.setdefault(EVENT_TYPES[t], {})
            row[pred] = row.get(pred, 0) + 1
    return report


def class_accuracy(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> dict[str, str]:
    """Per event type: right / total, as text."""
    with torch.no_grad():
        pred = layer(x.to(layer.weight)).argmax(-1).cpu()
    return {name: f"{int(((pred == i) & (y == i)).sum())}/{int((y == i).sum())}"
            for i, name in enumerate(EVENT_TYPES) if int((y == i).sum())}


def fit_event_layer(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, steps: int = 300, lr: float = 1e-2,
                    progress: bool = True) -> torch.nn.Linear:
    """Full-batch Adam on class-balanced cross-entropy, from the layer's current weights (in place)."""
    counts = torch.bincount(y, minlength=layer.out_features).float()
    weight = (counts.sum() / (counts.clamp_min(1) * int((counts > 0).sum()))).to(layer.weight)  # balanced
    x, y = x.to(layer.weight), y.to(layer.weight.device)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in tqdm(range(steps), desc="fitting the event layer", disable=not progress):
        opt.zero_grad()
        F.cross_entropy(layer(x), y, weight=weight).backward()
        opt.step()
    return layer


def add_lifecycle_layer(model: Any) -> torch.nn.Linear:
    """Give ``model`` a lifecycle event layer (``config.lifecycle_typing``) started as a copy of its
    trained event layer, which stays as it is for the WriteController. Returns the new layer."""
    layer = copy.deepcopy(model.grounding.event)
    model.grounding.lifecycle_event, model.config.lifecycle_typing = layer, True
    return layer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.refit_events", description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="trained adapter directory")
    p.add_argument("--out", required=True, help="directory for the refit adapter")
    p.add_argument("--base", default=None, help="base model directory (default: the cached SmolLM2)")
    p.add_argument("--num-streams", type=int, default=300, help="training-split streams (10%% held out)")
    p.add_argument("--seed", type=int, default=1, help="stream seed (the adapter's training used 0)")
    p.add_argument("--synthetic-names", type=float, default=0.5)
    p.add_argument("--filler-tokens", type=int, default=512)
    p.add_argument("--report-streams", type=int, default=150,
                   help="validation-split streams (200 filler tokens) whose typing is reported before and after")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--type-reads-relation", action="store_true", help="pool a value-less event over its relation region")
    p.add_argument("--lifecycle", action="store_true",
                   help="fit a second event layer that types the memory operation only; the WriteController keeps "
                        "reading the trained event layer (config lifecycle_typing)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from memadapter.training import generation_eval as ge

    args = _parser().parse_args(argv)
    if args.num_streams < 10 or args.steps < 1:
        raise SystemExit("--num-streams must be >= 10 and --steps >= 1")
    base, adapter = ge._model_dirs(argparse.Namespace(adapter=args.adapter, base=args.base))
    model = ge._load_model(argparse.Namespace(set=[], dtype="float32", device=None), base, adapter)
    report = list(build_dataset("validation", args.report_streams, args.seed,
                                **dict(SPLIT_DEFAULTS["validation"], filler_tokens=200)))
    print("validation typing, as loaded:", typing_report(model, report, not args.no_progress))
    model.grounding.type_reads_relation = model.config.type_reads_relation = args.type_reads_relation
    if args.lifecycle:
        add_lifecycle_layer(model)
    shape = dict(SPLIT_DEFAULTS["train"], filler_tokens=args.filler_tokens, synthetic_names=args.synthetic_names)
    streams = list(build_dataset("train", args.num_streams, args.seed, **shape))
    random.Random(args.seed).shuffle(streams)
    held = len(streams) // 10
    x_fit, y_fit = pooled_events(model, streams[held:], not args.no_progress)
    x_held, y_held = pooled_events(model, streams[:held], not args.no_progress)
    layer = model.grounding.lifecycle_event if args.lifecycle else model.grounding.event
    print("held-out events, before:", class_accuracy(layer, x_held, y_held))
    fit_event_layer(layer, x_fit, y_fit, args.steps, args.lr, not args.no_progress)
    print("held-out events, after: ", class_accuracy(layer, x_held, y_held))
    print("fit events, after:      ", class_accuracy(layer, x_fit, y_fit))
    print("validation typing, after: ", typing_report(model, report, not args.no_progress))
    model.save_pretrained(args.out)
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
