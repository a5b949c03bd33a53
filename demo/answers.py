"""Three ways to answer a question about a long stream on one frozen backbone, as the demo compares them.

    memory   the trained adapter: the stream is ingested once; the bare question is asked and the
             entry its learned ReadScorer picks from the question's pool (a slot, or an event grounded
             again in a retrieved chunk) is injected as a prefix, exactly as ``generation_eval``'s
             memory row asks it
    tail     the last ``tail_tokens`` tokens of the stream in the chat prompt
    bm25     plain chunk retrieval: the ``top_k`` chunks BM25 ranks highest, in stream order, in the
             chat prompt (``memadapter eval``'s bm25 method)

The tail and bm25 prompts are ``generation_eval.chat_ids``: the chat template around the context,
the question and a short-answer instruction, the fair way to ask an instruct model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional, Sequence

import torch

from memadapter.errors import EmptyInputError
from memadapter.evaluation.methods import BM25Retrieval, LM, chunk_text
from memadapter.training.generation_eval import chat_ids, contains_answer, question_ids

MAX_NEW_TOKENS = 16  # room for a chat model's full sentence; the memory answer stops at EOS long before
TAIL_TOKENS = 2048
TOP_K_CHUNKS = 4
CHUNK_TOKENS = 256
METHODS = ("memory", "tail", "bm25")


@dataclass
class Answer:
    """One method's answer; ``source`` says where it read from ("slot", "chunk", "tail", "bm25")."""

    method: str
    text: str
    source: str


class Answerer:
    """Answers questions about one ingested stream with each of :data:`METHODS`.

    Example:
        >>> answerer = Answerer(model, tokenizer, memory, stream_text)   # doctest: +SKIP
        >>> answerer.answer("memory", "Where does Nadia Petrova live now?").text   # doctest: +SKIP
        'Vienna'
    """

    def __init__(self, model: Any, tokenizer: Any, memory: Any, text: str, *, tail_tokens: int = TAIL_TOKENS,
                 top_k: int = TOP_K_CHUNKS, chunk_tokens: int = CHUNK_TOKENS):
        self.model, self.tok, self.memory = model, tokenizer, memory
        self.snapshot = memory.snapshot()  # every question reads the post-ingest memory
        self.text, self.tail_tokens = text, tail_tokens
        self.bm25 = BM25Retrieval(LM(model.backbone, tokenizer), top_k=top_k, chunk_tokens=chunk_tokens)
        self._tail_prefix: Optional[tuple] = None  # (shared tail-prompt ids, generate's keyword, their KV cache)

    @cached_property
    def stream_ids(self) -> list[int]:
        """The stream's tokens (for the tail window; ``memadapter ask`` never needs them)."""
        return list(self.tok(self.text, add_special_tokens=False)["input_ids"])

    @cached_property
    def chunks(self) -> list[str]:
        """The stream in sentence-aligned chunks, for BM25."""
        return chunk_text(self.tok, self.text, self.bm25.chunk_tokens)

    def answer(self, method: str, question: str) -> Answer:
        if not question.strip():
            raise EmptyInputError("question: is empty")
        if method == "memory":
            return self._memory(question)
        if method == "tail":
            context = self.tok.decode(self.stream_ids[-self.tail_tokens:])
            ids = chat_ids(self.tok, question, context)
            return Answer("tail", self._bare(ids, self._tail_cache(ids, context)), "tail")
        picked = sorted(self.bm25.rank(self.chunks, question)[: self.bm25.top_k])
        context = " ".join(self.chunks[i] for i in picked)
        return Answer("bm25", self._bare(chat_ids(self.tok, question, context)), "bm25")

    def _memory(self, question: str) -> Answer:
        ids = self._tensor(question_ids(self.tok, question))
        # Which branch answers (a slot, or the chunk fallback) is read from a selection of its own;
        # generate selects again. A read credits slot usage, so each read starts from the snapshot.
        self.memory.restore(self.snapshot)
        source = "slot" if self.model.select(self.memory, ids, torch.ones_like(ids)).branch[0] == "memory" else "chunk"
        self.memory.restore(self.snapshot)
        out = self.model.generate(ids, torch.ones_like(ids), memory=self.memory, max_new_tokens=MAX_NEW_TOKENS,
                                  do_sample=False, pad_token_id=self._pad())
        return Answer("memory", self._decode(out[0, ids.shape[1]:].tolist()), source)

    @torch.no_grad()
    def _bare(self, ids: list[int], cache: Any = None) -> str:
        """The backbone alone (adapter off) answers the prompt ``ids``; ``cache`` ((generate's keyword, KV
        cache)) holds a prefix of it."""
        t = self._tensor(ids)
        extra = {} if cache is None else {cache[0]: cache[1]}
        with self.model.disable_adapter():
            out = self.model.generate(t, torch.ones_like(t), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                      pad_token_id=self._pad(), **extra)
        return self._decode(out[0, t.shape[1]:].tolist())

    @torch.no_grad()
    def _tail_cache(self, ids: list[int], context: str) -> Any:
        """A copy of the backbone's KV cache for the part of the tail prompt every question shares (the
        chat header and the 2K-token tail), read once: without it each question reads the tail again,
        the slowest step of the demo. None when ``ids`` does not start with that part."""
        if self._tail_prefix is None:
            other = chat_ids(self.tok, "?", context)  # a second question shows where the prompts part
            shared = next((i for i, (a, b) in enumerate(zip(ids, other)) if a != b), min(len(ids), len(other)))
            prefix = ids[:min(shared, len(ids) - 1)]  # at least one token left for generate to read
            t = self._tensor(prefix)
            with self.model.disable_adapter():
                out = self.model.backbone(input_ids=t, attention_mask=torch.ones_like(t), use_cache=True)
            # transformers 5.x renamed past_key_values to cache (output field and generate keyword)
            name = "cache" if getattr(out, "cache", None) is not None else "past_key_values"
            self._tail_prefix = (prefix, name, getattr(out, name))
        prefix, name, cache = self._tail_prefix
        return (name, copy.deepcopy(cache)) if ids[:len(prefix)] == prefix and len(prefix) < len(ids) else None

    def _tensor(self, ids: list[int]) -> torch.Tensor:
        device = next(self.model.backbone.parameters()).device
        return torch.tensor([ids], dtype=torch.long, device=device)  # [1, T]

    def _pad(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    def _decode(self, new: list[int]) -> str:
        """New tokens -> answer: cut at EOS, then at the first line break (as generation_eval does)."""
        eos = self.tok.eos_token_id
        cut = new.index(eos) if eos in new else len(new)
        return self.tok.decode(new[:cut], skip_special_tokens=True).strip().split("\n", 1)[0].strip()


def is_right(prediction: str, answer: str, stale: Sequence[str] = ()) -> bool:
    """``answer`` occurs in the prediction (whole words, SQuAD-normalised) and no stale value does."""
    return contains_answer(prediction, answer) and not any(contains_answer(prediction, s) for s in stale)


def mark(right: Optional[bool]) -> str:
    return "" if right is None else ("RIGHT" if right else "WRONG")
