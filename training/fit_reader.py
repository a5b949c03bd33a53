"""Fit the learned reader (``ReadScorer``) of a trained adapter on its own candidate pools.

The heads are trained first (``memadapter.training.train``); their pools then exist. Each training
stream is ingested once, and each of its questions gets the pool ``select`` would score
(``MemAdapterForCausalLM.read_pools``). An entry is positive when it sits in the sentence of the
question's answer event (the generator's character spans: a training target, never seen at
inference) and reads as the answer does: a withdrawal for a withdrawn fact, an entry with a value
otherwise (a pointer answer read from a retraction's words, "no longer works", is wrong), and of
those, the ones whose value text is the answer where any is (:func:`spells`). An entry is stale
when it holds a value in the sentence of a superseded version of the asked fact
(:func:`stale_events`). The scorer is fitted listwise on those pools (:func:`fit_scorer`), with
``--stale-weight`` pushing the stale entries down further; the epoch is chosen on the pools of a
validation split, and the adapter is saved with the fitted scorer.

    python -m memadapter.training.fit_reader --adapter runs/smollm2_open --out runs/smollm2_open_reader \\
        --data open:train:80 --data lifecycle:train:40 --data counterfactual:train:40 \\
        --val-data open:val_unseen_templates:10 --val-data counterfactual:val_squad:10 --filler-tokens 1500

Example (plain tensors):
    >>> feats = torch.zeros(2, 3, NUM_FEATURES); feats[:, 0, 0] = 1.0  # key_match: entry 0 looks best
    >>> positive = torch.tensor([[False, True, False], [False, True, False]])  # ... but entry 1 is right
    >>> pools = PoolSet(feats, torch.ones(2, 3, dtype=torch.bool), positive)
    >>> feats[:, 1, FEATURES.index("position")] = 1.0
    >>> scorer, log = fit_scorer(pools, pools, epochs=200)
    >>> pick_accuracy(scorer, pools)
    1.0
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
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from memadapter.errors import ConfigError
from memadapter.modeling.read_scorer import FEATURES, NUM_FEATURES, ReadScorer, listwise_loss, pool_features, stale_loss

from .answer_scoring import exact_match
from .generation_eval import question_ids
from .lifecycle_data import UNKNOWN


@dataclass
class PoolSet:
    """Padded pools: features [P, N, F], valid [P, N], positive [P, N] and stale [P, N] (None:
    no entry is stale)."""

    features: torch.Tensor
    valid: torch.Tensor
    positive: torch.Tensor
    stale: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.stale is None:
            self.stale = torch.zeros_like(self.positive)

    @classmethod
    def stack(cls, pools: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> "PoolSet":
        """(features [n, F], positive [n], stale [n]) per pool -> one padded PoolSet."""
        n = max([1] + [f.shape[0] for f, _, _ in pools])
        out = cls(torch.zeros(len(pools), n, NUM_FEATURES), torch.zeros(len(pools), n, dtype=torch.bool),
                  torch.zeros(len(pools), n, dtype=torch.bool))
        for i, (f, pos, stale) in enumerate(pools):
            m = f.shape[0]
            out.features[i, :m], out.valid[i, :m], out.positive[i, :m], out.stale[i, :m] = f, True, pos, stale
        return out

    def save(self, path: str) -> None:
        save_file({"features": self.features, "valid": self.valid, "positive": self.positive, "stale": self.stale}, path)

    @classmethod
    def load(cls, path: str) -> "PoolSet":
        t = load_file(path)
        if t["features"].shape[-1] != NUM_FEATURES:
            raise ConfigError(f"pools: {path} has {t['features'].shape[-1]} features, this reader reads {NUM_FEATURES}")
        return cls(t["features"], t["valid"], t["positive"], t.get("stale"))

    def coverage(self) -> float:
        """Share of pools holding a positive entry (what any reader can get right at most)."""
        return float((self.positive & self.valid).any(-1).float().mean()) if len(self.valid) else 0.0


def _char_starts(tokenizer: Any, text: str) -> list[int]:
    """Character offset of each token of ``text`` as ingest tokenises it (no special tokens)."""
    return [s for s, _ in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]


def label_pool(order: torch.Tensor, char_starts: list[int], event: dict) -> torch.Tensor:
    """[N] bool: entries whose stream position (a token index, ``order``) falls in the answer
    event's sentence (``event["start"]`` .. ``event["end"]``, characters).

    Example:
        >>> label_pool(torch.tensor([0.0, 2.5, 3.0]), [0, 5, 10, 15], {"start": 9, "end": 20}).tolist()
        [False, True, True]
    """
    last = len(char_starts) - 1
    chars = [char_starts[min(max(int(p), 0), last)] if last >= 0 else -1 for p in order.tolist()]
    return torch.tensor([event["start"] <= c < event["end"] for c in chars], dtype=torch.bool)


def spells(value_texts: Sequence[Optional[str]], answer: str, positive: torch.Tensor) -> torch.Tensor:
    """[N] bool: of the ``positive`` entries, those whose value text is the answer (exact match after
    normalising); all of them when none is, or when the fact was withdrawn. Two answers read from
    the answer's sentence ("formed in Time", "Time") are not equally right.

    Example:
        >>> spells(["formed in Time", "Time", "Time"], "Time", torch.tensor([True, True, False])).tolist()
        [False, True, False]
    """
    if answer == UNKNOWN:
        return positive
    exact = torch.tensor([bool(v) and exact_match(v, answer) for v in value_texts], dtype=torch.bool) & positive
    return exact if bool(exact.any()) else positive


def reads_as(withdrawn: torch.Tensor, answer: str) -> torch.Tensor:
    """[N] bool: the entries that read as ``answer`` does (``withdrawn`` [N]): withdrawals when the
    fact was withdrawn (``answer`` is "unknown"), entries that hold a value otherwise.

    Example:
        >>> reads_as(torch.tensor([True, False]), "unknown").tolist(), reads_as(torch.tensor([True, False]), "Paris").tolist()
        ([True, False], [False, True])
    """
    return withdrawn.bool() == (answer == UNKNOWN)


def stale_events(stream: dict, question: dict) -> list[dict]:
    """The events that state a superseded value of the asked fact: the answer event's entity and
    attribute, an earlier version, a value (hearsay, version 0, is wrong but not stale).

    Example:
        >>> ev = [{"entity": "A", "attribute": "city", "version": 1, "value": "Rome", "event_type": "new"},
        ...       {"entity": "A", "attribute": "city", "version": 2, "value": "Oslo", "event_type": "update"},
        ...       {"entity": "A", "attribute": "city", "version": 0, "value": "Nice", "event_type": "irrelevant"}]
        >>> [e["value"] for e in stale_events({"events": ev}, {"answer_event": 1})]
        ['Rome']
    """
    answer = stream["events"][question["answer_event"]]
    return [e for i, e in enumerate(stream["events"]) if i != question["answer_event"]
            and (e.get("entity"), e.get("attribute")) == (answer.get("entity"), answer.get("attribute"))
            and 0 < e.get("version", 0) < answer.get("version", 0) and e.get("value")]


@torch.no_grad()
def collect_pools(model: Any, streams: Iterable[dict], progress: bool = True) -> PoolSet:
    """Ingest each stream once and build the labelled pool of each of its questions."""
    tok, out = model.tokenizer, []
    device = next(model.backbone.parameters()).device
    streams = list(streams)
    for stream in tqdm(streams, desc="pools", unit="stream", disable=not progress):
        memory = model.new_memory()
        model.ingest(memory, stream["text"], progress=False)
        snapshot, starts = memory.snapshot(), _char_starts(tok, stream["text"])
        for q in stream["questions"]:  # the memory's read_cache grounds each retrieved chunk once
            memory.restore(snapshot)
            ids = torch.tensor([question_ids(tok, q["question"])], device=device)  # [1, T]
            qp = model.read_pools(memory, ids, torch.ones_like(ids))[0]
            positive = label_pool(qp.pool.order, starts, stream["events"][q["answer_event"]])
            positive &= reads_as(qp.pool.withdrawn, q["answer"])
            positive = spells(qp.pool.value_texts, q["answer"], positive)
            stale = torch.zeros_like(positive)
            for event in stale_events(stream, q):
                stale |= label_pool(qp.pool.order, starts, event)
            out.append((pool_features(qp.question, qp.pool), positive, stale & ~qp.pool.withdrawn.bool()))
    return PoolSet.stack(out)


def pick_accuracy(scorer: ReadScorer, pools: PoolSet, labels: Optional[torch.Tensor] = None) -> float:
    """Share of pools whose best-scored entry is positive (pools without a positive count as misses);
    with ``labels`` [P, N], the share whose pick is one of those instead (``pools.stale``: the stale
    pick rate)."""
    with torch.no_grad():
        scores = scorer(pools.features).masked_fill(~pools.valid, float("-inf"))
    pick = scores.argmax(-1)
    labels = pools.positive if labels is None else labels
    return float(labels.gather(1, pick[:, None]).float().mean()) if len(pick) else 0.0


def live_withdrawals(pools: PoolSet) -> torch.Tensor:
    """[P, N] bool: the withdrawal entries of the pools whose answer is a value (a positive that is
    not a withdrawal): picking one says "unknown" for a live fact.

    Example:
        >>> f = torch.zeros(2, 2, NUM_FEATURES); f[:, 1, FEATURES.index("withdrawn")] = 1.0
        >>> pools = PoolSet(f, torch.ones(2, 2, dtype=torch.bool), torch.tensor([[True, False], [False, True]]))
        >>> live_withdrawals(pools).tolist()
        [[False, True], [False, False]]
    """
    withdrawn = pools.features[..., FEATURES.index("withdrawn")] > 0.5  # [P, N]
    live = (pools.positive & ~withdrawn).any(-1) & ~(pools.positive & withdrawn).any(-1)  # [P]
    return withdrawn & pools.valid & live[:, None]


def fit_scorer(train: PoolSet, val: PoolSet, epochs: int = 300, lr: float = 0.01, weight_decay: float = 1e-4,
               seed: int = 0, init: Optional[ReadScorer] = None, only: Sequence[str] = (),
               stale_weight: float = 0.0) -> tuple[ReadScorer, list[dict]]:
    """Full-batch Adam on :func:`listwise_loss` plus ``stale_weight`` times :func:`stale_loss`, from
    the prior (or from a float32 CPU copy of ``init``); keeps the epoch with the best validation pick
    accuracy less ``stale_weight`` times its stale pick rate (ties: the earlier one). Returns the
    scorer and a log per 10 epochs.

    ``only`` (feature names, with ``init``): fit only the input weights of those features (their
    column of the linear score and of the MLP's first layer), without weight decay; every other
    tensor stays as ``init`` has it. So a feature appended to a fitted scorer is learned without
    moving what the scorer had learned."""
    torch.manual_seed(seed)
    scorer = ReadScorer() if init is None else copy.deepcopy(init).float().cpu()
    if only:
        if init is None:
            raise ConfigError("fit_scorer: only= needs init= (the scorer whose other weights stay)")
        columns = torch.zeros(NUM_FEATURES, dtype=torch.bool)
        columns[[FEATURES.index(name) for name in only]] = True
        for p in scorer.parameters():
            p.requires_grad_(False)
        for w in (scorer.linear.weight, scorer.mlp[0].weight):
            w.requires_grad_(True)
            w.register_hook(lambda g: g * columns.to(g.dtype))
        weight_decay = 0.0
    opt = torch.optim.Adam([p for p in scorer.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)

    def criterion() -> tuple[float, float, float]:
        acc, stale = pick_accuracy(scorer, val), pick_accuracy(scorer, val, val.stale)
        return acc - stale_weight * stale, acc, stale

    best_score, acc, stale = criterion()
    best = copy.deepcopy(scorer.state_dict())
    log = [{"epoch": 0, "loss": None, "val_pick": acc, "val_stale_pick": stale}]
    for epoch in range(1, epochs + 1):
        opt.zero_grad()
        scores = scorer(train.features)
        loss = listwise_loss(scores, train.valid, train.positive)
        if stale_weight:
            loss = loss + stale_weight * stale_loss(scores, train.valid, train.stale)
        loss.backward()
        opt.step()
        score, acc, stale = criterion()
        if score > best_score:
            best, best_score = copy.deepcopy(scorer.state_dict()), score
        if epoch % 10 == 0:
            log.append({"epoch": epoch, "loss": float(loss.detach()), "val_pick": acc, "val_stale_pick": stale})
    scorer.load_state_dict(best)
    return scorer, log


def parse_data(specs: Sequence[str], flag: str) -> list[tuple[str, str, int]]:
    """``BUILDER:SPLIT:STREAMS`` items -> (builder, split, streams); ConfigError naming ``flag``.

    >>> parse_data(["open:train:60", "counterfactual:val_squad:10"], "--data")
    [('open', 'train', 60), ('counterfactual', 'val_squad', 10)]
    """
    out = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
            raise ConfigError(f"{flag}: expected BUILDER:SPLIT:STREAMS (e.g. open:train:60), got {spec!r}")
        out.append((parts[0], parts[1], int(parts[2])))
    return out


def build_streams(specs: Sequence[tuple[str, str, int]], seed: int, filler_tokens: Optional[int]) -> list[dict]:
    """The streams of every (builder, split, streams) spec, each built with ``seed``."""
    from .train import build_datasets

    kwargs = {} if filler_tokens is None else {"filler_tokens": filler_tokens}
    return [row for builder, split, n in specs for row in build_datasets(
        {"builder": builder, "split": split, "num_streams": n, "seed": seed, "builder_kwargs": kwargs})]


def fit_parser(prog: str, doc: str, saved: str, cache: bool = False) -> argparse.ArgumentParser:
    """The arguments every refit command shares (fit_reader, fit_grounding, fit_pointer, fit_injector):
    the adapter, where the refitted one is saved (``saved`` says what it carries), training and
    validation streams, device, dtype and progress bars; with ``cache``, ``--cache DIR`` for the
    commands that keep each data spec's encoded pairs (fit_restatement, fit_hedge)."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="trained adapter directory (save_pretrained output)")
    p.add_argument("--base", default=None,
                   help="local base model directory (default: the cache of the adapter's real base model, "
                        "else SmolLM2's)")
    p.add_argument("--out", required=True, help=f"where the adapter with the {saved} is saved")
    p.add_argument("--data", action="append", required=True, metavar="BUILDER:SPLIT:STREAMS",
                   help="training streams, e.g. open:train:60 (repeat the flag to mix builders)")
    p.add_argument("--val-data", action="append", required=True, metavar="BUILDER:SPLIT:STREAMS",
                   help="validation streams that choose the epoch, e.g. open:val_unseen_templates:10")
    p.add_argument("--filler-tokens", type=int, default=None, help="override every builder's filler length")
    p.add_argument("--seed", type=int, default=0, help="stream seed (validation streams use seed + 1)")
    p.add_argument("--device", default=None, help="torch device of the model (default: where it loads)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="model dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if cache:
        p.add_argument("--cache", default=None, help="keep each data spec's encoded pairs here; reused when present")
    return p


def save_report(out: str, name: str, report: dict, hidden: tuple[str, ...] = ("log",)) -> None:
    """Write ``report`` as OUT/NAME.json beside the saved adapter and print it without ``hidden``."""
    with open(f"{out}/{name}.json", "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k not in hidden}, indent=1))


def fit_setup(args: argparse.Namespace, pointer: bool = False) -> tuple[Any, list, list]:
    """(the adapter loaded on its base, the training specs, the validation specs) of parsed
    :func:`fit_parser` arguments; with ``pointer``, exits when the adapter has no answer pointer."""
    from .generation_eval import _load_model, _model_dirs

    args.set = getattr(args, "set", None) or []
    train_specs, val_specs = parse_data(args.data, "--data"), parse_data(args.val_data, "--val-data")
    model = _load_model(args, *_model_dirs(args))
    if pointer and model.answer_pointer is None:
        raise SystemExit(f"{args.adapter}: the adapter has no answer pointer (fit one with fit_pointer first)")
    return model, train_specs, val_specs


def _parser() -> argparse.ArgumentParser:
    p = fit_parser("python -m memadapter.training.fit_reader", __doc__, "fitted reader")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--pools", default=None, help="cache the train pools here (safetensors); reused when present")
    p.add_argument("--val-pools", default=None, help="the same for the validation pools")
    p.add_argument("--only", action="append", default=[], metavar="FEATURE", choices=FEATURES,
                   help="fit only this feature's input weights, starting from the adapter's own scorer (repeatable)")
    p.add_argument("--stale-weight", type=float, default=0.0,
                   help="weight of the loss on entries of superseded versions, and of the stale pick rate "
                        "subtracted from the validation pick accuracy that chooses the epoch")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a read setting the pools are read with and the saved adapter keeps, by its flat name, "
                        "the value as JSON (--set restated_runs=0.5)")
    return p


def _pools(model: Any, path: Optional[str], specs: list, seed: int, filler: Optional[int], progress: bool) -> PoolSet:
    if path and os.path.exists(path):
        return PoolSet.load(path)
    pools = collect_pools(model, build_streams(specs, seed, filler), progress)
    if path:
        pools.save(path)
    return pools


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    model, train_specs, val_specs = fit_setup(args)
    progress = not args.no_progress
    train = _pools(model, args.pools, train_specs, args.seed, args.filler_tokens, progress)
    val = _pools(model, args.val_pools, val_specs, args.seed + 1, args.filler_tokens, progress)
    if args.stale_weight and not bool(train.stale.any()):
        raise ConfigError("--stale-weight: the training pools mark no stale entry (pools cached before stale labels? "
                          "collect them again)")
    prior, own = ReadScorer(), copy.deepcopy(model.read_scorer).float().cpu()
    scorer, log = fit_scorer(train, val, epochs=args.epochs, seed=args.seed, stale_weight=args.stale_weight,
                             init=own if args.only else None, only=args.only)
    live = live_withdrawals(val)
    report = {"data": args.data, "val_data": args.val_data, "filler_tokens": args.filler_tokens,
              "train_pools": len(train.valid), "val_pools": len(val.valid), "train_coverage": train.coverage(),
              "val_coverage": val.coverage(), "prior_val_pick": pick_accuracy(prior, val),
              "fitted_val_pick": pick_accuracy(scorer, val), "fitted_train_pick": pick_accuracy(scorer, train),
              "prior_val_stale_pick": pick_accuracy(prior, val, val.stale), "adapter_val_pick": pick_accuracy(own, val),
              "adapter_val_stale_pick": pick_accuracy(own, val, val.stale),
              "fitted_val_stale_pick": pick_accuracy(scorer, val, val.stale), "stale_weight": args.stale_weight,
              "adapter_val_live_withdrawal_pick": pick_accuracy(own, val, live),
              "fitted_val_live_withdrawal_pick": pick_accuracy(scorer, val, live),
              "only": args.only, "features": list(FEATURES), "log": log}
    model.read_scorer.load_state_dict(scorer.state_dict())
    model.save_pretrained(args.out)
    save_report(args.out, "fit_reader", report, ("log", "features"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
