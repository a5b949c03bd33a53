"""Read stage 1, candidates: each question's pool of slots and grounded events.

Per question (:meth:`CandidatesMixin.read_pools`): the usable slots of its memory row, and the
events the GroundingHead proposes again in the chunks retrieved for it (facts that were never
written, updates the write path missed, the look-alike the question names). Each entry is
described for the scorer as a :class:`~memadapter.modeling.read_scorer.ReadPool`.

What the GroundingHead proposes in a chunk does not depend on the question, so each chunk is
grounded once per memory: :class:`ChunkRead` (its token ids, events and sentences) is kept in the
memory's request-local ``read_cache``, keyed by (row, chunk id, chunk text) and valid for one model
state (:meth:`CandidatesMixin._read_cache`), and the uncached chunks of every row of a batch are
grounded together in one padded backbone forward. Inside :func:`reference_read` the read path takes
the plain per-row reference instead (no cache; one forward per row), which the tests compare against.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional, Sequence

import torch

from memadapter.errors import ShapeError
from memadapter.heads import EVENT_TYPES
from memadapter.request_memory import RequestMemory

from .read_scorer import ReadPool
from .selection import GroundedEvent, question_names, sentence_around

# Padded tokens (chunks x longest chunk) per backbone forward when grounding, which bounds the
# activations and attention scores of a large batch whatever the chunk size. On a CPU a wider forward
# saves nothing and adds memory traffic (one thread, SmolLM2: 24 chunks of 509 tokens took 10.5 s in
# one forward, 9.6 s in groups of 8, 9.3 s in groups of 3); on an accelerator one wide forward is what
# batching buys (that budget is a bound on memory, not a measured optimum).
GROUND_TOKENS = {"cpu": 4096, "other": 32768}
# True inside reference_read(): the read path grounds per row, without the cache
_REFERENCE_READ: ContextVar[bool] = ContextVar("memadapter_reference_read", default=False)


@contextmanager
def reference_read() -> Iterator[None]:
    """Inside the block (this thread / task only), ``read_pools`` and ``select`` take the plain
    reference path: no ``read_cache``, every question's retrieved chunks grounded again in one
    forward per row, sentences re-read from freshly tokenised chunks. Tests and benches compare
    the cached path against it."""
    token = _REFERENCE_READ.set(True)
    try:
        yield
    finally:
        _REFERENCE_READ.reset(token)


@dataclass
class ChunkRead:
    """What the read path found in one chunk, whatever the question: its token ids, the events the
    GroundingHead proposes in it (``position`` relative to the chunk start; None: not grounded yet),
    the sentences read from it by (start, end) token span, and the text of each token id met by
    :func:`sentence_around` (its one-token decodes)."""

    tokens: list[int]
    events: Optional[list[GroundedEvent]] = None
    sentences: dict[tuple[int, int], str] = field(default_factory=dict)
    pieces: dict[int, str] = field(default_factory=dict)


def token_groups(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of ``sizes`` (token counts) in order, cut into groups whose padded size (count x
    longest) stays within ``budget`` tokens (a longer row makes a group of its own).

    Example:
        >>> token_groups([4, 3, 4, 9, 2], 12)
        [[0, 1, 2], [3], [4]]
    """
    groups, width = [], 0
    for i, size in enumerate(sizes):
        width = max(width, size)
        if groups and width * (len(groups[-1]) + 1) <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
            width = size
    return groups


@dataclass
class QuestionPool:
    """One question's candidates: ``pool`` (what the scorer reads) over ``slots`` (slot indices of
    the row, first in the pool) and ``events`` (grounded in ``chunks``, the retrieved chunk ids)."""

    question: str
    pool: ReadPool
    slots: list[int]
    events: list[GroundedEvent]
    chunks: list[int]


class CandidatesMixin:
    """Pool building, mixed into the model through :class:`~memadapter.modeling.reader.MemoryReaderMixin`;
    it uses the model's config, query_head, grounding, tokenizer and hidden-state helpers."""

    def _unpadded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
        return [input_ids[b][attention_mask[b].bool()].tolist() for b in range(input_ids.shape[0])]

    @torch.no_grad()
    def read_pools(self, memory: RequestMemory, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[QuestionPool]:
        """Encode the questions once, ground the retrieved chunks of every row not grounded yet
        (one padded forward for the batch) and build one :class:`QuestionPool` per row."""
        self._check_memory(memory)
        attention_mask = self._check_ids(input_ids, attention_mask)
        if memory.batch_size != input_ids.shape[0]:
            raise ShapeError(f"memory: batch size {memory.batch_size} does not match input_ids batch {input_ids.shape[0]}")
        hidden = self._hidden(input_ids, attention_mask)  # [B, T, H]
        query = self.query_head(hidden, attention_mask.bool()).float().cpu()  # [B, dk]
        chunk_query = self._mean(hidden, attention_mask).float().cpu()  # [B, H]
        texts = [self._decode(r) for r in self._unpadded(input_ids, attention_mask)]
        chunks = [self._retrieved_chunks(memory, b, chunk_query[b], texts[b]) for b in range(len(texts))]
        if not _REFERENCE_READ.get():
            self._ground(memory, [(b, i) for b, ids in enumerate(chunks) for i in ids])
        answers = self._answer_events(memory, texts, chunks)  # the pointer's, one batch of forwards
        return [self._question_pool(memory, b, query[b], texts[b], chunks[b], answers[b]) for b in range(len(texts))]

    def _question_pool(self, memory: RequestMemory, b: int, query: torch.Tensor, question: str,
                       chunks: list[int], answers: Sequence[GroundedEvent] = ()) -> QuestionPool:
        """Row ``b``'s usable slots (occupied, confidence >= ``router_confidence_threshold``), the
        events grounded in its retrieved ``chunks`` and the pointer's ``answers``, described for the scorer."""
        mem = memory.slots
        slots = (mem.occupied[b] & (mem.confidence[b] >= self.config.read.router_confidence_threshold)
                 ).nonzero().flatten().tolist()
        written = {int(mem.span[b, m, 0]) for m in slots}  # an event a slot holds is that slot, resolved
        events = [replace(e, score=float(e.key @ query)) for e in self._chunk_events(memory, b, chunks)
                  if e.position not in written] + [replace(e, score=float(e.key @ query)) for e in answers]
        slot_sentences = self._slot_sentences(memory, b)
        keys = torch.cat([mem.keys[b, slots].float().cpu(),
                          torch.stack([e.key for e in events]) if events else torch.zeros(0, mem.key_dim)])
        pool = ReadPool(
            key_texts=[mem.key_text[b][m] or "" for m in slots] + [e.key_text for e in events],
            sentences=[slot_sentences[m] or "" for m in slots] + [e.sentence or e.key_text for e in events],
            value_texts=[mem.value_text[b][m] for m in slots] + [e.value_text for e in events],
            keys=keys, match=keys @ query,
            order=torch.tensor([float(mem.span[b, m, 0]) + 0.5 for m in slots] + [float(e.position) for e in events]),
            is_slot=torch.tensor([True] * len(slots) + [False] * len(events)),
            withdrawn=torch.tensor([bool(mem.retracted[b, m]) for m in slots] + [e.withdraws for e in events]),
            event_types=[""] * len(slots) + [e.event_type for e in events],
            confidence=torch.cat([mem.confidence[b, slots].float().cpu(), torch.ones(len(events))]),
            answer_margin=torch.tensor([0.0] * len(slots) + [e.answer_margin or 0.0 for e in events]) if answers else None,
            answer_hedge=torch.tensor([0.0] * len(slots) + [e.answer_hedge or 0.0 for e in events]) if answers else None,
            restated_run=torch.tensor([0.0] * len(slots) + [e.restated_run or 0.0 for e in events]) if answers else None,
            restated_span=torch.tensor([0.0] * len(slots) + [e.restated_span or 0.0 for e in events]) if answers else None)
        return QuestionPool(question, pool, slots, events, chunks)

    def _retrieved_chunks(self, memory: RequestMemory, b: int, chunk_query: torch.Tensor, question: str) -> list[int]:
        """Chunk ids of row ``b`` for a question: the ``num_fallback_chunks`` best by the hybrid
        search (``chunk_query`` [H] and the question's words), then up to ``name_chunks`` more that
        hold the question's names, best by BM25 over the names alone: a fact stated in other words
        than the question's loses the hybrid search to filler that shares the common words, but its
        entity's name is rare in the filler."""
        index, cfg, read = memory.indexes[b], self.config, self.config.read
        if not len(index):
            return []
        ids = [i for i in index.search(chunk_query, question, cfg.num_fallback_chunks).expanded[0] if i >= 0]
        names = question_names(question)
        if read.name_chunks and names:
            _, _, by_name = index.hybrid_scores(chunk_query, " ".join(sorted(names)))  # [1, N] each
            order = torch.sort(by_name[0], descending=True, stable=True).indices.tolist()
            ids += [i for i in order if float(by_name[0, i]) > 0 and i not in ids][:read.name_chunks]
        return ids

    def _read_cache(self, memory: RequestMemory) -> dict[tuple[int, int, str], ChunkRead]:
        """``memory.read_cache``, emptied first when it was filled by another model state: what a
        chunk yields depends on this model object (its backbone), the adapter (its heads and read
        layer: the fingerprint), the tokenizer, the ingest settings that shape proposals and a tag
        bias (``GroundingHead.tag_bias``). A memory that carries its adapter's fingerprint stands
        for it (``_check_memory`` refuses it to any other adapter, or to this one once changed),
        which spares hashing the weights per call."""
        tokenizer = None if self.tokenizer is None else weakref.ref(self.tokenizer)
        adapter = memory.adapter_id if memory.adapter_id is not None else self.adapter_fingerprint()
        bias = getattr(self.grounding, "_tag_bias", None)  # GroundingHead.tag_bias, a bench hook
        owner = (weakref.ref(self), adapter, tokenizer, self.config.ingest.snap_spans,
                 None if bias is None else tuple(bias.tolist()))  # a weakref equals another only while its object lives
        if memory.read_cache_owner != owner:
            memory.read_cache.clear()
            memory.read_cache_owner = owner
        return memory.read_cache

    def _chunk_read(self, memory: RequestMemory, b: int, chunk_id: int,
                    cache: dict[tuple[int, int, str], ChunkRead]) -> Optional[ChunkRead]:
        """Chunk ``chunk_id`` of row ``b`` as cached (tokenised on first use, not grounded); None
        for a dense-only chunk (no text)."""
        text = memory.indexes[b].text(chunk_id)
        if text is None:
            return None
        key = (b, chunk_id, text)  # the text as well: a restore() may give the id other text
        if key not in cache:
            cache[key] = ChunkRead(self._tok()(text, add_special_tokens=False)["input_ids"])
        return cache[key]

    @torch.no_grad()
    def _ground(self, memory: RequestMemory, wanted: Sequence[tuple[int, int]]) -> None:
        """Ground every (row, chunk id) of ``wanted`` that is not grounded yet, whatever rows they
        belong to: one padded backbone forward per group of up to ``GROUND_TOKENS`` padded tokens (a
        batch's chunks all at once unless they are many or long)."""
        if self.tokenizer is None:
            return
        cache = self._read_cache(memory)
        todo = {}  # id(ChunkRead) -> ChunkRead: a chunk wanted twice is grounded once
        for b, i in wanted:
            entry = self._chunk_read(memory, b, i, cache)
            if entry is not None and entry.events is None and not entry.tokens:
                entry.events = []  # nothing to read (the reference skips an empty text too)
            elif entry is not None and entry.events is None:
                todo[id(entry)] = entry
        budget = GROUND_TOKENS["cpu" if self._device().type == "cpu" else "other"]
        pending = list(todo.values())
        for idx in token_groups([len(e.tokens) for e in pending], budget):
            group = [pending[i] for i in idx]
            rows = [e.tokens for e in group]
            ids, mask = self._right_pad(rows)
            for entry, proposals in zip(group, self._propose(self._hidden(ids, mask), mask, rows)):
                entry.events = self._events(proposals, entry.tokens, self._decoder(entry), entry.sentences)

    def _events(self, proposals: list, tokens: list[int], decode: Callable[[Sequence[int]], str],
                sentences: dict[tuple[int, int], str]) -> list[GroundedEvent]:
        """One chunk's proposals -> the events that have a value span or are typed a retraction
        (value text None), unscored (score 0), ``position`` the key's offset in the chunk."""
        events = []
        for c in proposals:
            kind = EVENT_TYPES[c.event_type]
            if c.value_span is None and kind != "retract":
                continue
            (k0, k1), end = c.key_span, (c.value_span or c.key_span)[1]
            value = None if c.value_span is None else self._decode(tokens[slice(*c.value_span)])
            if (k0, end) not in sentences:
                sentences[(k0, end)] = sentence_around(decode, tokens, k0, end)
            events.append(GroundedEvent(self._decode(tokens[k0:k1]), value, c.value.float().cpu(), c.key.float().cpu(),
                                        kind, 0.0, k0, sentences[(k0, end)]))
        return events

    def _decoder(self, entry: ChunkRead) -> Callable[[Sequence[int]], str]:
        """``self._decode``, remembering one-token decodes in ``entry.pieces``: :func:`sentence_around`
        decodes a chunk token by token while it looks for sentence ends."""
        def decode(ids: Sequence[int]) -> str:
            if len(ids) != 1:
                return self._decode(ids)
            token = int(ids[0])
            if token not in entry.pieces:
                entry.pieces[token] = self._decode(ids)
            return entry.pieces[token]
        return decode

    def _chunk_events(self, memory: RequestMemory, b: int, chunk_ids: list[int]) -> list[GroundedEvent]:
        """Every event the GroundingHead proposes in chunks ``chunk_ids`` of row ``b`` that has a
        value span or is typed a retraction (value text None), in chunk order, unscored (score 0);
        [] without chunk text or tokenizer. What it finds does not depend on the question: each
        chunk is grounded once per memory (``read_cache``); ``position`` is an offset in the stream."""
        if _REFERENCE_READ.get():
            return self._chunk_events_reference(memory, b, chunk_ids)
        if self.tokenizer is None:
            return []
        self._ground(memory, [(b, i) for i in chunk_ids])
        cache, index, events = self._read_cache(memory), memory.indexes[b], []
        for i in chunk_ids:
            entry = self._chunk_read(memory, b, i, cache)
            if entry is not None:
                start = index.span(i)[0]
                events += [replace(e, position=start + e.position) for e in entry.events]
        return events

    def _chunk_events_reference(self, memory: RequestMemory, b: int, chunk_ids: list[int]) -> list[GroundedEvent]:
        """:meth:`_chunk_events` without the cache: row ``b``'s chunks grounded again, in one forward."""
        index = memory.indexes[b]
        chunk_ids = [i for i in chunk_ids if index.text(i)]
        if not chunk_ids or self.tokenizer is None:
            return []
        rows = [self._tok()(index.text(i), add_special_tokens=False)["input_ids"] for i in chunk_ids]
        ids, mask = self._right_pad(rows)
        proposals = self._propose(self._hidden(ids, mask), mask, rows)
        events, tokens = [], dict(zip(chunk_ids, rows))
        for r, row in enumerate(proposals):
            for c in row:
                kind = EVENT_TYPES[c.event_type]
                if c.value_span is None and kind != "retract":
                    continue
                (k0, k1), end = c.key_span, (c.value_span or c.key_span)[1]
                value = None if c.value_span is None else self._decode(rows[r][slice(*c.value_span)])
                events.append(GroundedEvent(self._decode(rows[r][k0:k1]), value, c.value.float().cpu(),
                                            c.key.float().cpu(), kind, 0.0,
                                            index.span(chunk_ids[r])[0] + k0,  # offset in the stream
                                            self._sentence_reference(memory, b, chunk_ids[r], k0, end, tokens)))
        return events

    def _sentence_reference(self, memory: RequestMemory, b: int, chunk_id: int, start: int, end: int,
                            tokens: dict[int, list[int]]) -> str:
        """The sentence around tokens ``start:end`` of chunk ``chunk_id`` of row ``b`` (offsets in the
        chunk; :func:`sentence_around`). ``tokens`` caches each chunk's ids."""
        if chunk_id not in tokens:
            tokens[chunk_id] = self._tok()(memory.indexes[b].text(chunk_id), add_special_tokens=False)["input_ids"]
        return sentence_around(self._decode, tokens[chunk_id], start, end)

    def _slot_sentences(self, memory: RequestMemory, b: int) -> list[Optional[str]]:
        """Per slot of row ``b``, the sentence of the event it holds, re-read from the chunk it came
        from (its key text when the chunk is gone, has no text or the slot was written by hand;
        None: free). Chunks' tokens and sentences come from the ``read_cache``."""
        if _REFERENCE_READ.get() or self.tokenizer is None:  # without a tokenizer every slot has no chunk text to read
            return self._slot_sentences_reference(memory, b)
        key_text, index, cache, out = memory.slots.key_text[b], memory.indexes[b], self._read_cache(memory), []
        for m, key in enumerate(key_text):
            chunk_id = int(memory.slots.chunk_id[b, m])
            held = key is not None and 0 <= chunk_id < len(index)
            entry = self._chunk_read(memory, b, chunk_id, cache) if held else None
            if entry is None:
                out.append(key)
                continue
            span = tuple(int(x) - index.span(chunk_id)[0] for x in memory.slots.span[b, m])  # the chunk's tokens again
            if span not in entry.sentences:
                entry.sentences[span] = sentence_around(self._decoder(entry), entry.tokens, *span)
            out.append(entry.sentences[span])
        return out

    def _slot_sentences_reference(self, memory: RequestMemory, b: int) -> list[Optional[str]]:
        """:meth:`_slot_sentences` without the cache: each chunk tokenised again."""
        key_text = memory.slots.key_text[b]
        index, tokens, out = memory.indexes[b], {}, []
        for m, key in enumerate(key_text):
            chunk_id = int(memory.slots.chunk_id[b, m])
            if key is None or not 0 <= chunk_id < len(index) or index.text(chunk_id) is None:
                out.append(key)
                continue
            start, end = (int(x) - index.span(chunk_id)[0] for x in memory.slots.span[b, m])  # the chunk's tokens again
            out.append(self._sentence_reference(memory, b, chunk_id, start, end, tokens))
        return out
