"""``memadapter demo``: arguments and entry. Cheap to import (argparse only); :mod:`.run` loads the model."""

from __future__ import annotations

import argparse

from memadapter.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", metavar="FILE", help="run on your own text file instead of the demo story "
                        "(needs at least one --ask; answers are printed without right/wrong marks)")
    parser.add_argument("--ask", action="append", default=[], metavar="QUESTION",
                        help="a question about --text (repeat for more)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared CPU more threads were slower, not faster)")


def run(args: argparse.Namespace) -> int:
    if args.ask and args.text is None:
        raise ConfigError("--ask: questions go with --text FILE (the demo story asks its own)")
    if args.text is not None and not args.ask:
        raise ConfigError("--text: give at least one --ask QUESTION about the file")
    from .run import read_text_file, run_demo, set_threads

    set_threads(args.threads)
    text = read_text_file(args.text) if args.text is not None else None  # a bad file fails before the model loads
    run_demo(text, args.ask)
    return 0
