"""Score prediction files with the same code as ``memadapter eval``: the peers' runs (bench/peers/,
another virtualenv) write predictions in its format, and this turns them into rows.

    python -m memadapter.evaluation.score peers.jsonl --json peers_rows.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from memadapter.bench.stats import write_rows_json
from memadapter.errors import ConfigError

from .cli import markdown_table
from .runner import score_predictions, summarize

__all__ = ["read_predictions", "rows_from_predictions", "main"]

NEEDED = ("id", "task", "length", "method", "prediction", "references", "stale_values", "metric", "latency_s")


def read_predictions(path: str) -> list[dict]:
    preds = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        p = json.loads(line)
        missing = [k for k in NEEDED if k not in p]
        if missing:
            raise ConfigError(f"{path}: line {n} lacks {missing}")
        p.setdefault("note", "")
        p.setdefault("active", [])
        preds.append(p)
    return preds


def rows_from_predictions(preds: list[dict], backend: str = "evaluate") -> list[dict]:
    """Score (afresh: any score in the file is ignored) and summarise in first-seen order."""
    for p in preds:
        p.pop("score", None)
    score_predictions(preds, backend)
    order = lambda key: list(dict.fromkeys(p[key] for p in preds))  # noqa: E731
    return summarize(preds, order("task"), order("length"), order("method"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m memadapter.evaluation.score")
    p.add_argument("predictions", nargs="+")
    p.add_argument("--json")
    p.add_argument("--metrics", choices=("evaluate", "plain"), default="evaluate")
    args = p.parse_args(argv)
    rows = rows_from_predictions([q for path in args.predictions for q in read_predictions(path)], args.metrics)
    rows = [r for r in rows if r["total"] or r["skipped"]]  # task x length x method combos never run
    print(markdown_table(rows))
    if args.json:
        write_rows_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
