"""Read stage 1, candidates: each question's pool of slots and grounded events.

Per question (:meth:`CandidatesMixin.read_pools`): the usable slots of its memory row, and the
events the GroundingHead proposes again in the chunks retrieved for it (facts that were never
written, updates the write path missed, the look-alike the question names). Each entry is
described for the scorer as a :class:`~memadapter.modeling.read_scorer.ReadPool`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from memadapter.errors import ShapeError
from memadapter.heads import EVENT_TYPES
from memadapter.request_memory import RequestMemory

from .read_scorer import ReadPool
from .selection import GroundedEvent, question_names, sentence_around


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
        """Encode the questions once and build one :class:`QuestionPool` per row."""
        self._check_memory(memory)
        attention_mask = self._check_ids(input_ids, attention_mask)
        if memory.batch_size != input_ids.shape[0]:
            raise ShapeError(f"memory: batch size {memory.batch_size} does not match input_ids batch {input_ids.shape[0]}")
        hidden = self._hidden(input_ids, attention_mask)  # [B, T, H]
        query = self.query_head(hidden, attention_mask.bool()).float().cpu()  # [B, dk]
        chunk_query = self._mean(hidden, attention_mask).float().cpu()  # [B, H]
        texts = [self._decode(r) for r in self._unpadded(input_ids, attention_mask)]
        return [self._question_pool(memory, b, query[b], chunk_query[b], texts[b]) for b in range(len(texts))]

    def _question_pool(self, memory: RequestMemory, b: int, query: torch.Tensor, chunk_query: torch.Tensor,
                       question: str) -> QuestionPool:
        """Row ``b``'s usable slots (occupied, confidence >= ``router_confidence_threshold``) and the
        events grounded in its retrieved chunks, described for the scorer."""
        mem = memory.slots
        slots = (mem.occupied[b] & (mem.confidence[b] >= self.config.read.router_confidence_threshold)
                 ).nonzero().flatten().tolist()
        chunks = self._retrieved_chunks(memory, b, chunk_query, question)
        written = {int(mem.span[b, m, 0]) for m in slots}  # an event a slot holds is that slot, resolved
        events = [replace(e, score=float(e.key @ query)) for e in self._chunk_events(memory, b, chunks)
                  if e.position not in written]
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
            withdrawn=torch.tensor([bool(mem.retracted[b, m]) for m in slots] + [e.event_type == "retract" for e in events]),
            event_types=[""] * len(slots) + [e.event_type for e in events],
            confidence=torch.cat([mem.confidence[b, slots].float().cpu(), torch.ones(len(events))]))
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

    def _chunk_events(self, memory: RequestMemory, b: int, chunk_ids: list[int]) -> list[GroundedEvent]:
        """Every event the GroundingHead proposes in chunks ``chunk_ids`` of row ``b`` that has a
        value span or is typed a retraction (value text None), in chunk order, unscored (score 0);
        [] without chunk text or tokenizer. What it finds does not depend on the question."""
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
                                            self._sentence(memory, b, chunk_ids[r], k0, end, tokens)))
        return events

    def _sentence(self, memory: RequestMemory, b: int, chunk_id: int, start: int, end: int,
                  tokens: dict[int, list[int]]) -> str:
        """The sentence around tokens ``start:end`` of chunk ``chunk_id`` of row ``b`` (offsets in the
        chunk; :func:`sentence_around`). ``tokens`` caches each chunk's ids."""
        if chunk_id not in tokens:
            tokens[chunk_id] = self._tok()(memory.indexes[b].text(chunk_id), add_special_tokens=False)["input_ids"]
        return sentence_around(self._decode, tokens[chunk_id], start, end)

    def _slot_sentences(self, memory: RequestMemory, b: int) -> list[Optional[str]]:
        """Per slot of row ``b``, the sentence of the event it holds, re-read from the chunk it came
        from (its key text when the chunk is gone or the slot was written by hand; None: free)."""
        key_text = memory.slots.key_text[b]
        index, tokens, out = memory.indexes[b], {}, []
        for m, key in enumerate(key_text):
            chunk_id = int(memory.slots.chunk_id[b, m])
            if key is None or not 0 <= chunk_id < len(index) or index.text(chunk_id) is None:
                out.append(key)
                continue
            start, end = (int(x) - index.span(chunk_id)[0] for x in memory.slots.span[b, m])  # the chunk's tokens again
            out.append(self._sentence(memory, b, chunk_id, start, end, tokens))
        return out
