"""``memadapter bench stress``: the 2M-token sparse-hybrid stress test (paper Table 2).

5 seeds x 2 trials x 5 scenarios, every stream ``--tokens`` long, streamed in 512-token chunks
through every method (the stream is never materialised: filler is regenerated per chunk).
Prints pooled accuracy with a Wilson 95% interval and the largest active set per method, then
elapsed time and peak RSS. ``--scaling`` reruns the protocol at 256K, 512K, 1M and 2M tokens,
each in a fresh process, and reports time and peak RSS per size.

The four fixed-state models cost 55K-1M tokens/s each on one core (VLA slowest), far beyond the
10-minute budget over 50 x 2M tokens; they run on ``--fixed-state-seeds`` seeds x
``--fixed-state-trials`` trials only (default 1 x 1: five 2M-token streams), and their rows say
so through ``total``.

    memadapter bench stress --tokens 2097152 --json stress.json
    memadapter bench stress --tokens 32768 --seeds 1 --trials 1     # seconds, for a smoke test
    memadapter bench stress --scaling
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from ..baselines import METHODS, build_methods
from ..tasks.runner import Score, peak_rss_mb, row, run_methods
from ..tasks.stress import SCENARIOS, scenario_batch
from ..tasks.vocab import Codebook
from .evidence import _split

FIXED_STATE = ("linear_attention", "deltanet", "gated_deltanet", "vla")
SCALING_SIZES = (262_144, 524_288, 1_048_576, 2_097_152)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=2_097_152, help="tokens per stream (multiple of 512)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=2, help="streams per seed and scenario")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of methods")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--fixed-state-seeds", type=int, default=1, help="seeds for the fixed-state models")
    parser.add_argument("--fixed-state-trials", type=int, default=1, help="trials for the fixed-state models")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--scaling", action="store_true", help="run 256K, 512K, 1M, 2M and report cost per size")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the result rows as JSON")


def stress(methods: list[str], scenarios: list[str], tokens: int, seeds: int, trials: int,
           fs_seeds: int, fs_trials: int) -> tuple[list[dict], dict[str, float]]:
    """Rows per method x scenario, and seconds spent inside each method."""
    codebook = Codebook()
    groups = [([m for m in methods if m not in FIXED_STATE], seeds, trials),
              ([m for m in methods if m in FIXED_STATE], fs_seeds, fs_trials)]
    scores: dict[tuple[str, str], Score] = {}
    seconds = {m: 0.0 for m in methods}
    for names, n_seeds, n_trials in groups:
        if not names or n_seeds <= 0 or n_trials <= 0:
            continue
        for scenario in scenarios:
            batch = scenario_batch(scenario, tokens, list(range(n_seeds)), n_trials, codebook)
            objs = build_methods(codebook, names)
            results, secs = run_methods(objs, batch)
            for name, score, sec in zip(names, results, secs):
                scores[(name, scenario)] = score
                seconds[name] += sec
            print(f"  {scenario:<11} {tokens:>9} tokens x {batch.batch_size} streams: "
                  + ", ".join(f"{n}={s.correct}/{s.total}" for n, s in zip(names, results)), flush=True)
    rows = [row(m, s, scores[(m, s)]) for m in methods for s in scenarios if (m, s) in scores]
    return rows, seconds


def format_table(rows: list[dict], seconds: dict[str, float]) -> str:
    from .stats import wilson_interval

    lines = [f"{'method':<17}{'pooled':>10}{'accuracy':>10}{'Wilson 95% CI':>18}{'max_active':>12}{'seconds':>9}"]
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        c, t = sum(r["correct"] for r in mine), sum(r["total"] for r in mine)
        lo, hi = wilson_interval(c, t)
        lines.append(f"{m:<17}{f'{c}/{t}':>10}{100 * c / t:>9.1f}%{f'[{lo:.3f}, {hi:.3f}]':>18}"
                     f"{max(r['max_active'] for r in mine):>12}{seconds[m]:>9.1f}")
    return "\n".join(lines)


def _scaling(args: argparse.Namespace) -> int:
    """Each size in its own process so that peak RSS is per size (os.wait4 gives the child's)."""
    print(f"{'tokens':>10}{'seconds':>10}{'peak RSS MiB':>14}{'s per 1M tokens':>17}")
    for size in SCALING_SIZES:
        cmd = [sys.executable, "-m", "memadapter", "bench", "stress", "--tokens", str(size),
               "--seeds", str(args.seeds), "--trials", str(args.trials), "--methods", args.methods,
               "--scenarios", args.scenarios, "--fixed-state-seeds", str(args.fixed_state_seeds),
               "--fixed-state-trials", str(args.fixed_state_trials), "--threads", str(args.threads)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        if status != 0:
            print(f"{size:>10} failed with status {status}")
            return 1
        print(f"{size:>10}{elapsed:>10.1f}{usage.ru_maxrss / 1024:>14.0f}{elapsed / size * 1e6:>17.1f}", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.scaling:
        return _scaling(args)
    methods = _split(args.methods, METHODS, "--methods")
    scenarios = _split(args.scenarios, SCENARIOS, "--scenarios")
    start = time.perf_counter()
    rows, seconds = stress(methods, scenarios, args.tokens, args.seeds, args.trials,
                           args.fixed_state_seeds, args.fixed_state_trials)
    elapsed = time.perf_counter() - start
    print(format_table(rows, seconds))
    print(f"{args.tokens} tokens per stream; {elapsed:.1f} s total, peak RSS {peak_rss_mb():.0f} MiB")
    if args.json:
        from .stats import write_rows_json

        write_rows_json(args.json, rows)
    return 0
