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
    "ingest": ("memadapter.bench.ingest", "streaming-ingest cost vs the bare backbone read, per length"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memadapter", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark and print its table")
    benches = bench.add_subparsers(dest="bench", required=True)
    for name, (module_name, help_text) in _BENCHES.items():
        sub = benches.add_parser(name, help=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
