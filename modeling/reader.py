"""The read path of MemAdapterForCausalLM: a batch of questions -> one :class:`Selection`.

Per question: the QueryHead's key and the question's words score every slot; the Router sends the
question to the slot memory when a slot matches, else to the chunk fallback, where the retrieved
chunks are grounded again into events. Lifecycle rules then pick what is read: the newest version
of a fact (``version_margin``), a retrieved event that names a look-alike the question asks about
(``named_events``), a later update the write path missed. The rules themselves are plain
functions in :mod:`.selection`; this mixin applies them with the model's heads. With
``read_rule="joint"`` there is no branch decision: slots and grounded events compete in one pool
(``_joint_row``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from memadapter.bm25 import lexical_agreement, tokenize
from memadapter.errors import ShapeError
from memadapter.heads import EVENT_TYPES
from memadapter.request_memory import RequestMemory
from memadapter.router import FALLBACK, MEMORY, Router

from .selection import (GroundedEvent, SelectedRow, Selection, answer_type_rivals, covering_withdrawal, foreign_keys,
                        latest_version, most_specific, question_names, restore_by_attribute, restore_by_sentence,
                        sentence_around, slot_versions, stack_selection, without_inserted_names)

WITHDRAWN = "no longer known"  # the text of a retracted slot (retract_tombstones), for text injection


class MemoryReaderMixin:
    """``select`` and its helpers, mixed into :class:`MemAdapterForCausalLM`; it uses the model's
    config, query_head, grounding, tokenizer and hidden-state helpers (``_hidden``, ``_mean``,
    ``_decode``, ``_tok``, ``_right_pad``).

    Example:
        >>> from memadapter.modeling import MemAdapterForCausalLM
        >>> issubclass(MemAdapterForCausalLM, MemoryReaderMixin)
        True
    """

    def _unpadded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
        return [input_ids[b][attention_mask[b].bool()].tolist() for b in range(input_ids.shape[0])]

    @torch.no_grad()
    def select(self, memory: RequestMemory, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Selection:
        """Encode the question, route per row, and gather what each row injects."""
        cfg, read = self.config, self.config.read
        self._check_memory(memory)
        attention_mask = self._check_ids(input_ids, attention_mask)
        if memory.batch_size != input_ids.shape[0]:
            raise ShapeError(f"memory: batch size {memory.batch_size} does not match input_ids batch {input_ids.shape[0]}")
        hidden = self._hidden(input_ids, attention_mask)  # [B, T, H]
        query = self.query_head(hidden, attention_mask.bool()).float().cpu()  # [B, dk]
        chunk_query = self._mean(hidden, attention_mask).float().cpu()  # [B, H]
        texts = [self._decode(r) for r in self._unpadded(input_ids, attention_mask)]
        n_chunks = cfg.num_fallback_chunks
        router = Router(read.router_match_threshold, top_k_slots=cfg.top_k, top_k_chunks=n_chunks)
        bias = None
        if read.lexical_weight > 0:  # [B, M]: what each question's words say about each slot's key text
            bias = read.lexical_weight * torch.tensor([lexical_agreement(t, self._slot_lexical_texts(memory, b),
                                                                        read.lexical_content_words)
                                                      for b, t in enumerate(texts)])
        route = router.route(memory.slots, memory.indexes, query, texts, chunk_query, slot_bias=bias)
        # the route rule's version check; the joint rule scores its own pool
        scores = memory.slots.scores(query, bias)[:, 0] \
            if read.version_margin is not None and read.read_rule == "route" else None  # [B, M]
        rows = []
        for b, branch in enumerate(route.branch):
            if read.read_rule == "joint":
                joint = self._joint_row(memory, b, query[b], chunk_query[b], texts[b], None if bias is None else bias[b])
                if joint is not None:
                    rows.append(joint)
                    continue
                branch = FALLBACK
            idx = []
            if branch == MEMORY:
                slots = route.memory.indices[b, 0][route.memory.valid[b, 0]].tolist()
                if scores is not None:
                    slots = self._newest_versions(memory, b, scores[b], slots)
                conf = memory.slots.confidence[b]
                idx = [m for m in slots if conf[m] >= read.router_confidence_threshold]
            if idx:
                # the key match alone (no confidence or usage terms), comparable to a grounded event's score
                slot_score = None if scores is None else float(scores[b, idx[0]] - memory.slots.read_bias()[b, idx[0]])
                rows.append(self._named_event_or(self._slot_row(memory, b, idx), memory, b, chunk_query[b], query[b],
                                                 texts[b], idx[0], slot_score))
                continue
            # Fallback, also for a matched row whose slots are all below the confidence bar.
            found = route.chunks[b] or memory.indexes[b].search(chunk_query[b], texts[b], n_chunks)
            ids = [i for i in found.expanded[0] if i >= 0]
            event = self._current_event(self._ground_chunks(memory, b, ids, query[b], texts[b])) \
                if read.ground_fallback else None
            if event is not None:
                rows.append(self._event_row(event))
                continue
            vecs = memory.indexes[b].vectors[ids] if ids else torch.zeros(0, cfg.hidden_size)  # chunk summaries:
            rows.append(SelectedRow(self._chunk_values(vecs), [memory.indexes[b].text(i) or "" for i in ids],
                                    [[] for _ in ids], FALLBACK))  # no value span to copy
        return stack_selection(rows, cfg.value_dim, cfg.value_tokens)

    def _slot_row(self, memory: RequestMemory, b: int, idx: list[int]) -> SelectedRow:
        """Slots ``idx`` of row ``b`` as entries "key: value" (a withdrawn one: "no longer known",
        copying ``withdrawn_text``), their values [k, dv] the resolved latest versions."""
        key_text = [memory.slots.key_text[b][m] or "" for m in idx]
        value_text = [memory.slots.value_text[b][m] for m in idx]
        return SelectedRow(memory.slots.values[b, idx],
                           [f"{k}: {WITHDRAWN if v is None else v}" for k, v in zip(key_text, value_text)],
                           [self.value_token_ids(self.config.read.withdrawn_text if v is None else v) for v in value_text],
                           MEMORY, key_text)

    def _ground_chunks(self, memory: RequestMemory, b: int, chunk_ids: list[int],
                       query: torch.Tensor, question: str) -> list[GroundedEvent]:
        """Query-time grounding of retrieved chunks: every proposed event with a value span
        (:meth:`_chunk_events`), scored against the question (:meth:`_score_events`).

        Facts that were never written (no write signal) live only in the chunk index; reading the
        retrieved chunks again with the GroundingHead turns them into slot-like entries, so the
        injector sees one event's value instead of a whole chunk's summary.
        """
        return self._score_events(self._chunk_events(memory, b, chunk_ids), query, question)

    def _chunk_events(self, memory: RequestMemory, b: int, chunk_ids: list[int]) -> list[GroundedEvent]:
        """Every event with a value span that the GroundingHead proposes in chunks ``chunk_ids`` of
        row ``b``, in chunk order, unscored (score 0); [] without chunk text or tokenizer. What it
        finds does not depend on the question, so a caller may ground every chunk once."""
        index = memory.indexes[b]
        chunk_ids = [i for i in chunk_ids if index.text(i)]
        if not chunk_ids or self.tokenizer is None:
            return []
        rows = [self._tok()(index.text(i), add_special_tokens=False)["input_ids"] for i in chunk_ids]
        ids, mask = self._right_pad(rows)
        proposals = self._propose(self._hidden(ids, mask), mask, rows)
        events, tokens = [], dict(zip(chunk_ids, rows))
        for r, row in enumerate(proposals):
            for c in (c for c in row if c.value_span is not None):
                (k0, k1), (v0, v1) = c.key_span, c.value_span
                events.append(GroundedEvent(self._decode(rows[r][k0:k1]), self._decode(rows[r][v0:v1]),
                                            c.value.float().cpu(), c.key.float().cpu(), EVENT_TYPES[c.event_type], 0.0,
                                            index.span(chunk_ids[r])[0] + k0,  # offset in the stream
                                            self._sentence(memory, b, chunk_ids[r], k0, v1, tokens)))
        return events

    def _sentence(self, memory: RequestMemory, b: int, chunk_id: int, start: int, end: int,
                  tokens: dict[int, list[int]]) -> str:
        """The sentence around tokens ``start:end`` of chunk ``chunk_id`` of row ``b`` (offsets in the
        chunk; :func:`sentence_around`). ``tokens`` caches each chunk's ids."""
        if chunk_id not in tokens:
            tokens[chunk_id] = self._tok()(memory.indexes[b].text(chunk_id), add_special_tokens=False)["input_ids"]
        return sentence_around(self._decode, tokens[chunk_id], start, end)

    def _score_events(self, events: list[GroundedEvent], query: torch.Tensor, question: str) -> list[GroundedEvent]:
        """``events`` scored by their key's match with ``query`` [dk] plus ``lexical_weight`` times
        the question's agreement with their key texts (or sentences). Events typed irrelevant
        (rumours, guesses) are passed over when any other candidate exists."""
        relevant = [e for e in events if e.event_type != "irrelevant"] or events
        lexical = [0.0] * len(relevant)
        if self.config.read.lexical_weight > 0 and relevant:
            lexical = lexical_agreement(question, [e.key_text if self.config.read.lexical_text == "key" else e.sentence
                                                   for e in relevant], self.config.read.lexical_content_words)
        return [replace(e, score=float(e.key @ query) + self.config.read.lexical_weight * lex)
                for e, lex in zip(relevant, lexical)]

    def _retrieved_events(self, memory: RequestMemory, b: int, chunk_query: torch.Tensor, query: torch.Tensor,
                          question: str) -> list[GroundedEvent]:
        """The events grounded in the chunks retrieved for the question (:meth:`_retrieved_chunks`)."""
        return self._ground_chunks(memory, b, self._retrieved_chunks(memory, b, chunk_query, question), query, question)

    def _retrieved_chunks(self, memory: RequestMemory, b: int, chunk_query: torch.Tensor, question: str) -> list[int]:
        """Chunk ids of row ``b`` for a question: the ``num_fallback_chunks`` best by the hybrid
        search (``chunk_query`` [H] and the question's words), then up to ``name_chunks`` more that
        hold the question's names, best by BM25 over the names alone."""
        index, cfg, read = memory.indexes[b], self.config, self.config.read
        ids = [i for i in index.search(chunk_query, question, cfg.num_fallback_chunks).expanded[0] if i >= 0]
        names = question_names(question)
        if read.name_chunks and names and len(index):
            _, _, by_name = index.hybrid_scores(chunk_query, " ".join(sorted(names)))  # [1, N] each
            order = torch.sort(by_name[0], descending=True, stable=True).indices.tolist()
            ids += [i for i in order if float(by_name[0, i]) > 0 and i not in ids][:read.name_chunks]
        return ids

    def _current_event(self, events: list[GroundedEvent]) -> Optional[GroundedEvent]:
        """The best-scoring event, or (``version_margin``) its latest version typed as an update."""
        if not events:
            return None
        read = self.config.read
        best = latest_version([e.score for e in events], [e.position for e in events],
                              torch.stack([e.key for e in events]), read.version_margin, read.version_key_cosine,
                              [e.event_type == "update" for e in events])
        return events[best]

    def _event_row(self, event: GroundedEvent) -> SelectedRow:
        """A grounded event as a one-entry fallback row ("key: value", its value ids)."""
        return SelectedRow(event.value[None], [f"{event.key_text}: {event.value_text}"],
                           [self.value_token_ids(event.value_text)], FALLBACK, [event.key_text])

    def _slot_lexical_texts(self, memory: RequestMemory, b: int) -> list[Optional[str]]:
        """Per slot of row ``b``, the text the question's words are matched against: the key text,
        or (``lexical_text="sentence"``) its event's sentence (:meth:`_slot_sentences`)."""
        return memory.slots.key_text[b] if self.config.read.lexical_text == "key" else self._slot_sentences(memory, b)

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

    def _newest_versions(self, memory: RequestMemory, b: int, scores: torch.Tensor, slots: list[int]) -> list[int]:
        """``slots`` of row ``b``, with the best slot's versions (``version_margin``, over the read
        ``scores`` [M]; :func:`slot_versions`) replaced by the one written last."""
        read, mem = self.config.read, memory.slots
        versions, newest = slot_versions(scores[None], mem.time[b][None], mem.keys[b][None].float(),
                                         read.version_margin, read.version_key_cosine)
        out = []
        for m in slots:
            m = int(newest[0]) if versions[0, m] else m
            if m not in out:
                out.append(m)
        return out

    def _named_event_or(self, row: SelectedRow, memory: RequestMemory, b: int, chunk_query: torch.Tensor,
                        query: torch.Tensor, question: str, slot: int, slot_score: Optional[float]) -> SelectedRow:
        """``row`` (the selected slots, ``slot`` the first), or a retrieved event that the question
        names more exactly, or (``version_margin``) a newer version of the slot's fact.

        A lookalike the question names ("the Lumen Mini printer") that never got a slot loses the
        key match to the slot of the entity it resembles ("the Lumen printer"). With
        ``ground_fallback`` and ``lexical_weight`` on, the retrieved chunks are grounded as on the
        fallback, and their best event replaces the slots when its key text covers strictly more
        of the question's words than each selected slot's key text does (``named_events="best"``);
        with ``named_events="any"`` the best of all the events whose key texts do so replaces them,
        even when an event of the slot's own name scores higher. A key that covers the same words
        (an older version of the slot's own fact) never replaces the slot on that rule.
        """
        read = self.config.read
        if not (read.ground_fallback and read.lexical_weight > 0):
            return row
        events = self._retrieved_events(memory, b, chunk_query, query, question)
        if not events:
            return row
        words = set(tokenize([question])[0])
        slot_words = [words & set(toks) for toks in tokenize(row.key_texts)]
        named = [e for e, toks in zip(events, tokenize([e.key_text for e in events]))
                 if all(words & set(toks) > s for s in slot_words)]
        best = self._current_event(events)
        if named and (read.named_events == "any" or any(e is best for e in named)):
            return self._event_row(self._current_event(named))
        newer = self._missed_update(memory, b, slot, slot_score, events) if slot_score is not None else None
        return row if newer is None else self._event_row(newer)

    def _missed_update(self, memory: RequestMemory, b: int, slot: int, slot_score: float,
                       events: list[GroundedEvent]) -> Optional[GroundedEvent]:
        """The latest grounded update that is a version of ``slot``'s fact (within ``version_margin``
        of ``slot_score``, its key match; key cosine >= ``version_key_cosine``) and comes after the
        slot's own event in the stream: an update the write path did not bring to the slot."""
        read, mem = self.config.read, memory.slots
        if int(mem.chunk_id[b, slot]) < 0:  # written by hand, not from the stream: no position to compare
            return None
        key, end = mem.keys[b, slot].float(), int(mem.span[b, slot, 1])
        later = [e for e in events if e.event_type == "update" and e.position >= end
                 and e.score >= slot_score - read.version_margin and float(e.key @ key) >= read.version_key_cosine]
        return max(later, key=lambda e: (e.position, e.score), default=None)

    def _joint_row(self, memory: RequestMemory, b: int, query: torch.Tensor, chunk_query: torch.Tensor,
                   question: str, slot_bias: Optional[torch.Tensor]) -> Optional[SelectedRow]:
        """``read_rule="joint"``: the usable slots of row ``b`` and the events grounded in its
        retrieved chunks compete on one score (key match plus lexical agreement, no read bias);
        entries whose key text names strictly fewer of the question's words than another's drop
        out (:func:`most_specific`); the best entry then gives way to its latest version
        (:func:`latest_version` over stream positions: slots and update events are versions).
        ``restore_by_sentence`` and ``restore_by_attribute`` put entries back by their sentences
        (:func:`restore_by_sentence`, :func:`restore_by_attribute`),
        ``withdrawn_cover`` lets a later withdrawal of the asked fact win (:func:`covering_withdrawal`).
        None when there is neither a usable slot nor a grounded event.

        The router's choice between the slots and the fallback turns on one threshold, and a
        wrong branch cannot be undone by the lifecycle rules that act within it: an old event the
        fallback grounds never meets the slot that holds its newer version. One pool lets them.
        """
        cfg, read, mem = self.config, self.config.read, memory.slots
        match = mem.keys[b].float() @ query + (0.0 if slot_bias is None else slot_bias)  # [M]
        usable = (mem.occupied[b] & (mem.confidence[b] >= read.router_confidence_threshold)).nonzero().flatten().tolist()
        events = self._retrieved_events(memory, b, chunk_query, query, question)
        if not usable and not events:
            return None
        # entries: the usable slots, then the events
        key_texts = [mem.key_text[b][m] or "" for m in usable] + [e.key_text for e in events]
        scores = [float(match[m]) for m in usable] + [e.score for e in events]
        # stream positions; a slot goes after an event at its own position (the slot is that event, resolved)
        order = [int(mem.span[b, m, 0]) + 0.5 for m in usable] + [float(e.position) for e in events]
        keys = torch.cat([mem.keys[b, usable].float(), torch.stack([e.key for e in events]) if events
                          else torch.zeros(0, mem.key_dim)])
        eligible = [True] * len(usable) + [e.event_type == "update" or (read.version_events == "any"
                                                                        and e.event_type != "irrelevant") for e in events]
        keep = most_specific(question, key_texts, fragments=read.name_fragments, foreign_names=read.foreign_names)
        sentences = self._pool_sentences(memory, b, usable, events) \
            if read.restore_by_sentence or read.restore_by_attribute or read.withdrawn_cover is not None else None
        if read.restore_by_sentence:
            keep = restore_by_sentence(question, sentences, keep)
        if read.restore_by_attribute:
            foreign = foreign_keys(question, key_texts, read.name_fragments) if read.foreign_names else []
            keep = restore_by_attribute(question, sentences, keep, [i for i, f in enumerate(foreign) if f])
        if read.inserted_names:  # last: the restore rules would put a look-alike back by its sentence
            keep = without_inserted_names(question, key_texts, keep, read.name_fragments)
        pick = keep[latest_version([scores[i] for i in keep], [order[i] for i in keep], keys[keep],
                                   read.version_margin, read.version_key_cosine, [eligible[i] for i in keep])]
        if read.answer_type_margin is not None:
            values = [mem.value_text[b][m] for m in usable] + [e.value_text for e in events]
            rivals = answer_type_rivals(scores, keys, [i for i in keep if values[i]], pick, read.answer_type_margin,
                                        read.version_key_cosine)
            if rivals and values[pick]:
                pmi = self._answer_pmi(question, [values[i] for i in [pick, *rivals]])
                pick = [pick, *rivals][max(range(len(pmi)), key=lambda j: (pmi[j], -j))]  # a tie keeps the pick
        if read.withdrawn_margin is not None:
            # a later withdrawal of the picked fact: a retraction sentence matches a question weakly
            withdrawn = [i for i in keep if i < len(usable) and bool(mem.retracted[b, usable[i]])
                         and order[i] > order[pick] and scores[i] >= scores[pick] - read.withdrawn_margin
                         and float(keys[i] @ keys[pick]) >= read.version_key_cosine]
            pick = max(withdrawn, key=lambda i: order[i], default=pick)
        if read.withdrawn_cover is not None:
            withdrawn = [i for i, m in enumerate(usable) if bool(mem.retracted[b, m])]  # any slot, not only keep:
            # a retraction's key is often the bare name, which names fewer question words than the fact's
            pick = covering_withdrawal(question, sentences, pick, withdrawn, order, keys, read.withdrawn_cover)
        if pick >= len(usable):
            return self._event_row(events[pick - len(usable)])
        rest = sorted((m for m in usable if m != usable[pick]), key=lambda m: -float(match[m]))
        return self._slot_row(memory, b, [usable[pick]] + rest[:cfg.top_k - 1])

    @torch.no_grad()
    def _answer_pmi(self, question: str, values: list[str]) -> list[float]:
        """Per value: log p(value | the question) - log p(value | a question that asks nothing, "What
        is it?") under the frozen backbone (adapter off), summed over the value's tokens. The
        question's words raise the answers of its type ("July 2" after "What is the deadline ...");
        the empty question takes out how likely the value's tokens are anyway (a code's rare pieces)."""
        tok = self._tok()
        prompts = [self._answer_prompt(question), self._answer_prompt("What is it?")]
        space = "" if getattr(tok, "chat_template", None) else " "  # an assistant turn starts its line
        answers = [tok(space + v.strip(), add_special_tokens=False)["input_ids"] for v in values]
        rows = [p + a for a in answers for p in prompts]  # value-major: (asked, not asked) per value
        ids, mask = self._right_pad(rows)
        with self.disable_adapter():
            logp = torch.log_softmax(self.backbone(input_ids=ids.to(self._device()),
                                                   attention_mask=mask.to(self._device())).logits.float(), -1)  # [R, T, V]
        # a value token at t is predicted at t - 1; the value starts where the row's prompt ends
        lp = [sum(float(logp[r, t - 1, row[t]]) for t in range(len(prompts[r % 2]), len(row))) for r, row in enumerate(rows)]
        return [lp[2 * i] - lp[2 * i + 1] for i in range(len(values))]

    def _answer_prompt(self, question: str) -> list[int]:
        """The backbone's prompt for a short answer: an instruct model's chat turn when its tokenizer
        has a template (it answers inside its own format), else "Question: ...\\nAnswer:"."""
        tok = self._tok()
        content = f"Question: {question.strip()}\nAnswer with the answer only, in a few words."
        if getattr(tok, "chat_template", None):
            content = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                              tokenize=False)
        else:
            content += "\nAnswer:"
        return list(tok(content, add_special_tokens=False)["input_ids"])

    def _pool_sentences(self, memory: RequestMemory, b: int, usable: list[int], events: list[GroundedEvent]) -> list[str]:
        """The sentence of each entry of a joint pool: slots ``usable`` of row ``b``, then ``events``."""
        slot_sentences = self._slot_sentences(memory, b)
        return [slot_sentences[m] or "" for m in usable] + [e.sentence or e.key_text for e in events]

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
