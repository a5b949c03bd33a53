"""The memory methods compared by ``memadapter eval``: one small class each, one interface.

Every method answers a :class:`~memadapter.evaluation.samples.Sample` with an :class:`Answer`
(its text, or ``None`` with a note when it cannot take the sample) on the same frozen backbone.
They differ only in what they put before the question (kvpress-style: the pipeline is fixed, the
method decides what the model keeps):

    full_context       the whole context, when prompt + answer fit the backbone's window
    tail               the last ``tail_tokens`` tokens of the context
    bm25               the ``top_k`` context chunks BM25 (bm25s) ranks highest for the query
    dense              the ``top_k`` chunks closest to the query in mean-pooled backbone states
    memadapter_prefix  the trained adapter: ingest the context, inject the selection as prefix
    memadapter_text    the same selection written as text into the chat prompt (no training used
                       beyond the selection itself)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from memadapter.errors import ConfigError

from .samples import Sample, prompt_ids, user_text
from .text import split_sentences

__all__ = ["Answer", "LM", "Method", "FullContext", "TailWindow", "BM25Retrieval", "DenseRetrieval", "MemAdapterMethod",
           "chunk_text", "METHOD_NAMES", "MEMADAPTER_METHODS"]

MEMADAPTER_METHODS = ("memadapter_prefix", "memadapter_text")
METHOD_NAMES = ("full_context", "tail", "bm25", "dense") + MEMADAPTER_METHODS


@dataclass
class Answer:
    """A method's prediction; ``text`` is None when it skipped the sample (``note`` says why).
    ``active`` is what it put before the question: chunk ids, or the memory's selected texts."""

    text: Optional[str]
    active: list = field(default_factory=list)
    note: str = ""


class LM:
    """The frozen backbone and its tokenizer: greedy answers to a prompt, cut at EOS."""

    def __init__(self, model: Any, tokenizer: Any, window: Optional[int] = None):
        self.model, self.tokenizer = model, tokenizer
        self.window = window or int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.device = next(model.parameters()).device

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def generate(self, ids: list[int], max_new_tokens: int) -> str:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, T]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                  max_new_tokens=max_new_tokens, pad_token_id=pad)
        return self.decode(out[0, len(ids):].tolist())

    def decode(self, new: list[int]) -> str:
        eos = self.tokenizer.eos_token_id
        cut = new.index(eos) if eos in new else len(new)
        return self.tokenizer.decode(new[:cut], skip_special_tokens=True).strip()

    def answer(self, sample: Sample, context: Optional[str]) -> str:
        return self.generate(prompt_ids(self.tokenizer, user_text(sample, context), sample.answer_prefix),
                             sample.max_new_tokens)


class Method:
    """One way of fitting a long context to the backbone: ``answer(sample) -> Answer``.

    Example:
        >>> from memadapter.evaluation.methods import LM, BM25Retrieval
        >>> method = BM25Retrieval(LM(model, tokenizer), top_k=4)      # doctest: +SKIP
        >>> method.answer(sample).text, method.answer(sample).active    # doctest: +SKIP
        ('2856496.', [9, 10, 11, 12])
    """

    name = ""

    def __init__(self, lm: LM):
        self.lm = lm

    def answer(self, sample: Sample) -> Answer:
        raise NotImplementedError


class FullContext(Method):
    name = "full_context"

    def answer(self, sample: Sample) -> Answer:
        ids = prompt_ids(self.lm.tokenizer, user_text(sample, sample.context), sample.answer_prefix)
        need = len(ids) + sample.max_new_tokens
        if self.lm.window is not None and need > self.lm.window:
            return Answer(None, note=f"prompt + answer = {need} tokens > the backbone's window {self.lm.window}")
        return Answer(self.lm.generate(ids, sample.max_new_tokens))


class TailWindow(Method):
    name = "tail"

    def __init__(self, lm: LM, tail_tokens: int = 2048):
        super().__init__(lm)
        self.tail_tokens = tail_tokens

    def answer(self, sample: Sample) -> Answer:
        ids = self.lm.ids(sample.context)
        return Answer(self.lm.answer(sample, self.lm.tokenizer.decode(ids[-self.tail_tokens:])))


def chunk_text(tokenizer: Any, text: str, chunk_tokens: int) -> list[str]:
    """Consecutive sentences packed into chunks of at most ``chunk_tokens`` tokens (a longer
    sentence is a chunk of its own), so no fact is cut in half."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for sentence in split_sentences(text):
        n = len(tokenizer(sentence, add_special_tokens=False)["input_ids"]) + 1
        if current and size + n > chunk_tokens:
            chunks.append(" ".join(current))
            current, size = [], 0
        current.append(sentence)
        size += n
    if current:
        chunks.append(" ".join(current))
    return chunks


class _ChunkRetrieval(Method):
    """Chunks of the context ranked for the query; the ``top_k`` best go in, in document order."""

    def __init__(self, lm: LM, top_k: int = 4, chunk_tokens: int = 256):
        super().__init__(lm)
        self.top_k, self.chunk_tokens = top_k, chunk_tokens

    def rank(self, chunks: list[str], query: str) -> list[int]:
        raise NotImplementedError

    def answer(self, sample: Sample) -> Answer:
        chunks = chunk_text(self.lm.tokenizer, sample.context, self.chunk_tokens)
        picked = sorted(self.rank(chunks, sample.query)[: self.top_k])
        return Answer(self.lm.answer(sample, " ".join(chunks[i] for i in picked)), active=picked)


class BM25Retrieval(_ChunkRetrieval):
    name = "bm25"

    def rank(self, chunks: list[str], query: str) -> list[int]:
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(chunks, stopwords="en", show_progress=False), show_progress=False)
        q = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not q.vocab:  # a query of stopwords only: nothing to rank by, keep document order
            return list(range(len(chunks)))
        ids, _ = retriever.retrieve(q, k=len(chunks), show_progress=False)
        return [int(i) for i in ids[0]]


class DenseRetrieval(_ChunkRetrieval):
    """Cosine between mean-pooled hidden states (after ``layer``, default the middle one) of the
    query and of each chunk; the backbone reads each chunk on its own, layers past ``layer`` skipped."""

    name = "dense"

    def __init__(self, lm: LM, top_k: int = 4, chunk_tokens: int = 256, layer: Optional[int] = None):
        super().__init__(lm, top_k, chunk_tokens)
        self.layer = layer if layer is not None else max(1, lm.model.config.num_hidden_layers // 2)

    @torch.no_grad()
    def embed(self, text: str) -> torch.Tensor:
        from memadapter.modeling.backbones import read_hidden_states

        ids = torch.tensor([self.lm.ids(text) or [self.lm.tokenizer.eos_token_id]], device=self.lm.device)  # [1, T]
        hidden = read_hidden_states(self.lm.model, ids, torch.ones_like(ids), self.layer)  # [1, T, H]
        return torch.nn.functional.normalize(hidden[0].float().mean(0), dim=-1).cpu()  # [H]

    def rank(self, chunks: list[str], query: str) -> list[int]:
        keys = torch.stack([self.embed(c) for c in chunks])  # [N, H]
        return (keys @ self.embed(query)).argsort(descending=True).tolist()


class MemAdapterMethod(Method):
    """The trained adapter (``MemAdapterForCausalLM``) over the same backbone. The context is ingested
    once per sample and shared by both injections (each question starts from the post-ingest
    snapshot). ``prefix`` asks the bare question, as the adapter was trained; ``text`` writes the
    selection into the chat prompt, where an instruct model reads it."""

    _cache: dict = {}  # id(model) -> (sample id, memory, snapshot, ingest seconds)

    def __init__(self, lm: LM, adapter_model: Any, injection: str):
        if injection not in ("prefix", "text"):
            raise ConfigError(f"injection: expected 'prefix' or 'text', got {injection!r}")
        super().__init__(lm)
        self.model, self.injection = adapter_model, injection
        self.name = f"memadapter_{injection}"
        self.ingest_s = 0.0

    def memory(self, sample: Sample) -> Any:
        import time

        cached = MemAdapterMethod._cache.get(id(self.model))
        if cached is None or cached[0] != sample.id:
            start = time.perf_counter()
            memory = self.model.new_memory()
            self.model.ingest(memory, sample.context, progress=False)
            cached = (sample.id, memory, memory.snapshot(), time.perf_counter() - start)
            MemAdapterMethod._cache[id(self.model)] = cached
        cached[1].restore(cached[2])
        self.ingest_s = cached[3]  # the runner adds it to this method's latency even when reused
        return cached[1]

    @torch.no_grad()
    def answer(self, sample: Sample) -> Answer:
        memory = self.memory(sample)
        q = self.lm.ids(sample.query.strip())
        ids = torch.tensor([q], dtype=torch.long, device=self.lm.device)  # [1, T]
        selection = self.model.select(memory, ids, torch.ones_like(ids))
        active = [t for t in selection.texts[0] if t] + [f"branch:{selection.branch[0]}"]
        if self.injection == "text":
            return Answer(self.lm.answer(sample, selection.memory_text(0)), active=active)
        memory.restore(MemAdapterMethod._cache[id(self.model)][2])  # select credited slot usage: undo it
        out = self.model.generate(ids, torch.ones_like(ids), memory=memory, max_new_tokens=sample.max_new_tokens,
                                  do_sample=False)
        return Answer(self.lm.decode(out[0, len(q):].tolist()), active=active)
