"""The read path of MemAdapterForCausalLM: a batch of questions -> one :class:`Selection`.

Per question, one candidate pool (:meth:`MemoryReaderMixin.read_pools`): the usable slots of its
memory row and the events the GroundingHead proposes again in the chunks retrieved for it (facts
that were never written, updates the write path missed, the look-alike the question names). The
learned :class:`~memadapter.modeling.read_scorer.ReadScorer` scores every entry from its
features (:func:`~memadapter.modeling.read_scorer.pool_features`) and the best one is injected: a
slot with up to ``top_k - 1`` more slots, or one grounded event. A row with an empty pool injects
the retrieved chunks' summaries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from memadapter.errors import ShapeError
from memadapter.heads import EVENT_TYPES
from memadapter.request_memory import RequestMemory
from memadapter.router import FALLBACK, MEMORY

from .read_scorer import ReadPool, pool_features
from .selection import GroundedEvent, SelectedRow, Selection, question_names, sentence_around, stack_selection

WITHDRAWN = "no longer known"  # the text of a withdrawn entry (a tombstone or a retraction), for text injection


@dataclass
class QuestionPool:
    """One question's candidates: ``pool`` (what the scorer reads) over ``slots`` (slot indices of
    the row, first in the pool) and ``events`` (grounded in ``chunks``, the retrieved chunk ids)."""

    question: str
    pool: ReadPool
    slots: list[int]
    events: list[GroundedEvent]
    chunks: list[int]


class MemoryReaderMixin:
    """``select`` and its helpers, mixed into :class:`MemAdapterForCausalLM`; it uses the model's
    config, query_head, grounding, read_scorer, tokenizer and hidden-state helpers (``_hidden``,
    ``_mean``, ``_decode``, ``_tok``, ``_right_pad``).

    Example:
        >>> from memadapter.modeling import MemAdapterForCausalLM
        >>> issubclass(MemAdapterForCausalLM, MemoryReaderMixin)
        True
    """

    def _unpadded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
        return [input_ids[b][attention_mask[b].bool()].tolist() for b in range(input_ids.shape[0])]

    @torch.no_grad()
    def select(self, memory: RequestMemory, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Selection:
        """Build each question's pool, score every entry of the batch in one scorer call, and
        gather what each row injects."""
        pools = self.read_pools(memory, input_ids, attention_mask)
        scores, valid = self.score_pools(pools)  # [B, N] each
        rows = []
        for b, qp in enumerate(pools):
            if not len(qp.pool):
                rows.append(self._chunk_row(memory, b, qp.chunks))
                continue
            pick = int(scores[b].masked_fill(~valid[b], float("-inf")).argmax())
            if pick >= len(qp.slots):
                rows.append(self._event_row(qp.events[pick - len(qp.slots)]))
                continue
            rest = sorted(range(len(qp.slots)), key=lambda i: -float(scores[b, i]))
            idx = [qp.slots[pick]] + [qp.slots[i] for i in rest if i != pick][:self.config.top_k - 1]
            self._credit_usage(memory, b, idx)
            rows.append(self._slot_row(memory, b, idx))
        return stack_selection(rows, self.config.value_dim, self.config.value_tokens)

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

    @torch.no_grad()
    def score_pools(self, pools: list[QuestionPool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every entry of every pool scored in one call: (scores [B, N], valid [B, N])."""
        feats = [pool_features(qp.question, qp.pool) for qp in pools]
        n = max([1] + [f.shape[0] for f in feats])
        x = torch.zeros(len(pools), n, feats[0].shape[-1] if feats else 1)  # [B, N, F]
        valid = torch.zeros(len(pools), n, dtype=torch.bool)
        for b, f in enumerate(feats):
            x[b, :f.shape[0]], valid[b, :f.shape[0]] = f, True
        return self.read_scorer(x).float().cpu(), valid

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

    def _credit_usage(self, memory: RequestMemory, b: int, idx: list[int]) -> None:
        """A read keeps a slot alive: each selected slot of row ``b`` gets an equal share of one use."""
        mem = memory.slots
        mem.usage = mem.usage.index_put((torch.full((len(idx),), b), torch.tensor(idx)),
                                        torch.full((len(idx),), 1.0 / len(idx), dtype=mem.usage.dtype), accumulate=True)

    def _slot_row(self, memory: RequestMemory, b: int, idx: list[int]) -> SelectedRow:
        """Slots ``idx`` of row ``b`` as entries "key: value" (a withdrawn one: "no longer known",
        copying ``withdrawn_text``)."""
        key_text = [memory.slots.key_text[b][m] or "" for m in idx]
        value_text = [memory.slots.value_text[b][m] for m in idx]
        return SelectedRow(memory.slots.values[b, idx],
                           [f"{k}: {WITHDRAWN if v is None else v}" for k, v in zip(key_text, value_text)],
                           [self.value_token_ids(self.config.read.withdrawn_text if v is None else v) for v in value_text],
                           MEMORY, key_text)

    def _chunk_row(self, memory: RequestMemory, b: int, ids: list[int]) -> SelectedRow:
        """Nothing to score: the retrieved chunks' summaries, with no value span to copy."""
        vecs = memory.indexes[b].vectors[ids] if ids else torch.zeros(0, self.config.hidden_size)
        return SelectedRow(self._chunk_values(vecs), [memory.indexes[b].text(i) or "" for i in ids],
                           [[] for _ in ids], FALLBACK)

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

    def _event_row(self, event: GroundedEvent) -> SelectedRow:
        """A grounded event as a one-entry fallback row ("key: value", its value ids; a retraction
        reads "no longer known" and copies ``withdrawn_text``)."""
        value = WITHDRAWN if event.value_text is None else event.value_text
        ids = self.value_token_ids(self.config.read.withdrawn_text if event.value_text is None else event.value_text)
        return SelectedRow(event.value[None], [f"{event.key_text}: {value}"], [ids], FALLBACK, [event.key_text])

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

    def value_token_ids(self, value_text: Optional[str]) -> list[int]:
        """A slot's value text -> its first ``value_tokens`` ids, tokenised as it reads mid-sentence
        (leading space), the way training takes them from the stream; [] without text or tokenizer."""
        n = self.config.value_tokens
        if n == 0 or not value_text or not value_text.strip() or self.tokenizer is None:
            return []
        return list(self.tokenizer(" " + value_text.strip(), add_special_tokens=False)["input_ids"])[:n]

    def _chunk_values(self, vecs: torch.Tensor) -> torch.Tensor:
        """Chunk summaries [k, H] -> value space [k, dv] through the grounding head's value path."""
        if vecs.shape[0] == 0:
            return torch.zeros(0, self.config.value_dim)
        w = self.grounding.value_proj.weight
        return self.grounding.value_proj(self.grounding.norm(vecs.to(w.device, w.dtype))).float().cpu()
