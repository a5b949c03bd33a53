"""Figures and tables of docs/EVAL.md from the rows ``memadapter eval --json`` writes.

    python -m memadapter.evaluation.plot rows.json [more.json ...] --out docs/eval --name smollm2

writes ``<name>_accuracy.png`` (accuracy against length, one panel per task, one line per method,
Wilson 95% intervals as bars), ``<name>_stale.png`` (stale rate per method on the tasks that have
one) and prints the markdown table. matplotlib is the optional ``plot`` extra.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

from memadapter.errors import MissingDependencyError

from .cli import markdown_table

__all__ = ["load_rows", "plot_accuracy", "plot_stale", "main"]


def load_rows(paths: Sequence[str]) -> list[dict]:
    rows: list[dict] = []
    for path in paths:
        rows.extend(json.loads(Path(path).read_text()))
    return rows


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib: not installed; pip install 'memadapter[plot]'") from None
    return plt


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def plot_accuracy(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    tasks = _ordered(r["task"] for r in rows)
    methods = _ordered(r["method"] for r in rows)
    cols = min(4, len(tasks))
    fig, axes = plt.subplots(math.ceil(len(tasks) / cols), cols, figsize=(3.6 * cols, 2.9 * math.ceil(len(tasks) / cols)),
                             squeeze=False, sharey=True)
    for ax, task in zip(axes.flat, tasks):
        for m in methods:
            pts = sorted((r["length"], r) for r in rows if r["task"] == task and r["method"] == m and r["total"])
            if not pts:
                continue
            xs = [n for n, _ in pts]
            ys = [r["accuracy"] for _, r in pts]
            # max(0, .): the Wilson bounds can sit a rounding error inside an accuracy of 0 or 1
            err = [[max(0.0, y - r["ci_low"]) for y, (_, r) in zip(ys, pts)],
                   [max(0.0, r["ci_high"] - y) for y, (_, r) in zip(ys, pts)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=m)
        ax.set_xscale("log", base=2)
        ax.set_title(task, fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("prompt tokens")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("accuracy")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_stale(rows: list[dict], path: Path) -> bool:
    """Grouped bars of the stale rate (task x length) per method; False when no row has one."""
    rows = [r for r in rows if r["stale"] is not None]
    if not rows:
        return False
    plt = _pyplot()
    groups = _ordered((r["task"], r["length"]) for r in rows)
    methods = _ordered(r["method"] for r in rows)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(groups), 3.2))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        vals = [next((r["stale"] for r in rows if (r["task"], r["length"]) == g and r["method"] == m), 0.0) for g in groups]
        ax.bar([i + j * width for i in range(len(groups))], vals, width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [f"{t}\n{n}" for t, n in groups], fontsize=8)
    ax.set_ylabel("stale rate")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m memadapter.evaluation.plot")
    p.add_argument("rows", nargs="+", help="JSON row files from memadapter eval --json")
    p.add_argument("--out", default="docs/eval")
    p.add_argument("--name", default="eval")
    args = p.parse_args(argv)
    rows = load_rows(args.rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(rows, out / f"{args.name}_accuracy.png")
    plot_stale(rows, out / f"{args.name}_stale.png")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
