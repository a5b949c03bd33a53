"""``memadapter bench vla``: VLA against linear attention, DeltaNet and gated DeltaNet.

Three measurements, all on given random keys/values (no training, no backbone):

1. ``state_norm``: ``||S_T||_F`` after T tokens (default 1,000) of random unit keys and values,
   mean over seeds, and the ratio linear / method. A second task ``state_norm_positive`` uses
   positive keys/values (``elu(x) + 1``, then unit norm), the feature map of Katharopoulos et al.,
   where every pair adds coherently to linear attention's state.
2. ``mqar_n{n}``: multi-query associative recall. ``n`` pairs (unit key -> codebook value) are
   written, every key is queried, the answer is the codebook entry nearest to the read-out
   (codebook: ``4 * dim`` random unit vectors). Accuracy over seeds x episodes x queries.
3. ``speed``: seconds to consume a ``--speed-tokens`` stream in chunks of 512, as a ratio to linear
   attention timed in the same process.

    memadapter bench vla --seeds 3 --dim 64 --json out.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..fast_state import VLA, DeltaNet, GatedDeltaNet, LinearAttention
from .stats import wilson_interval, write_rows_json

GATED_ALPHA = 0.99  # fixed decay for gated DeltaNet: a baseline setting, not tuned


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``memadapter bench vla``."""
    parser.add_argument("--dim", type=int, default=64, help="head dimension d_h (keys and values)")
    parser.add_argument("--seeds", type=int, default=3, help="number of random seeds")
    parser.add_argument("--length", type=int, default=1000, help="T for the state-norm measurement")
    parser.add_argument("--episodes", type=int, default=32, help="MQAR episodes per seed and load")
    parser.add_argument("--speed-tokens", type=int, default=131072, help="stream length for timing (0 = skip)")
    parser.add_argument("--json", type=str, default=None, help="write the result rows to this JSON file")


def build_models(dim: int) -> dict[str, Any]:
    """The four fixed-state memories at their default settings."""
    return {"linear": LinearAttention(dim, dim), "deltanet": DeltaNet(dim, dim),
            "gated_deltanet": GatedDeltaNet(dim, dim), "vla": VLA(dim, dim)}


def _gates(name: str, keys: torch.Tensor) -> dict[str, torch.Tensor]:
    if name == "gated_deltanet":
        return {"alpha": torch.full(keys.shape[:2], GATED_ALPHA, dtype=keys.dtype)}
    return {}


def _unit(shape: tuple[int, ...], gen: torch.Generator, positive: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, generator=gen)
    return F.normalize(F.elu(x) + 1 if positive else x, dim=-1)


def state_norm_rows(models: dict[str, Any], dim: int, length: int, seeds: int, bar: tqdm) -> list[dict]:
    """``||S_T||_F`` per method for unit and for positive inputs, with the linear / method ratio."""
    rows = []
    for task, positive in (("state_norm", False), ("state_norm_positive", True)):
        norms: dict[str, list[float]] = {name: [] for name in models}
        for seed in range(seeds):
            gen = torch.Generator().manual_seed(seed)
            keys, values = _unit((1, length, dim), gen, positive), _unit((1, length, dim), gen, positive)
            for name, model in models.items():
                state = model.update(model.init_state(1), keys, values, **_gates(name, keys))
                norms[name].append(float(model.state_norm(state)[0]))
                bar.update(1)
        linear = torch.tensor(norms["linear"])
        for name, values_ in norms.items():
            t = torch.tensor(values_)
            rows.append({"method": name, "task": task, "correct": None, "total": None, "accuracy": None,
                         "max_active": None, "T": length, "norm_mean": float(t.mean()),
                         "norm_std": float(t.std()) if len(t) > 1 else 0.0,
                         "ratio_linear_over_method": float((linear / t).mean())})
    return rows


def mqar_counts(model: Any, name: str, n_pairs: int, dim: int, episodes: int, seed: int) -> int:
    """Correct answers out of ``episodes * n_pairs`` queries for one seed."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    codebook = _unit((episodes, 4 * dim, dim), gen)  # [E, V, d]
    keys = _unit((episodes, n_pairs, dim), gen)  # [E, n, d]
    answer = torch.randint(0, 4 * dim, (episodes, n_pairs), generator=gen)  # [E, n]
    values = torch.gather(codebook, 1, answer[..., None].expand(-1, -1, dim))  # [E, n, d]
    state = model.update(model.init_state(episodes), keys, values, **_gates(name, keys))
    read = model.read(state, keys)  # [E, n, d]
    # nearest codebook entry: all entries are unit norm, so the largest dot product is the nearest
    predicted = (read @ codebook.transpose(1, 2)).argmax(-1)  # [E, n]
    return int((predicted == answer).sum())


def mqar_rows(models: dict[str, Any], dim: int, seeds: int, episodes: int, bar: tqdm) -> list[dict]:
    """Accuracy against memory load, n_pairs from d/8 to 4d."""
    rows = []
    for n_pairs in mqar_loads(dim):
        for name, model in models.items():
            correct = sum(mqar_counts(model, name, n_pairs, dim, episodes, seed) for seed in range(seeds))
            total = seeds * episodes * n_pairs
            rows.append({"method": name, "task": f"mqar_n{n_pairs}", "correct": correct, "total": total,
                         "accuracy": correct / total, "max_active": None, "n_pairs": n_pairs, "dim": dim})
            bar.update(1)
    return rows


def mqar_loads(dim: int) -> list[int]:
    """d/8, d/4, d/2, 3d/4, d, 3d/2, 2d, 4d (at least 1, without repeats)."""
    loads = [max(1, dim * num // den) for num, den in ((1, 8), (1, 4), (1, 2), (3, 4), (1, 1), (3, 2), (2, 1), (4, 1))]
    return sorted(set(loads))


def _time_stream(model: Any, name: str, keys: torch.Tensor, values: torch.Tensor) -> float:
    state = model.init_state(1)
    start = time.perf_counter()
    for begin in range(0, keys.shape[1], 512):
        k, v = keys[:, begin:begin + 512], values[:, begin:begin + 512]
        state = model.update(state, k, v, **_gates(name, k))
    return time.perf_counter() - start


def speed_rows(models: dict[str, Any], dim: int, tokens: int, bar: tqdm) -> list[dict]:
    """Best of two timings per method on one stream; ratio to linear attention."""
    gen = torch.Generator().manual_seed(123)
    keys, values = _unit((1, tokens, dim), gen), _unit((1, tokens, dim), gen)
    seconds = {}
    for name, model in models.items():
        seconds[name] = min(_time_stream(model, name, keys, values) for _ in range(2))
        bar.update(1)
    return [{"method": name, "task": "speed", "correct": None, "total": None, "accuracy": None,
             "max_active": None, "tokens": tokens, "seconds": s, "ratio_to_linear": s / seconds["linear"]}
            for name, s in seconds.items()]


def print_tables(rows: list[dict], echo: Callable[[str], None] = print) -> None:
    """Plain-text tables of the three measurements."""
    for row in rows:
        if row["task"].startswith("state_norm"):
            echo(f"{row['task']:<20} {row['method']:<15} ||S_T||_F = {row['norm_mean']:9.3f} "
                 f"(sd {row['norm_std']:.3f})   linear/method = {row['ratio_linear_over_method']:8.2f}x")
    for row in rows:
        if row["task"].startswith("mqar"):
            lo, hi = wilson_interval(row["correct"], row["total"])
            echo(f"{row['task']:<20} {row['method']:<15} acc = {row['accuracy']:.3f}  "
                 f"[{lo:.3f}, {hi:.3f}]  ({row['correct']}/{row['total']})")
    for row in rows:
        if row["task"] == "speed":
            echo(f"speed {row['tokens']} tok    {row['method']:<15} {row['seconds']:7.2f} s  "
                 f"= {row['ratio_to_linear']:6.1f}x linear")


def run(args: argparse.Namespace) -> int:
    """Run all three measurements, print them, optionally write JSON rows."""
    torch.set_num_threads(1)  # the bench machine is shared; timings are ratios in one process
    for flag in ("dim", "seeds", "length", "episodes"):
        if getattr(args, flag) <= 0:
            raise SystemExit(f"--{flag.replace('_', '-')}: must be > 0, got {getattr(args, flag)}")
    models = build_models(args.dim)
    steps = len(models) * (2 * args.seeds + len(mqar_loads(args.dim)) + (1 if args.speed_tokens > 0 else 0))
    with tqdm(total=steps, desc="bench vla", unit="step") as bar:
        rows = state_norm_rows(models, args.dim, args.length, args.seeds, bar)
        rows += mqar_rows(models, args.dim, args.seeds, args.episodes, bar)
        if args.speed_tokens > 0:
            rows += speed_rows(models, args.dim, args.speed_tokens, bar)
    print_tables(rows)
    if args.json:
        write_rows_json(args.json, rows)
    return 0
