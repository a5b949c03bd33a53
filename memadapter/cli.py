"""The ``memadapter`` console command.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this file only wires them into argparse, so adding a command is one line in ``_BENCHES``.

    memadapter bench evidence --json out.json
    memadapter bench stress --tokens 2097152
    memadapter bench vla
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# name -> (module, one-line help)
_BENCHES = {
    "evidence": ("memadapter.bench.evidence", "method x task accuracy on the controlled lifecycle tasks"),
    "stress": ("memadapter.bench.stress", "the 2M-token sparse-hybrid stress test (paper Table 2)"),
    "vla": ("memadapter.bench.vla", "VLA vs linear attention: state norm and associative-recall capacity"),
    "ingest": ("memadapter.modeling.ingest_bench", "streaming-ingest cost vs the bare backbone read, per length"),
}


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """``only``: the one bench whose module to import (None: all, for ``--help``). A bench module is
    imported by name only when it runs, so ``bench evidence`` never loads modeling / transformers."""
    parser = argparse.ArgumentParser(prog="memadapter", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark and print its table")
    benches = bench.add_subparsers(dest="bench", required=True)
    for name, (module_name, help_text) in _BENCHES.items():
        sub = benches.add_parser(name, help=help_text)
        if only is not None and name != only:
            continue
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    # memadapter.eval imports the evaluation package (which loads models) only inside run().
    evaluate = commands.add_parser("eval", help="outside benchmarks (RULER, BABILong-style) on one frozen backbone")
    entry = importlib.import_module("memadapter.eval")
    entry.add_arguments(evaluate)
    evaluate.set_defaults(_run=entry.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[1] if argv[:1] == ["bench"] and len(argv) > 1 and argv[1] in _BENCHES else None
    args = build_parser(only).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
