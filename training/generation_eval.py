"""Exact-match evaluation of a MemAdapterForCausalLM by generating answers to lifecycle questions.

Every method reads only a stream's ``text`` and each question's ``question`` text; the gold
``answer`` is looked at only afterwards, to score the prediction (events and other labels are
never read). The prediction is the greedy continuation cut at EOS and at the first newline,
compared with the gold answer after SQuAD-style normalisation. Two kinds of wrong answer are
counted apart: *stale* (the prediction names a value the fact held before its final state, from
the question's ``stale`` list) and *unknown* (it says the fact is unknown although it never was
withdrawn).

Methods (one row each, per question kind and pooled as ``all``):

    memory        the adapter's configured injection (prefix / cross_attn) over the ingested memory
    text          the same memory, selected entries written as text before the question
    full_context  the bare backbone on stream + "\\n" + question, only when it fits (else skipped)
    tail          the bare backbone on the last ``tail_tokens`` stream tokens + "\\n" + question
    no_context    the bare backbone on the question alone (what it knows without the stream)

CLI (held-out streams, a trained adapter on a local base, e.g. the SmolLM2 cache)::

    python -m memadapter.training.generation_eval --adapter DIR --base DIR \\
        --split test_unseen_entities --num-streams 50 --filler-tokens 30000 --seed 0 \\
        --methods memory,text,tail,full_context,no_context --json out.json

Rows (``--json``): ``{split, method, kind, correct, total, accuracy, stale, unknown, skipped,
ci_low, ci_high, contains}``, one per (method, question kind) and a pooled ``kind="all"`` row.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

from memadapter._validate import check_choices, check_positive_int
from memadapter.bench.stats import wilson_interval, write_rows_json
from memadapter.errors import ConfigError, EmptyInputError
# --set FIELD=VALUE: the read / ingest settings by their flat names (config.read.name_chunks is
# "name_chunks") and top_k / value_tokens; safe to change on a trained adapter.
from memadapter.modeling.configuration_memadapter import SETTABLE, parse_settings

from .answer_scoring import (contains_answer, exact_match, normalize_answer, score_prediction, stale_answer,
                             unknown_answer)
from .lifecycle_data import QUESTION_KINDS

__all__ = ["METHODS", "normalize_answer", "exact_match", "contains_answer", "stale_answer", "unknown_answer",
           "score_prediction", "question_ids", "chat_ids", "injection_mode", "evaluate_generation", "summarize",
           "markdown_table", "main"]

METHODS: tuple[str, ...] = ("memory", "text", "full_context", "tail", "no_context")
_MEMORY_METHODS = ("memory", "text")


# ----------------------------------------------------------------------------- prompts

def question_ids(tokenizer: Any, question: str) -> list[int]:
    """The question's token ids exactly as the training collator builds them (``_qa_row``):
    the stripped text, no special tokens. A trained adapter then sees its training prompt."""
    return list(tokenizer(question.strip(), add_special_tokens=False)["input_ids"])


INSTRUCTION = "Answer with the answer only, in a few words."


def chat_ids(tokenizer: Any, question: str, context: Optional[str] = None) -> list[int]:
    """An instruct model's own prompt for the untrained rows: the tokenizer's chat template around
    (context,) the question and a short-answer instruction. Without it a chat model answers in
    sentences, and exact match would measure its format, not what it read."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat: the tokenizer has no chat template; evaluate with chat=False")
    content = (f"{context}\n\n" if context else "") + f"Question: {question.strip()}\n{INSTRUCTION}"
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@contextmanager
def injection_mode(model: Any, mode: str) -> Iterator[None]:
    """Temporarily set ``model.config.injection``; restored on exit, also when the block raises."""
    previous = model.config.injection
    model.config.injection = mode
    try:
        yield
    finally:
        model.config.injection = previous


@dataclass(frozen=True)
class _Settings:
    max_new_tokens: int
    full_context_tokens: int
    tail_tokens: int
    chat: bool = False  # chat template + instruction for every row but the trained "memory" row


@dataclass
class _StreamContext:
    """What one stream gives every method: its tokens, the separator, and the ingested memory."""

    ids: list[int]
    sep: list[int]
    memory: Any = None
    snapshot: Optional[dict] = None


def _stop_ids(model: Any, tok: Any) -> set[int]:
    """EOS ids of the tokenizer and of the backbone's generation config (an int or a list)."""
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen = getattr(model.backbone, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return {int(i) for i in ids}


def _continuation(model: Any, tok: Any, new: list[int]) -> str:
    """New tokens -> prediction text: cut at the first stop id, then at the first newline."""
    stops = _stop_ids(model, tok)
    cut = next((i for i, t in enumerate(new) if t in stops), len(new))
    text = tok.decode(new[:cut], skip_special_tokens=True)
    # Leading whitespace is not an answer: a base model often opens with "\n" before it answers.
    return text.lstrip().split("\n", 1)[0].strip()


def _generate(model: Any, tok: Any, ids: list[int], settings: _Settings, memory: Any = None) -> str:
    device = next(model.backbone.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # [1, T]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = model.generate(input_ids, torch.ones_like(input_ids), memory=memory,
                         max_new_tokens=settings.max_new_tokens, do_sample=False, pad_token_id=pad)
    return _continuation(model, tok, out[0, len(ids):].tolist())  # generate returns prompt + new tokens


def _answer(model: Any, tok: Any, method: str, ctx: _StreamContext, question: str, q: list[int],
            settings: _Settings) -> Optional[str]:
    """One method's prediction for one question; None when the method skips it."""
    if method in _MEMORY_METHODS:
        # Reads credit slot usage; every question starts from the post-ingest memory so that
        # neither question order nor method order changes what a question sees.
        ctx.memory.restore(ctx.snapshot)
        if settings.chat and method == "text":
            return _chat_text_answer(model, tok, ctx, question, q, settings)
        mode = model.config.injection if method == "memory" else "text"
        with injection_mode(model, mode):
            return _generate(model, tok, q, settings, memory=ctx.memory)
    context = {"full_context": ctx.ids, "tail": ctx.ids[-settings.tail_tokens:]}.get(method, [])
    if settings.chat:
        prompt = chat_ids(tok, question, tok.decode(context) if context else None)
    else:
        prompt = context + ctx.sep + q if context else q
    if method == "full_context" and len(prompt) + settings.max_new_tokens > settings.full_context_tokens:
        return None
    with model.disable_adapter():
        return _generate(model, tok, prompt, settings)


def _chat_text_answer(model: Any, tok: Any, ctx: _StreamContext, question: str, q: list[int],
                      settings: _Settings) -> str:
    """``text`` for a chat model: what the router selects for the question (the same selection the
    memory row injects) goes *inside* the user turn as context, then the bare backbone answers.
    Text put before the chat template would sit outside every turn, and the model ignores it."""
    device = next(model.backbone.parameters()).device
    ids = torch.tensor([q], dtype=torch.long, device=device)  # [1, T]
    context = model.select(ctx.memory, ids, torch.ones_like(ids)).memory_text(0)
    with model.disable_adapter():
        return _generate(model, tok, chat_ids(tok, question, context), settings)


# ----------------------------------------------------------------------------- evaluation

def _check_methods(methods: Any) -> tuple[str, ...]:
    return tuple(check_choices("methods", methods, METHODS))


def _check_kinds(kinds: Optional[Iterable[str]]) -> Optional[frozenset[str]]:
    if kinds is None:
        return None
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds:
        raise ConfigError(f"kinds: expected at least one of {QUESTION_KINDS} (or None for all), got none")
    bad = [k for k in kinds if k not in QUESTION_KINDS]
    if bad:
        raise ConfigError(f"kinds: unknown question kind(s) {bad}; expected names from {QUESTION_KINDS}")
    return frozenset(kinds)


def _inputs(stream: Any, i: int, kinds: Optional[frozenset[str]]) -> tuple[str, list[dict]]:
    """The stream text and the questions to ask (filtered by kind); nothing else leaves here."""
    if not isinstance(stream, dict) or not isinstance(stream.get("text"), str) or "questions" not in stream:
        raise ConfigError(f"streams[{i}]: expected a dict with 'text' (str) and 'questions'")
    questions = [q for q in stream["questions"] if kinds is None or q.get("kind") in kinds]
    return stream["text"], questions


def _stream_context(model: Any, tok: Any, text: str, methods: Sequence[str]) -> _StreamContext:
    ctx = _StreamContext(list(tok(text, add_special_tokens=False)["input_ids"]),
                         list(tok("\n", add_special_tokens=False)["input_ids"]))
    if any(m in _MEMORY_METHODS for m in methods):
        ctx.memory = model.new_memory()
        model.ingest(ctx.memory, text, progress=False)  # once per stream, shared by memory and text
        ctx.snapshot = ctx.memory.snapshot()
    return ctx


def _predict_stream(model: Any, tok: Any, stream: Any, i: int, methods: Sequence[str],
                    kinds: Optional[frozenset[str]], settings: _Settings, split: str) -> list[dict]:
    text, questions = _inputs(stream, i, kinds)
    if not questions:
        return []
    ctx = _stream_context(model, tok, text, methods)
    preds = []
    for q in questions:
        q_ids = question_ids(tok, str(q["question"]))
        if not q_ids:
            raise EmptyInputError(f"streams[{i}]: question {q['question']!r} has no tokens")
        for method in methods:
            pred = _answer(model, tok, method, ctx, str(q["question"]), q_ids, settings)
            # the gold answer and the stale values are read only now, after generation, to score
            preds.append({"split": split, "stream": str(stream.get("id", i)), "stream_tokens": len(ctx.ids),
                          "method": method, "kind": str(q.get("kind", "other")), "question": str(q["question"]),
                          "gold": str(q["answer"]), "prediction": pred, "skipped": pred is None,
                          **score_prediction(pred, q)})
    return preds


def _row(split: str, method: str, kind: str, preds: list[dict]) -> dict:
    done = [p for p in preds if not p["skipped"]]
    correct, total = sum(p["correct"] for p in done), len(done)
    lo, hi = wilson_interval(correct, total) if total else (None, None)
    return {"split": split, "method": method, "kind": kind, "correct": correct, "total": total,
            "accuracy": correct / total if total else None, "stale": sum(p["stale"] for p in done),
            "unknown": sum(p["unknown"] for p in done), "skipped": len(preds) - total,
            "ci_low": lo, "ci_high": hi, "contains": sum(p["contains"] for p in done)}


def summarize(predictions: Sequence[dict], methods: Sequence[str], split: Optional[str] = None) -> list[dict]:
    """Rows per (method, question kind) in ``QUESTION_KINDS`` order, then a pooled ``all`` row;
    each row names ``split`` ("custom" when None). A prediction needs ``method``, ``kind``,
    ``skipped`` and the four scores of :func:`score_prediction`."""
    split = "custom" if split is None else str(split)
    order = {k: n for n, k in enumerate(QUESTION_KINDS)}
    rows = []
    for method in methods:
        mine = [p for p in predictions if p["method"] == method]
        for kind in sorted({p["kind"] for p in mine}, key=lambda k: (order.get(k, len(order)), k)):
            rows.append(_row(split, method, kind, [p for p in mine if p["kind"] == kind]))
        rows.append(_row(split, method, "all", mine))
    return rows


def evaluate_generation(model: Any, streams: Iterable[dict], methods: Sequence[str] = METHODS,
                        kinds: Optional[Iterable[str]] = None, max_new_tokens: int = 12,
                        full_context_tokens: int = 8192, tail_tokens: int = 1024, progress: bool = True,
                        predictions: Optional[list] = None, chat: bool = False,
                        split: Optional[str] = None) -> list[dict]:
    """Generate an answer to every question of every stream with each method; score by exact match.

    Returns rows ``{split, method, kind, correct, total, accuracy, stale, unknown, skipped, ci_low,
    ci_high, contains}``, one per (method, question kind) and a pooled ``kind="all"`` row per
    method; ``split`` names the streams' split (the ``split`` argument, "custom" when None),
    ``ci_*`` is the Wilson 95% interval, ``contains`` counts predictions that contain the gold
    answer, ``stale`` those that name a superseded value (:func:`stale_answer`; questions without
    a ``stale`` list never count) and ``unknown`` those that call a never-withdrawn fact unknown
    (:func:`unknown_answer`). A
    ``full_context`` question whose prompt plus ``max_new_tokens`` exceeds ``full_context_tokens``
    is *skipped*: counted in ``skipped``, neither right nor wrong, and left out of ``total``
    (accuracy and CI are None when every question was skipped). Pass a list as ``predictions``
    to collect one dict per (question, method) for inspecting failures (with the four scores of
    :func:`score_prediction` and ``split``). The model needs its
    tokenizer (``model.tokenizer``). ``chat=True`` prompts every row except the trained
    ``memory`` row through the tokenizer's chat template with a short-answer instruction
    (:func:`chat_ids`), the fair way to ask an instruct model.

    Example:
        >>> preds = []                                                             # doctest: +SKIP
        >>> rows = evaluate_generation(model, build_dataset("test_unseen_entities", 20, 0),
        ...                            methods=["memory", "tail"], predictions=preds,
        ...                            split="test_unseen_entities")                  # doctest: +SKIP
        >>> print(markdown_table(rows))                                            # doctest: +SKIP
    """
    methods, wanted = _check_methods(methods), _check_kinds(kinds)
    settings = _Settings(*(check_positive_int(n, v) for n, v in (
        ("max_new_tokens", max_new_tokens), ("full_context_tokens", full_context_tokens),
        ("tail_tokens", tail_tokens))), chat=bool(chat))
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ConfigError("model.tokenizer: generation_eval needs the model's tokenizer (from_pretrained(tokenizer=...))")
    streams = list(streams)
    if not streams:
        raise EmptyInputError("streams: nothing to evaluate")
    split = "custom" if split is None else str(split)  # rows and predictions name the same split
    preds: list[dict] = []
    for i, stream in enumerate(tqdm(streams, desc="generation eval", unit="stream", disable=not progress)):
        preds += _predict_stream(model, tok, stream, i, methods, wanted, settings, split)
    if predictions is not None:
        predictions.extend(preds)
    return summarize(preds, methods, split)


def markdown_table(rows: Sequence[dict]) -> str:
    """Rows -> a markdown table (accuracy in %, Wilson 95% CI, stale and unknown answers, skipped questions)."""
    lines = ["| method | kind | correct / total | accuracy | Wilson 95% CI | contains | stale | unknown | skipped |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        ci = "-" if r["ci_low"] is None else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        lines.append(f"| {r['method']} | {r['kind']} | {r['correct']} / {r['total']} | {acc} | {ci} | "
                     f"{r['contains']} | {r['stale']} | {r['unknown']} | {r['skipped']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m memadapter.training.generation_eval",
                                description="Exact-match accuracy of generated answers on held-out lifecycle streams.")
    p.add_argument("--adapter", required=True, help="local adapter directory (save_pretrained output)")
    p.add_argument("--base", default=None,
                   help="local base model directory (default: the cache of the adapter's real base model, "
                        "else SmolLM2's)")
    p.add_argument("--builder", default="lifecycle", choices=("lifecycle", "open", "counterfactual"),
                   help="stream generator for --split (open: open_data.SPLITS; counterfactual: counterfactual.SPLITS)")
    p.add_argument("--split", default="test_unseen_entities")
    p.add_argument("--num-streams", type=int, default=20)
    p.add_argument("--filler-tokens", type=int, default=None, help="override the split's filler (e.g. 30000)")
    p.add_argument("--filler-source", default="auto", help="auto | essays | embedded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic-names", type=float, default=0.0,
                   help="share of made-up entity names (splits with training names only): an unseen-name dev set "
                        "that leaves the test pools untouched")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--kinds", default=None, help="comma-separated question kinds (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--full-context-tokens", type=int, default=8192)
    p.add_argument("--tail-tokens", type=int, default=1024)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--json", default=None, help="write the rows here (JSON list)")
    p.add_argument("--predictions", default=None, help="write every prediction here (JSON list)")
    p.add_argument("--chat", action="store_true",
                   help="chat template + short-answer instruction for the text and bare-backbone rows")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a read / ingest setting of the adapter by its flat name, the value as JSON "
                        f"(--set name_chunks=3 sets config.read.name_chunks); one of {', '.join(SETTABLE)}")
    p.add_argument("--no-progress", action="store_true")
    return p


def _local_dir(flag: str, path: Any) -> str:
    if not Path(path).is_dir():
        raise ConfigError(f"{flag}: {str(path)!r} is not a local directory")
    return str(path)


def _model_dirs(args: argparse.Namespace) -> tuple[str, str]:
    """(base, adapter) as local directories; ConfigError naming the flag otherwise (no Hub, no network).
    Without ``--base``, the cache of the real model the adapter was trained on (its config's
    ``base_model_name_or_path``, e.g. "gemma3"), else SmolLM2's."""
    from memadapter.modeling.real_models import REAL_MODELS, default_cache_dir

    adapter = _local_dir("--adapter", args.adapter)
    if args.base is not None:
        return _local_dir("--base", args.base), adapter
    config = Path(adapter) / "adapter_config.json"
    try:  # an unreadable config is reported by from_pretrained, with its own error
        name = json.loads(config.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        name = None
    return _local_dir("--base", default_cache_dir(name if name in REAL_MODELS else "smollm2")), adapter



def _load_model(args: argparse.Namespace, base: str, adapter: str) -> Any:
    from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM

    overrides = parse_settings(args.set)  # a bad item fails before the model loads
    model = MemAdapterForCausalLM.from_pretrained(base, adapter=adapter, dtype=getattr(torch, args.dtype))
    if "value_tokens" in overrides and (overrides["value_tokens"] == 0) != (model.config.value_tokens == 0):
        raise ConfigError("--set value_tokens: can change the number of copied tokens, not switch copying on or off")
    model.config.apply_settings(overrides)  # settings read at ingest / select time, not weights
    if model.tokenizer is None:
        raise ConfigError(f"--base: no tokenizer could be loaded from {base!r}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def _streams(args: argparse.Namespace) -> Any:
    builder = getattr(args, "builder", "lifecycle")
    if builder == "open":
        from .open_data import SPLIT_DEFAULTS as OPEN_DEFAULTS, build_open_dataset, open_split_style

        open_split_style(args.split)
        shape = dict(OPEN_DEFAULTS, **({} if args.filler_tokens is None else {"filler_tokens": args.filler_tokens}))
        return build_open_dataset(args.split, args.num_streams, args.seed, **shape)
    if builder == "counterfactual":
        from .counterfactual import build_counterfactual_dataset

        shape = {} if args.filler_tokens is None else {"filler_tokens": args.filler_tokens}
        return build_counterfactual_dataset(args.split, args.num_streams, args.seed, **shape)
    from .lifecycle_data import SPLIT_DEFAULTS, build_dataset, split_style

    split_style(args.split)  # ConfigError naming the split before anything is loaded
    shape = dict(SPLIT_DEFAULTS[args.split], filler_source=args.filler_source)
    if args.synthetic_names:
        shape["synthetic_names"] = args.synthetic_names
    if args.filler_tokens is not None:
        shape["filler_tokens"] = args.filler_tokens
    return build_dataset(args.split, args.num_streams, args.seed, **shape)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: load base + adapter, build held-out streams, evaluate, print and write rows."""
    args = _parser().parse_args(argv)
    methods = _check_methods(args.methods)  # bad names fail before the model loads
    kinds = None if args.kinds is None else [k for k in args.kinds.split(",") if k.strip()]
    _check_kinds(kinds)
    base, adapter = _model_dirs(args)
    streams = _streams(args)
    model = _load_model(args, base, adapter)
    preds: list[dict] = []
    rows = evaluate_generation(model, streams, methods, kinds, args.max_new_tokens, args.full_context_tokens,
                               args.tail_tokens, progress=not args.no_progress, predictions=preds, chat=args.chat,
                               split=args.split)
    n_tok = sorted({p["stream"]: p["stream_tokens"] for p in preds}.values())
    print(f"split {args.split}, {len(streams)} streams, stream tokens {n_tok[0] if n_tok else 0}.."
          f"{n_tok[-1] if n_tok else 0}, injection {model.config.injection}")
    print(markdown_table(rows))
    if args.json:
        write_rows_json(args.json, rows, required=("split", "method", "kind"))
    if args.predictions:
        write_rows_json(args.predictions, preds, required=("split", "method", "kind"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
