"""``memadapter ask FILE QUESTION``: arguments and entry. Cheap to import; :mod:`.run` loads the model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a UTF-8 text file to read (any length: it is ingested in chunks)")
    parser.add_argument("question", help="the question, asked plainly as the adapter was trained")
    parser.add_argument("--show-memory", action="store_true", help="print the memory table before the answer")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared CPU more threads were slower, not faster)")


def run(args: argparse.Namespace) -> int:
    from .run import run_ask, set_threads

    set_threads(args.threads)
    run_ask(args.file, args.question, show_memory=args.show_memory)
    return 0
