"""Fit the injector of a trained adapter to say, whole, the value the read selects.

``select`` hands the injector one entry per question: a value vector and the value's own tokens
(``value_tokens``), which the frozen backbone is meant to copy. The injector was trained with the
heads on lifecycle streams, whose values are mostly one word or one code; on open text it often
says the first word of a longer value ("Quaibrobek" for "Quaibrobek Logistics", "4.6" for "4.6 m")
or runs on past it. Here each stream is ingested once, each question gets the selection the read
makes, and the injector alone is trained, teacher-forced, to answer the question with that entry's
value text and stop (EOS), as the training collator lays a question out. The target is what was
*selected*, never the gold answer: choosing is the reader's job, saying it the injector's. Entries
with nothing to say (a retrieved chunk's summary) are left out; a withdrawn one says "unknown".
The epoch is chosen on validation streams by the exact-copy rate: every answer token, EOS
included, is the argmax under teacher forcing, which is what greedy decoding then generates.

    python -m memadapter.training.fit_injector --adapter modeling/adapters/smollm2-135m-prefix \\
        --out runs/injector_v7 --data open:train:40 --data lifecycle:train:20 --data counterfactual:train:40 \\
        --val-data open:val_unseen_templates:6 --val-data counterfactual:val_squad:6 --filler-tokens 400

``--injection cross_attn --cross-attn-layers 10,20`` fits a fresh cross-attention injector (gate 0,
the identity) in place of the adapter's own: the same heads, reader and pointer, another way in.

Example (plain tensors):
    >>> labels = torch.tensor([[-100, 5, 2], [-100, 7, 2]])
    >>> logits = torch.zeros(2, 3, 9); logits[0, 0, 5] = logits[0, 1, 2] = logits[1, 0, 7] = 1.0
    >>> exact_copies(logits, labels).tolist()  # row 1 misses its EOS
    [True, False]
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from memadapter.errors import ConfigError

from .fit_reader import build_streams, fit_parser, fit_setup, save_report
from .generation_eval import question_ids
from .lifecycle_data import UNKNOWN
from .losses import IGNORE_INDEX, answer_loss


@dataclass
class CopyExample:
    """One question and what the read selected for it: values [K, dv], valid [K], value_ids
    [K, value_tokens] (-1 = none), and the token ids of question + " target" + EOS with how many
    lead tokens are the question."""

    values: torch.Tensor
    valid: torch.Tensor
    value_ids: torch.Tensor
    ids: list[int]
    question_tokens: int
    target: str


def selected_value(text: str) -> Optional[str]:
    """An injected entry's text ("key: value") -> what the answer should say: the value, "unknown"
    for a withdrawn entry, None for an entry without a value (a chunk summary).

    >>> selected_value("Alice's city: Paris"), selected_value("the code: no longer known"), selected_value("a chunk")
    ('Paris', 'unknown', None)
    """
    from memadapter.modeling.read_injection import WITHDRAWN

    if ": " not in text:
        return None
    value = text.rsplit(": ", 1)[-1].strip()
    return UNKNOWN if value == WITHDRAWN else value or None


def exact_copies(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] bool: every labelled token (shifted, as :func:`answer_loss` reads them) is the argmax.
    logits [B, T, V], labels [B, T] with ``IGNORE_INDEX`` where nothing is scored."""
    pred, gold = logits[:, :-1].argmax(-1), labels[:, 1:]  # [B, T-1]: position t predicts token t+1
    scored = gold != IGNORE_INDEX
    return ((pred == gold) | ~scored).all(-1) & scored.any(-1)


@torch.no_grad()
def collect_examples(model: Any, streams: Iterable[dict], progress: bool = True) -> list[CopyExample]:
    """Ingest each stream once; per question, the selection ``select`` makes and its answer row."""
    tok, out = model.tokenizer, []
    device = next(model.backbone.parameters()).device
    eos = tok.eos_token_id
    for stream in tqdm(list(streams), desc="selections", unit="stream", disable=not progress):
        memory = model.new_memory()
        model.ingest(memory, stream["text"], progress=False)
        snapshot = memory.snapshot()
        for q in stream["questions"]:
            memory.restore(snapshot)
            question = question_ids(tok, q["question"])
            ids = torch.tensor([question], device=device)  # [1, T]
            sel = model.select(memory, ids, torch.ones_like(ids))
            target = selected_value(sel.texts[0][0]) if sel.texts[0] else None
            if target is None or sel.value_ids is None:
                continue
            answer = list(tok(" " + target, add_special_tokens=False)["input_ids"]) + ([eos] if eos is not None else [])
            out.append(CopyExample(sel.values[0].float().cpu(), sel.valid[0].cpu(), sel.value_ids[0].cpu(),
                                   question + answer, len(question), target))
    return out


def _stack_entries(tensors: Sequence[torch.Tensor], fill: float) -> torch.Tensor:
    """[K_i, ...] each -> [B, max K_i, ...], ``fill`` after each row's own entries: a selection
    holds one entry (an event) or several (slots, a chunk row), so rows differ in K."""
    k = max(t.shape[0] for t in tensors)
    out = torch.full((len(tensors), k, *tensors[0].shape[1:]), fill, dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, :t.shape[0]] = t
    return out


def batch_of(examples: Sequence[CopyExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (answer tokens only) [B, T]; the
    selections stacked: values [B, K, dv], valid [B, K], value_ids [B, K, L] (K: the most entries
    of a row; the others padded with invalid entries that have no value tokens)."""
    T = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), T, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        mask[i, :len(e.ids)] = 1
        labels[i, e.question_tokens:len(e.ids)] = torch.tensor(e.ids[e.question_tokens:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "values": _stack_entries([e.values for e in examples], 0.0),
            "valid": _stack_entries([e.valid for e in examples], False),
            "value_ids": _stack_entries([e.value_ids for e in examples], -1)}


def _forward(model: Any, batch: dict) -> torch.Tensor:
    device = next(model.backbone.parameters()).device
    b = {k: v.to(device) for k, v in batch.items()}
    return model.forward_with_values(b["input_ids"], b["attention_mask"], b["values"], b["valid"],
                                     value_ids=b["value_ids"]).logits


@torch.no_grad()
def copy_rate(model: Any, examples: Sequence[CopyExample], batch_size: int = 16) -> float:
    """Share of examples whose whole answer (EOS included) is the greedy argmax."""
    pad, hits = model.tokenizer.pad_token_id or 0, 0
    for i in range(0, len(examples), batch_size):
        batch = batch_of(examples[i:i + batch_size], pad)
        hits += int(exact_copies(_forward(model, batch).float().cpu(), batch["labels"]).sum())
    return hits / max(1, len(examples))


def injector_parameters(model: Any) -> list[torch.nn.Parameter]:
    """The trainable tensors of the injector's modules (prefix: ``injector``; cross-attention:
    ``cross_attn`` and ``value_token_proj``); ConfigError for an injector with none (text)."""
    params = [p for name in model._injection_modules for p in getattr(model, name).parameters()]
    if not params:
        raise ConfigError(f"injection: {model.config.injection!r} has no trained module to fit")
    return params


def fit_injector(model: Any, train: Sequence[CopyExample], val: Sequence[CopyExample], epochs: int = 4,
                 lr: float = 1e-3, batch_size: int = 16, seed: int = 0, progress: bool = True) -> list[dict]:
    """Adam on the answer tokens' cross-entropy, injector parameters only; keeps the epoch with the
    best validation copy rate (epoch 0 = the adapter as loaded; ties: the earlier one)."""
    params = injector_parameters(model)
    before = {id(p): p.requires_grad for p in model.parameters()}
    trainable = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    try:
        opt = torch.optim.Adam(params, lr=lr)
        rng, pad = random.Random(seed), model.tokenizer.pad_token_id or 0
        device = next(model.backbone.parameters()).device
        best_rate = copy_rate(model, val, batch_size)
        best = [p.detach().clone() for p in params]
        log = [{"epoch": 0, "loss": None, "val_copy_rate": best_rate}]
        for epoch in range(1, epochs + 1):
            order, total = list(range(len(train))), 0.0
            rng.shuffle(order)
            steps = range(0, len(order), batch_size)
            for i in tqdm(steps, desc=f"epoch {epoch}", unit="batch", disable=not progress):
                batch = batch_of([train[j] for j in order[i:i + batch_size]], pad)
                loss = answer_loss(_forward(model, batch), batch["labels"].to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
            rate = copy_rate(model, val, batch_size)
            log.append({"epoch": epoch, "loss": total / max(1, len(steps)), "val_copy_rate": rate})
            if rate > best_rate:
                best_rate, best = rate, [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, b in zip(params, best):
                p.copy_(b)
        return log
    finally:  # the model leaves as it came: the same tensors trainable as before
        for p in model.parameters():
            p.requires_grad_(before[id(p)])


def _parser():
    p = fit_parser("python -m memadapter.training.fit_injector", __doc__, "refitted injector")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--injection", default=None, choices=("prefix", "cross_attn"),
                   help="fit a fresh injector of this kind in place of the adapter's own (heads, reader and pointer kept)")
    p.add_argument("--cross-attn-layers", default="", metavar="I,J",
                   help="with --injection cross_attn: the decoder layers that read the memory, e.g. 10,20")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    model, train_specs, val_specs = fit_setup(args)
    if args.injection is not None:
        model.replace_injector(args.injection, [int(i) for i in args.cross_attn_layers.split(",") if i.strip()])
    progress = not args.no_progress
    train = collect_examples(model, build_streams(train_specs, args.seed, args.filler_tokens), progress)
    val = collect_examples(model, build_streams(val_specs, args.seed + 1, args.filler_tokens), progress)
    if not train or not val:
        raise ConfigError(f"no selection with a value to say: {len(train)} training, {len(val)} validation examples")
    log = fit_injector(model, train, val, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                       seed=args.seed, progress=progress)
    report = {"data": args.data, "val_data": args.val_data, "filler_tokens": args.filler_tokens,
              "injection": model.config.injection, "cross_attn_layers": model.config.cross_attn_layers,
              "train_examples": len(train), "val_examples": len(val), "epochs": args.epochs, "lr": args.lr,
              "loaded_val_copy_rate": log[0]["val_copy_rate"],
              "fitted_val_copy_rate": max(r["val_copy_rate"] for r in log), "log": log}
    model.save_pretrained(args.out)
    save_report(args.out, "fit_injector", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
