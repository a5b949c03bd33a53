"""``memadapter bench evidence``: the method x task accuracy table (paper Table 1).

For every seed, every task of ``memadapter.tasks.controlled`` generates ``--samples`` streams of
``--length`` tokens; every method of ``memadapter.baselines`` streams them in 512-token chunks
and answers the questions. Accuracy is pooled over seeds; ``max_active`` is the largest active
set any query used, in the method's own unit (tokens, blocks, chunks, events, slots, state).

    memadapter bench evidence --json evidence.json
    memadapter bench evidence --samples 8 --length 512 --seeds 1      # seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from ..baselines import METHODS, build_methods
from ..errors import ConfigError
from ..tasks.controlled import TASKS, generate
from ..tasks.runner import Score, peak_rss_mb, row, run_method
from ..tasks.vocab import Codebook


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1)")
    parser.add_argument("--samples", type=int, default=200, help="streams per task per seed")
    parser.add_argument("--length", type=int, default=2048, help="tokens per stream (a multiple of 16)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of methods")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of tasks")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the result rows as JSON")


def evaluate(methods: list[str], tasks: list[str], seeds: int, samples: int, length: int,
             progress: bool = True) -> list[dict]:
    """Pooled rows {method, task, correct, total, accuracy, max_active}, methods x tasks."""
    codebook = Codebook()
    scores = {(m, t): Score(0, 0, 0) for m in methods for t in tasks}
    jobs = [(s, t) for s in range(seeds) for t in tasks]
    for seed, task in tqdm(jobs, desc="evidence", disable=not progress):
        batch = generate(task, samples, length, seed, codebook)
        for method in build_methods(codebook, methods):
            scores[(method.name, task)] = scores[(method.name, task)].add(run_method(method, batch))
    return [row(m, t, scores[(m, t)]) for m in methods for t in tasks]


def format_table(rows: list[dict], methods: list[str], tasks: list[str]) -> str:
    """Methods as rows, tasks as columns, accuracy in %, then the largest active set."""
    by = {(r["method"], r["task"]): r for r in rows}
    units = {m.name: m.unit for m in build_methods(Codebook(dim=8, num_keys=4, num_values=4, num_filler=4), methods)}
    short = [t.split("_")[0][:9] for t in tasks]
    lines = ["method".ljust(17) + "".join(s.rjust(10) for s in short) + "   max_active (unit)"]
    for m in methods:
        accs = "".join(f"{100 * by[(m, t)]['accuracy']:9.1f}%" for t in tasks)
        lines.append(m.ljust(17) + accs + f"   {max(by[(m, t)]['max_active'] for t in tasks)} ({units[m]})")
    return "\n".join(lines)


def _split(text: str, allowed, name: str) -> list[str]:
    items = [x for x in text.split(",") if x]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ConfigError(f"{name}: unknown or empty {bad}; choose from {list(allowed)}")
    return items


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    methods, tasks = _split(args.methods, METHODS, "--methods"), _split(args.tasks, TASKS, "--tasks")
    if args.length % 16:
        raise ConfigError(f"--length: must be a multiple of 16, got {args.length}")
    start = time.perf_counter()
    rows = evaluate(methods, tasks, args.seeds, args.samples, args.length)
    elapsed = time.perf_counter() - start
    print(format_table(rows, methods, tasks))
    print(f"{args.seeds} seeds x {args.samples} streams x {args.length} tokens per task; "
          f"{elapsed:.1f} s, peak RSS {peak_rss_mb():.0f} MiB")
    if args.json:
        from .stats import write_rows_json

        write_rows_json(args.json, rows)
    return 0
