"""Thin entry of ``memadapter eval`` and of ``accelerate launch -m memadapter.eval ...``.

The evaluation code lives in ``memadapter.evaluation`` (the top-level ``evaluation/`` folder, which
imports the modeling layer); the core imports it here only inside functions, when asked to run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from memadapter.evaluation.cli import add_arguments as add

    add(parser)


def run(args: argparse.Namespace) -> int:
    from memadapter.evaluation.cli import run as run_eval

    return run_eval(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="memadapter eval", description="outside benchmarks on one frozen backbone")
    add_arguments(parser)
    return int(run(parser.parse_args(argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())
