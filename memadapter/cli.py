"""The ``memadapter`` console command.

    memadapter demo                                   the bundled adapter on a 16K-token story
    memadapter ask notes.txt "Where does Nadia live?"  ingest a file, answer one question
    memadapter train --config training/configs/tiny.json
    memadapter eval --tasks niah_single --lengths 4K
    memadapter bench evidence
    memadapter card path/to/adapter

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this file only wires them into argparse. A command's module is imported by name only when that
command runs (or its ``--help`` is asked for), so ``memadapter bench evidence`` never loads
transformers, and the core never imports the modeling or training layers itself. A user error (a
``MemAdapterError``, a missing file) prints one line to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from memadapter.errors import MemAdapterError

# command -> (module, one-line help, example shown by --help)
_COMMANDS = {
    "demo": ("memadapter.demo.demo_command", "the bundled SmolLM2 adapter on a 16K-token story: memory vs "
             "tail window vs BM25 chunks",
             "memadapter demo\n  memadapter demo --text notes.txt --ask 'Where does Nadia live now?' --ask 'Who pays Omar?'"),
    "ask": ("memadapter.demo.ask_command", "ingest a text file with the bundled adapter and answer one question",
            "memadapter ask notes.txt 'Where does Nadia Petrova live now?'"),
    "train": ("memadapter.training.train", "train an adapter on a frozen backbone (Trainer + accelerate)",
              "memadapter train --config training/configs/tiny.json --output_dir runs/tiny\n"
              "  accelerate launch --multi_gpu --num_processes 2 -m memadapter.training.train --config FILE"),
    "eval": ("memadapter.eval", "outside benchmarks (RULER, BABILong-style) on one frozen backbone",
             "memadapter eval --tasks niah_single,vt --lengths 4K,8K --methods tail,bm25,memadapter_prefix"),
    "card": ("memadapter.modeling.card_command", "render the model card (README.md) of an adapter folder",
             "memadapter card modeling/adapters/smollm2-135m-prefix --results results.json --out README.md"),
}
# bench name -> (module, one-line help)
_BENCHES = {
    "evidence": ("memadapter.bench.evidence", "method x task accuracy on the controlled lifecycle tasks"),
    "stress": ("memadapter.bench.stress", "the 2M-token sparse-hybrid stress test (paper Table 2)"),
    "vla": ("memadapter.bench.vla", "VLA vs linear attention: state norm and associative-recall capacity"),
    "ingest": ("memadapter.modeling.ingest_bench", "streaming-ingest cost vs the bare backbone read, per length"),
    "perf": ("memadapter.modeling.perf_bench", "issue 26's ratios: ingest vs the bare read, select, decode, state, peak"),
}
USER_ERROR = 2  # the exit status of a bad argument, as argparse uses it


def _wire(parser: argparse.ArgumentParser, module_name: str) -> None:
    module = importlib.import_module(module_name)
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """``only``: the one command (or bench) whose module to import; None: all of them, "": none
    (the top-level ``--help`` lists the commands without importing any)."""
    parser = argparse.ArgumentParser(prog="memadapter", description="memadapter: an editable, request-local "
                                     "slot memory for frozen Hugging Face causal LMs",
                                     epilog="examples:\n  " + "\n  ".join(e.split("\n")[0] for _, _, e in _COMMANDS.values()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text, example) in _COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        if only is None or only == name:
            _wire(sub, module_name)
    bench = commands.add_parser("bench", help="run a benchmark and print its table",
                                epilog="example:\n  memadapter bench evidence --seeds 1 --samples 50",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    benches = bench.add_subparsers(dest="bench", required=True)
    for name, (module_name, help_text) in _BENCHES.items():
        sub = benches.add_parser(name, help=help_text, description=help_text,
                                 epilog=f"example:\n  memadapter bench {name} --help",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        if only is None or only == name:
            _wire(sub, module_name)
    return parser


def _only(argv: list[str]) -> str:
    """The command (or bench) named on the command line, "" when none is."""
    if argv[:1] == ["bench"]:
        return argv[1] if len(argv) > 1 and argv[1] in _BENCHES else ""
    return argv[0] if argv and argv[0] in _COMMANDS else ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(_only(argv)).parse_args(argv)
        return int(args._run(args) or 0)
    except (MemAdapterError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        # A user error: one line naming what was wrong, no traceback.
        command = " ".join(argv[:2] if argv[:1] == ["bench"] else argv[:1])
        print(f"memadapter {command}: error: {_one_line(err)}", file=sys.stderr)
        return USER_ERROR


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.strerror}: {err.filename}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
