"""Phase 12 of the paper (section 4.3): train the 2.74M-parameter event-token model from scratch on CPU.

Two variants: ``answer_only`` (answer cross-entropy through the soft memory) and ``lite_write``
(the same plus 0.25 x BCE on which events should be written). Write labels come from the
generator and are used ONLY as training targets; evaluation runs the hard 32-slot memory with the
model's own ``p_write`` and counts state-changing SlotMemory actions per stream.

Settings (one question at the end of each stream; ``GRID`` of the controlled tasks is not needed
because one event is one position):

* ``recall``: 8 signalled WRITE facts among background events, query one;
* ``versioning``: 4 keys x 3 versions (WRITE then UPDATEs), query one -> its latest value;
* ``distractor``: 4 PROTECT facts early, then ASIDE remarks giving them wrong values, WRITEs of
  their look-alike keys and of other keys, query a protected key -> its protected value;
* ``uniform``: no write signal at all (distinct keys), query one -> needs the sparse fallback;
* ``streaming``: a WRITE of the target key early, an UPDATE later, ASIDEs of it after that, and
  thousands of ordinary background events; query -> the updated value. The longest setting
  (4,096 events) is where writes are counted.

Background events are ordinary facts (marker NONE) and ASIDE remarks about non-target keys.

CLI: ``python -m experiments.phase12 --variant lite_write --seed 0`` or ``--all``.

Example:
    >>> import random
    >>> s = make_stream("versioning", 16, random.Random(0))
    >>> len(s.markers), s.markers[-1] == QUERY, sum(s.write_labels)
    (17, True, 12)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from memadapter.bench.stats import wilson_interval, write_rows_json
from memadapter.errors import ConfigError

from .native_lm import ASIDE, NONE, PROTECT, QUERY, UPDATE, WRITE, NativeLMConfig, NativeMemoryLM

VARIANTS = ("answer_only", "lite_write")
WRITE_AUX_WEIGHT = 0.25  # the paper's "lite" write supervision
SETTINGS = ("recall", "versioning", "distractor", "uniform", "streaming")
# (name, setting, events): 8 settings x 25 samples = 200 per seed, 600 per variant over 3 seeds
EVAL_SETTINGS = (("recall_64", "recall", 64), ("versioning_64", "versioning", 64),
                 ("distractor_64", "distractor", 64), ("uniform_64", "uniform", 64),
                 ("streaming_256", "streaming", 256), ("streaming_1024", "streaming", 1024),
                 ("streaming_2048", "streaming", 2048), ("streaming_4096", "streaming", 4096))
LONGEST = "streaming_4096"
SIGNALLED = (WRITE, UPDATE, PROTECT)


@dataclass
class Stream:
    """One stream of events plus the question (last position) and its labels."""

    markers: list[int]
    keys: list[int]
    values: list[int]
    write_labels: list[int]  # per event: training target only
    answer: int
    setting: str


class _Builder:
    """Places a few labelled events at random positions and fills the rest with background."""

    def __init__(self, n: int, rng: random.Random, num_keys: int, num_values: int, reserved: set[int]) -> None:
        self.n, self.rng, self.half, self.num_values = n, rng, num_keys // 2, num_values
        self.events: dict[int, tuple[int, int, int]] = {}
        self.background = [k for k in range(self.half) if k not in reserved]

    def free_positions(self, count: int, lo: float = 0.0, hi: float = 1.0) -> list[int]:
        cells = [p for p in range(int(lo * self.n), int(hi * self.n)) if p not in self.events]
        if len(cells) < count:
            raise ConfigError(f"events: {self.n} events cannot hold {count} placed events in [{lo}, {hi})")
        return sorted(self.rng.sample(cells, count))

    def place(self, pos: int, marker: int, key: int, value: int) -> None:
        self.events[pos] = (marker, key, value)

    def build(self, setting: str, query_key: int, answer: int, ordinary: bool = True) -> Stream:
        m, k, v = [], [], []
        for p in range(self.n):
            if p in self.events:
                ev = self.events[p]
            else:  # background: an ordinary fact, or now and then an aside, about a non-target key
                marker = ASIDE if self.rng.random() < 0.1 else NONE
                ev = (marker if ordinary else NONE, self.rng.choice(self.background), self.rng.randrange(self.num_values))
            m.append(ev[0]), k.append(ev[1]), v.append(ev[2])
        labels = [int(x in SIGNALLED) for x in m]
        return Stream(m + [QUERY], k + [query_key], v + [self.num_values], labels, answer, setting)


def make_stream(setting: str, n_events: int, rng: random.Random, num_keys: int = 256,
                num_values: int = 256) -> Stream:
    """One seeded stream of ``setting`` with ``n_events`` events (keys below num_keys/2 are entities,
    key + num_keys/2 is its look-alike)."""
    if setting not in SETTINGS:
        raise ConfigError(f"setting: unknown {setting!r}; choose from {list(SETTINGS)}")
    half = num_keys // 2
    if setting == "uniform":
        if n_events > half:
            raise ConfigError(f"n_events: uniform recall uses distinct keys, at most {half}, got {n_events}")
        keys = rng.sample(range(half), n_events)
        vals = [rng.randrange(num_values) for _ in keys]
        q = rng.randrange(n_events)
        labels = [0] * n_events
        return Stream([NONE] * n_events + [QUERY], keys + [keys[q]], vals + [num_values], labels, vals[q], setting)
    targets = rng.sample(range(half), {"recall": 8, "versioning": 4, "distractor": 10, "streaming": 1}[setting])
    b = _Builder(n_events, rng, num_keys, num_values, set(targets))
    vals = rng.sample(range(num_values), 32)
    if setting == "recall":
        for pos, key, val in zip(b.free_positions(8), targets, vals):
            b.place(pos, WRITE, key, val)
        q = rng.randrange(8)
        return b.build(setting, targets[q], vals[q])
    if setting == "versioning":
        order = [i for i in range(4) for _ in range(3)]
        rng.shuffle(order)
        latest, seen, it = {}, set(), iter(vals)
        for pos, i in zip(b.free_positions(12), order):
            latest[i] = next(it)
            b.place(pos, UPDATE if i in seen else WRITE, targets[i], latest[i])
            seen.add(i)
        q = rng.randrange(4)
        return b.build(setting, targets[q], latest[q])
    if setting == "distractor":
        facts, others = targets[:4], targets[4:]
        for pos, key, val in zip(b.free_positions(4, 0.0, 0.2), facts, vals):
            b.place(pos, PROTECT, key, val)
        noise = [(ASIDE, k, rng.randrange(num_values)) for k in facts for _ in range(2)]
        noise += [(WRITE, k + half, rng.randrange(num_values)) for k in facts for _ in range(3)]
        noise += [(WRITE, k, rng.randrange(num_values)) for k in others]
        rng.shuffle(noise)
        for pos, ev in zip(b.free_positions(len(noise), 0.2, 1.0), noise):
            b.place(pos, *ev)
        q = rng.randrange(4)
        return b.build(setting, facts[q], vals[q])
    key = targets[0]  # streaming
    b.place(b.free_positions(1, 0.0, 0.1)[0], WRITE, key, vals[0])
    b.place(b.free_positions(1, 0.5, 0.9)[0], UPDATE, key, vals[1])
    for pos in b.free_positions(2, 0.9, 1.0):
        b.place(pos, ASIDE, key, vals[2 + len(b.events) % 2])
    return b.build(setting, key, vals[1])


def collate(streams: Sequence[Stream]) -> dict[str, torch.Tensor]:
    """Equal-length streams -> markers/keys/values [B, T + 1], write_labels [B, T], answers [B]."""
    if len({len(s.markers) for s in streams}) != 1:
        raise ConfigError("streams: a batch needs streams of one length")
    t = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731
    return {"markers": t([s.markers for s in streams]), "keys": t([s.keys for s in streams]),
            "values": t([s.values for s in streams]), "answers": t([s.answer for s in streams]),
            "write_labels": torch.tensor([s.write_labels for s in streams], dtype=torch.float32)}


# --------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """Budget of one run; the defaults fit about 3-4 minutes of one CPU core."""

    variant: str = "lite_write"
    seed: int = 0
    steps: int = 500
    batch_size: int = 16
    train_events: int = 48
    lr: float = 3e-3
    temperature_start: float = 0.2
    temperature_end: float = 0.05
    eval_per_setting: int = 25

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant: expected one of {list(VARIANTS)}, got {self.variant!r}")
        for name in ("steps", "batch_size", "train_events", "eval_per_setting"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}: expected a positive int, got {value!r}")


def temperature_at(step: int, cfg: TrainConfig) -> float:
    """Log-linear anneal: soft decisions early, near-hard ones by the end (the eval path is hard)."""
    frac = step / max(1, cfg.steps - 1)
    return math.exp(math.log(cfg.temperature_start) * (1 - frac) + math.log(cfg.temperature_end) * frac)


def loss_fn(model: NativeMemoryLM, batch: dict[str, torch.Tensor], variant: str,
            temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Answer CE through the soft memory; lite_write adds 0.25 x BCE on the write labels."""
    out = model.forward_soft(batch["markers"], batch["keys"], batch["values"], temperature=temperature)
    answer = F.cross_entropy(out.logits, batch["answers"])
    write = F.binary_cross_entropy_with_logits(out.encoding.write_logits, batch["write_labels"])
    loss = answer + WRITE_AUX_WEIGHT * write if variant == "lite_write" else answer
    return loss, {"answer": float(answer.detach()), "write_bce": float(write.detach()),
                  "p_write": float(out.encoding.p_write.detach().mean())}


def train_batch(rng: random.Random, cfg: TrainConfig, model_cfg: NativeLMConfig) -> dict[str, torch.Tensor]:
    streams = [make_stream(rng.choice(SETTINGS), cfg.train_events, rng, model_cfg.num_keys, model_cfg.num_values)
               for _ in range(cfg.batch_size)]
    return collate(streams)


def train(cfg: TrainConfig, model_cfg: Optional[NativeLMConfig] = None,
          progress: bool = True) -> tuple[NativeMemoryLM, list[dict]]:
    """Train one model from scratch; deterministic under ``cfg.seed``. Returns (model, loss log)."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = NativeMemoryLM(model_cfg or NativeLMConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    log = []
    bar = tqdm(range(cfg.steps), desc=f"phase12 {cfg.variant} seed {cfg.seed}", disable=not progress, file=sys.stderr,
               mininterval=5.0)
    for step in bar:
        batch = train_batch(rng, cfg, model.config)
        loss, parts = loss_fn(model, batch, cfg.variant, temperature_at(step, cfg))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        log.append({"step": step, "loss": float(loss.detach()), **parts})
        if step % 10 == 0:
            bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", p_write=f"{parts['p_write']:.2f}")
    return model, log


# --------------------------------------------------------------------------- evaluation
def eval_streams(seed: int, per_setting: int, model_cfg: NativeLMConfig,
                 settings: Optional[Sequence[tuple[str, str, int]]] = None) -> dict[str, list[Stream]]:
    """Held-out streams (default: ``EVAL_SETTINGS``), from a generator seeded apart from every training seed."""
    settings = EVAL_SETTINGS if settings is None else settings
    rng = random.Random(1_000_003 * (seed + 1) + 17)
    return {name: [make_stream(kind, n, rng, model_cfg.num_keys, model_cfg.num_values) for _ in range(per_setting)]
            for name, kind, n in settings}


def evaluate(model: NativeMemoryLM, streams: dict[str, list[Stream]]) -> dict[str, dict]:
    """Hard-path accuracy, writes per stream and memory-branch share for every setting."""
    model.eval()
    out = {}
    for name, group in streams.items():
        batch = collate(group)
        res = model.forward_hard(batch["markers"], batch["keys"], batch["values"])
        correct = res.logits.argmax(-1) == batch["answers"]
        out[name] = {"correct": int(correct.sum()), "total": len(group),
                     "writes": [int(w) for w in res.writes], "memory_branch": float(res.gate.mean())}
    model.train()
    return out


def run(cfg: TrainConfig, model_cfg: Optional[NativeLMConfig] = None, progress: bool = True) -> dict:
    """Train and evaluate one (variant, seed); returns one result row."""
    model_cfg = model_cfg or NativeLMConfig()
    t0 = time.time()
    model, log = train(cfg, model_cfg, progress)
    train_s = time.time() - t0
    per = evaluate(model, eval_streams(cfg.seed, cfg.eval_per_setting, model_cfg))
    correct, total = sum(r["correct"] for r in per.values()), sum(r["total"] for r in per.values())
    lo, hi = wilson_interval(correct, total)
    longest = per.get(LONGEST, {}).get("writes", [])
    return {"method": f"native_lm_{cfg.variant}", "task": "phase12", "variant": cfg.variant, "seed": cfg.seed,
            "correct": correct, "total": total, "accuracy": correct / total, "wilson95": [lo, hi],
            "writes_longest_mean": sum(longest) / max(1, len(longest)), "writes_longest_max": max(longest, default=0),
            "per_setting": per, "final_loss": sum(r["loss"] for r in log[-20:]) / len(log[-20:]),
            "train_seconds": round(train_s, 1), "eval_seconds": round(time.time() - t0 - train_s, 1),
            "params": sum(p.numel() for p in model.parameters()), "config": asdict(cfg)}


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Pool the seeds of each variant: correct/total with a Wilson 95% CI and writes on the longest setting."""
    pooled = []
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        c, n = sum(r["correct"] for r in mine), sum(r["total"] for r in mine)
        writes = [w for r in mine for w in r["per_setting"].get(LONGEST, {}).get("writes", [])]
        lo, hi = wilson_interval(c, n)
        pooled.append({"variant": variant, "seeds": [r["seed"] for r in mine], "correct": c, "total": n,
                       "accuracy": c / n, "wilson95": [lo, hi],
                       "writes_longest_mean": sum(writes) / max(1, len(writes)),
                       "writes_longest_max": max(writes, default=0)})
    return pooled


def markdown_table(rows: Sequence[dict]) -> str:
    """The pooled table and a per-setting accuracy table (settings as columns)."""
    lines = ["| variant | seeds | correct / total | accuracy | Wilson 95% CI | writes per stream, "
             f"{LONGEST} (mean / max) |", "|---|---|---|---|---|---|"]
    for p in summarize(rows):
        lines.append(f"| {p['variant']} | {len(p['seeds'])} | {p['correct']}/{p['total']} | {100 * p['accuracy']:.2f}% "
                     f"| [{p['wilson95'][0]:.3f}, {p['wilson95'][1]:.3f}] | {p['writes_longest_mean']:.1f} / "
                     f"{p['writes_longest_max']} |")
    names = [name for name, _, _ in EVAL_SETTINGS]
    lines += ["", "| variant | seed | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{r['per_setting'][n]['correct']}/{r['per_setting'][n]['total']}" if n in r["per_setting"] else "-"
                 for n in names]
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.phase12", description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, default="lite_write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all", action="store_true", help="2 variants x 3 seeds (0, 1, 2)")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--eval-per-setting", type=int, default=TrainConfig.eval_per_setting)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/results/phase12", help="folder for phase12.json and phase12.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    jobs = [(v, s) for v in VARIANTS for s in (0, 1, 2)] if args.all else [(args.variant, args.seed)]
    rows = []
    for variant, seed in jobs:
        row = run(TrainConfig(variant=variant, seed=seed, steps=args.steps, eval_per_setting=args.eval_per_setting))
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("variant", "seed", "correct", "total", "writes_longest_mean",
                                              "train_seconds", "eval_seconds")}), flush=True)
    out = Path(args.out)
    stem = "phase12" if args.all else f"phase12_{args.variant}_seed{args.seed}"
    write_rows_json(out / f"{stem}.json", rows)
    table = markdown_table(rows)
    (out / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
