"""Refit a trained adapter's QueryHead on the read pools of its own memory, everything else frozen.

The joint training matches a question's query against the keys of *gold* events, a few per
stream. At read time (``read_rule="joint"``) the query competes in a different pool: the slots the
write path left and the events the GroundingHead finds again in the retrieved chunks, each scored
by key match plus ``lexical_weight`` times lexical agreement. The misses left on the dev sets
are mostly that score ranking another attribute of the right entity, or a look-alike, first.
This module ingests training-split streams with the trained adapter, builds each question's pool
exactly as ``_joint_row`` does, labels every entry by the generator's event spans (an entry is
*about the asked fact* when its sentence is an event of the question's entity and attribute, any
version, rumours excluded) and fits the QueryHead alone on a set-level InfoNCE: the pool's
probability mass on the asked fact's entries. Versions stay ties for the version rule to break;
the stream positions decide among them, not the query.

The pools do not depend on the QueryHead (the chunk search reads the question's mean hidden
state, the slots and events are fixed by ingest), so they are built once and the fit runs on
cached question hidden states in seconds.

    python -m experiments.refit_query --adapter modeling/adapters/smollm2-135m-prefix \\
        --out runs/refit_query --num-streams 100 --filler-tokens 8000
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from memadapter.bm25 import lexical_agreement
from memadapter.heads import QueryHead

from memadapter.training.labels import char_spans_to_token_spans
from memadapter.training.lifecycle_data import SPLIT_DEFAULTS, build_dataset


@dataclass
class ReadPool:
    """One question's joint read pool: the question's hidden states [T, H] at ``read_layer``,
    the entries' keys [N, dk] and lexical terms [N] (``lexical_weight`` applied), which entries
    are about the asked fact (labels [N] bool), and the question kind."""

    hidden: torch.Tensor
    keys: torch.Tensor
    lexical: torch.Tensor
    labels: torch.Tensor
    kind: str

    @property
    def informative(self) -> bool:
        """A pool with both an entry about the asked fact and one that is not: it ranks something."""
        return bool(self.labels.any()) and not bool(self.labels.all())


def _event_facts(tokenizer: Any, stream: dict) -> list[tuple[int, int, Optional[tuple[str, str]]]]:
    """Per generator event: its sentence's token span in the stream as ``ingest`` tokenises it,
    and (entity, attribute), or None for a rumour (typed irrelevant: never the asked fact)."""
    enc = tokenizer(stream["text"], add_special_tokens=False, return_offsets_mapping=True)
    spans = char_spans_to_token_spans(enc["offset_mapping"], [(e["start"], e["end"]) for e in stream["events"]])
    return [(s, t, None if e["event_type"] == "irrelevant" else (e["entity"], e["attribute"]))
            for (s, t), e in zip(spans, stream["events"])]


def _fact_at(facts: list, position: int) -> Optional[tuple[str, str]]:
    return next((f for s, t, f in facts if s <= position < t), None)


@torch.no_grad()
def stream_pools(model: Any, stream: dict, question_ids: Any) -> list[ReadPool]:
    """Ingest ``stream`` with ``model`` and build every question's joint read pool (the usable
    slots, then the events grounded in its retrieved chunks: ``MemoryReaderMixin._joint_row``'s
    entries) with labels from the stream's event spans. ``question_ids(tokenizer, text)`` gives a
    question's ids the way the evaluation feeds them."""
    cfg, tok = model.config, model.tokenizer
    memory = model.new_memory()
    model.ingest(memory, stream["text"], progress=False)
    mem, index, facts = memory.slots, memory.indexes[0], _event_facts(tok, stream)
    spans = [index.span(c) for c in range(len(index))]
    by_chunk: dict[int, list] = {}  # every chunk grounded once; a question takes its retrieved chunks' events
    for e in model._chunk_events(memory, 0, list(range(len(index)))):
        by_chunk.setdefault(next(c for c, (s, t) in enumerate(spans) if s <= e.position < t), []).append(e)
    usable = (mem.occupied[0] & (mem.confidence[0] >= cfg.read.router_confidence_threshold)).nonzero().flatten().tolist()
    slot_texts = model._slot_lexical_texts(memory, 0)  # the texts the question's words meet, per slot
    no_query = torch.zeros(cfg.key_dim)
    pools = []
    for q in stream["questions"]:
        ids = torch.tensor([question_ids(tok, q["question"])], device=model._device())  # [1, T]
        mask = torch.ones_like(ids, dtype=torch.bool)
        hidden = model._hidden(ids, mask)  # [1, T, H]
        question = model._decode(ids[0].tolist())
        chunks = model._retrieved_chunks(memory, 0, model._mean(hidden, mask).float().cpu()[0], question)
        events = model._score_events([e for c in chunks for e in by_chunk.get(c, [])],
                                     no_query, question)  # score = the lexical term alone
        slot_lex = lexical_agreement(question, slot_texts) if cfg.read.lexical_weight > 0 else [0.0] * len(slot_texts)
        keys = torch.cat([mem.keys[0, usable].float(), torch.stack([e.key for e in events]) if events
                          else torch.zeros(0, cfg.key_dim)])  # [N, dk]
        lexical = [cfg.read.lexical_weight * slot_lex[m] for m in usable] + [e.score for e in events]
        positions = [int(mem.span[0, m, 0]) for m in usable] + [e.position for e in events]
        asked = (q["entity"], q["attribute"])
        pools.append(ReadPool(hidden[0].float().cpu(), keys, torch.tensor(lexical, dtype=torch.float32),
                              torch.tensor([_fact_at(facts, p) == asked for p in positions], dtype=torch.bool),
                              str(q["kind"])))
    return pools


def save_pools(pools: Sequence[ReadPool], path: str) -> None:
    """Write ``pools`` as one safetensors file (tensors concatenated, lengths beside them)."""
    from safetensors.torch import save_file

    tensors = {"hidden": torch.cat([p.hidden for p in pools]), "keys": torch.cat([p.keys for p in pools]),
               "lexical": torch.cat([p.lexical for p in pools]), "labels": torch.cat([p.labels for p in pools]).to(torch.uint8),
               "tokens": torch.tensor([p.hidden.shape[0] for p in pools]), "entries": torch.tensor([p.keys.shape[0] for p in pools])}
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"kinds": json.dumps([p.kind for p in pools])})


def load_pools(path: str) -> list[ReadPool]:
    """The pools :func:`save_pools` wrote (safetensors: nothing is unpickled)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        kinds = json.loads(f.metadata()["kinds"])
    hidden, keys = t["hidden"].split(t["tokens"].tolist()), t["keys"].split(t["entries"].tolist())
    lexical, labels = t["lexical"].split(t["entries"].tolist()), t["labels"].bool().split(t["entries"].tolist())
    return [ReadPool(*parts) for parts in zip(hidden, keys, lexical, labels, kinds)]


def pool_loss(head: QueryHead, pools: Sequence[ReadPool], temperature: float, positives: str = "set") -> torch.Tensor:
    """Mean over ``pools`` of an InfoNCE over the entries, scored as the joint read scores them
    (key . query + lexical term). ``positives="set"``: -log(the softmax mass on the entries about
    the asked fact); ``"each"``: the mean over those entries of -log(its softmax against the other
    entries alone), so every version must outscore every other entry, and the set loss's way out,
    one version far ahead of the others (past the version rule's margin), earns nothing."""
    if positives not in ("set", "each"):
        raise ValueError(f"positives: expected 'set' or 'each', got {positives!r}")
    losses = []
    for p in pools:
        q = head(p.hidden[None].to(_head_device(head)))[0].float().cpu()  # [dk]
        logits = (p.keys @ q + p.lexical) / temperature  # [N]
        if positives == "set":
            losses.append(torch.logsumexp(logits, 0) - torch.logsumexp(logits[p.labels], 0))
            continue
        negatives = torch.logsumexp(logits[~p.labels], 0)  # []
        pos = logits[p.labels]  # [P]
        losses.append((torch.logaddexp(pos, negatives) - pos).mean())
    return torch.stack(losses).mean()


@torch.no_grad()
def pool_accuracy(head: QueryHead, pools: Sequence[ReadPool]) -> dict[str, list[int]]:
    """Per question kind and overall: [pools whose best-scoring entry is about the asked fact, pools]."""
    out: dict[str, list[int]] = {}
    for p in pools:
        q = head(p.hidden[None].to(_head_device(head)))[0].float().cpu()
        right = int(bool(p.labels[int(torch.argmax(p.keys @ q + p.lexical))]))
        for kind in (p.kind, "all"):
            out.setdefault(kind, [0, 0])
            out[kind][0] += right
            out[kind][1] += 1
    return out


def fit_query_head(head: QueryHead, fit: Sequence[ReadPool], held: Sequence[ReadPool], epochs: int = 20,
                   lr: float = 3e-4, temperature: float = 0.05, batch_size: int = 16, seed: int = 0,
                   progress: bool = True, positives: str = "set") -> list[dict]:
    """Fit ``head`` in place on the informative ``fit`` pools (AdamW, ``epochs`` passes) and keep
    the weights of the epoch with the most ``held`` pools right (epoch 0: as trained; a tie keeps
    the earlier epoch). Returns one log row per epoch."""
    fit = [p for p in fit if p.informative]
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    best, best_state = pool_accuracy(head, held)["all"][0], copy.deepcopy(head.state_dict())
    log = [{"epoch": 0, "held_right": best}]
    for epoch in tqdm(range(1, epochs + 1), desc="refit query head", disable=not progress):
        order = list(fit)
        rng.shuffle(order)
        total = 0.0
        for i in range(0, len(order), batch_size):
            loss = pool_loss(head, order[i : i + batch_size], temperature, positives)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(order[i : i + batch_size])
        right = pool_accuracy(head, held)["all"][0]
        log.append({"epoch": epoch, "fit_loss": total / max(1, len(order)), "held_right": right})
        if right > best:
            best, best_state = right, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    return log


def _head_device(head: QueryHead) -> torch.device:
    return head.proj.weight.device


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.refit_query", description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="trained adapter directory")
    p.add_argument("--out", required=True, help="directory for the refit adapter")
    p.add_argument("--base", default=None, help="base model directory (default: the cached SmolLM2)")
    p.add_argument("--num-streams", type=int, default=100, help="training-split streams (a fifth held out)")
    p.add_argument("--seed", type=int, default=1, help="stream seed (the adapter's training used 0)")
    p.add_argument("--synthetic-names", type=float, default=0.5)
    p.add_argument("--filler-tokens", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--positives", choices=("set", "each"), default="set",
                   help="set: the pool's mass on the asked fact; each: every version against the other entries")
    p.add_argument("--pools", default=None, help="safetensors cache of the read pools: read if it exists, else written")
    p.add_argument("--report", default=None, help="JSON file for the fit log and pool accuracies")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from memadapter.training import generation_eval as ge

    args = _parser().parse_args(argv)
    if args.num_streams < 5 or args.epochs < 1 or args.filler_tokens < 0:
        raise SystemExit("--num-streams must be >= 5, --epochs >= 1 and --filler-tokens >= 0")
    base, adapter = ge._model_dirs(argparse.Namespace(adapter=args.adapter, base=args.base))
    model = ge._load_model(argparse.Namespace(set=[], dtype="float32", device=None), base, adapter)
    if model.config.read.read_rule != "joint":
        raise SystemExit(f"--adapter: read_rule is {model.config.read.read_rule!r}; the refit fits the joint read's pools")
    shape = dict(SPLIT_DEFAULTS["train"], filler_tokens=args.filler_tokens, synthetic_names=args.synthetic_names)
    streams = list(build_dataset("train", args.num_streams, args.seed, **shape))
    held_streams = len(streams) // 5
    if args.pools and os.path.exists(args.pools):
        pools = load_pools(args.pools)
    else:
        pools = [p for s in tqdm(streams, desc="read pools", disable=args.no_progress)
                 for p in stream_pools(model, s, ge.question_ids)]
        if args.pools:
            save_pools(pools, args.pools)
    n_held = sum(len(s["questions"]) for s in streams[:held_streams])
    held, fit = pools[:n_held], pools[n_held:]
    before = {"fit": pool_accuracy(model.query_head, fit), "held": pool_accuracy(model.query_head, held)}
    print("pool accuracy, as trained:", before)
    log = fit_query_head(model.query_head, fit, held, args.epochs, args.lr, args.temperature,
                         progress=not args.no_progress, positives=args.positives)
    after = {"fit": pool_accuracy(model.query_head, fit), "held": pool_accuracy(model.query_head, held)}
    print("pool accuracy, refit:    ", after)
    model.save_pretrained(args.out)
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"args": vars(args), "before": before, "after": after, "log": log,
                       "informative": [sum(p.informative for p in fit), sum(p.informative for p in held)]}, f, indent=1)
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
