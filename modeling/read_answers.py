"""Read stage 1b, pointer answers: the answer pointer reads the best sentences of the retrieved chunks.

The GroundingHead proposes only what looks like the facts it was trained on, so a fact told in
other words ("The night guard keeps a grey cat named Pepper") is never written and never grounded.
Here the adapter's :class:`~memadapter.answer_pointer.AnswerPointer` reads, per question, the
``read.answer_sentences`` sentences of its retrieved chunks that share most words with it (BM25
agreement of the content words), each behind the question (:func:`pair_ids`), and proposes one
answer span per sentence with its margin over "no answer here". A sentence that restates an
earlier one of those chunks (a correction repeating what it corrects) is read with the words it
changed marked (:mod:`memadapter.restatement`), which the pointer weighs with learned weights. Each becomes a
:class:`~memadapter.modeling.selection.GroundedEvent` of type ``"answer"`` in the question's pool,
its key text the sentence without the span. A sentence the pointer reads as withdrawing what is
asked (its withdrawal score above 0) adds a second event of that type: a withdrawal, value None,
the score as its margin. Both carry the pointer's hedge score of the sentence (a rumour, not a
statement). The learned ReadScorer weighs them against the slots and grounded events (features
``answer``, ``answer_margin``, ``answer_hedge`` and ``withdrawn``). All pairs of a batch are read in padded
backbone forwards of up to ``GROUND_TOKENS`` tokens.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any, Optional

import torch

from memadapter.answer_pointer import MAX_SPAN, PROMPT, best_spans, withdraws, word_bounds
from memadapter.bm25 import lexical_agreement
from memadapter.request_memory import RequestMemory
from memadapter.restatement import FEATURES as RESTATEMENT_FEATURES, nearest_earlier, replaced_runs, token_changes
from memadapter.sentences import sentence_spans

from .backbones import backbone_parts
from .read_candidates import GROUND_TOKENS, token_groups
from .selection import ANSWER, GroundedEvent


def pair_ids(tokenizer: Any, question: str, sentence: str) -> tuple[list[int], int]:
    """The pointer's input for one (question, sentence) pair: (ids, n) where ids[:n] is the
    question prompt (:data:`PROMPT`, its last token the null position) and ids[n:] the sentence,
    tokenised as it reads after a space."""
    prompt = tokenizer(PROMPT.format(question=question.strip()), add_special_tokens=False)["input_ids"]
    text = tokenizer(" " + sentence.strip(), add_special_tokens=False)["input_ids"]
    return list(prompt) + list(text), len(prompt)


@lru_cache(maxsize=1024)
def _sentence_offsets(tokenizer: Any, sentence: str) -> Optional[tuple[str, tuple[tuple[int, int], ...]]]:
    """(the sentence's text as :func:`pair_ids` reads it, its tokens' character offsets in it);
    None for a tokenizer without offsets (a slow one). Remembered: one read asks it for the same
    sentence up to three times (its word bounds, its restatement features, its replaced runs)."""
    text = " " + sentence.strip()
    try:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError):
        return None
    return text, tuple(tuple(o) for o in offsets)


def sentence_bounds(tokenizer: Any, sentence: str) -> Optional[tuple[list[bool], list[bool]]]:
    """:func:`word_bounds` of the sentence's tokens as :func:`pair_ids` lays them out; None for a
    tokenizer without character offsets: then a span may start and end anywhere."""
    found = _sentence_offsets(tokenizer, sentence)
    return None if found is None else word_bounds(*found)


def sentence_changes(tokenizer: Any, sentence: str, earlier: Optional[str]) -> Optional[list[list[float]]]:
    """:func:`~memadapter.restatement.token_changes` of the sentence's tokens as :func:`pair_ids`
    lays them out, against ``earlier``; None without an earlier sentence or character offsets."""
    found = None if earlier is None else _sentence_offsets(tokenizer, sentence)
    return None if found is None else token_changes(found[0], earlier, found[1])


def pointer_features(model: Any, ids: torch.Tensor, mask: torch.Tensor, layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the pointer's input [B, T, len(layers) * H], the read layer's hidden states [B, T, H]) from
    one backbone forward (every layer up to the deepest asked)."""
    out = backbone_parts(model.backbone).decoder(input_ids=ids, attention_mask=mask, use_cache=False,
                                                 output_hidden_states=True)
    hs = out.hidden_states
    return torch.cat([hs[i] for i in layers], -1), hs[model.config.read_layer]


class AnswersMixin:
    """Pointer answers, mixed into the model through :class:`~memadapter.modeling.reader.MemoryReaderMixin`;
    it uses the model's config, answer_pointer, grounding, tokenizer and hidden-state helpers."""

    def _answer_sentences(self, memory: RequestMemory, b: int, question: str,
                          chunks: list[int]) -> list[tuple[int, int, str, Optional[str]]]:
        """Row ``b``'s best ``answer_sentences`` sentences of ``chunks`` for ``question``, in the
        order of ``chunks``, as (chunk id, character offset in the chunk, sentence, the sentence of
        ``chunks`` before it in the stream that it restates most (:func:`nearest_earlier`), None
        when none shares a word or the pointer weighs no restatement); only sentences sharing a
        word with the question."""
        found = []
        for i in chunks:
            text = memory.indexes[b].text(i)
            found += [(i, s, text[s:e]) for s, e in sentence_spans(text or "")]
        if not found:
            return []
        agree = lexical_agreement(question, [s for _, _, s in found], True)
        best = sorted(sorted(range(len(found)), key=lambda j: -agree[j])[:self.config.read.answer_sentences])
        restates = bool(self.answer_pointer.restated.detach().abs().sum() > 0) or self.config.read.restated_runs > 0
        at = lambda f: (memory.indexes[b].span(f[0])[0], f[1])  # noqa: E731  a sentence's place in the stream
        out = []
        for j in (j for j in best if agree[j] > 0):
            before = [f[2] for f in found if at(f) < at(found[j])] if restates else []
            k = nearest_earlier(found[j][2], before) if before else None
            out.append((*found[j], None if k is None else before[k]))
        return out

    @torch.no_grad()
    def _answer_events(self, memory: RequestMemory, questions: list[str], chunks: list[list[int]]) -> list[list[GroundedEvent]]:
        """Per row, the pointer's answer in each of its best sentences (:meth:`_answer_sentences`);
        [] per row without a pointer, a tokenizer or ``answer_sentences``."""
        out: list[list[GroundedEvent]] = [[] for _ in questions]
        if self.answer_pointer is None or self.tokenizer is None or not self.config.read.answer_sentences:
            return out
        pairs = [(b, *found) for b, q in enumerate(questions) for found in self._answer_sentences(memory, b, q, chunks[b])]
        encoded = [pair_ids(self.tokenizer, questions[b], sent) for b, _, _, sent, _ in pairs]
        budget = GROUND_TOKENS["cpu" if self._device().type == "cpu" else "other"]
        for ks in token_groups([len(ids) for ids, _ in encoded], budget):
            ids, mask = self._right_pad([encoded[k][0] for k in ks])
            feats, hidden = pointer_features(self, ids, mask, list(self.config.answer_layers))
            n = torch.tensor([encoded[k][1] for k in ks], device=ids.device)
            pos = torch.arange(ids.shape[1], device=ids.device)
            text = mask.bool() & (pos[None, :] >= n[:, None])  # [G, T]: the sentence's tokens
            changes = self._changes([pairs[k][3:5] for k in ks], n, text)
            logits = self.answer_pointer(feats, changes)  # [G, T, 3]
            starts, ends = self._word_masks([pairs[k][3] for k in ks], n, text) if self.config.read.word_spans else (None, None)
            start, end, margin = best_spans(logits[..., :2], text, n - 1, starts=starts, ends=ends)
            withdrawal = withdraws(logits, text)  # [G]
            hedge = self.answer_pointer.hedges(feats, text)  # [G]
            for r, k in enumerate(ks):
                b, chunk_id, char, sentence, _ = pairs[k]
                found = [self._answer_event(memory, b, chunk_id, char, sentence, encoded[k], hidden[r], text[r],
                                            int(start[r]), int(end[r]), float(margin[r]))]
                if float(withdrawal[r]) > 0:
                    found.append(self._withdrawal_event(memory, b, chunk_id, char, sentence, hidden[r], text[r],
                                                        float(withdrawal[r])))
                bounds = None if starts is None else (starts[r], ends[r])
                found[0], runs = self._restated_runs(memory, pairs[k], encoded[k], hidden[r], text[r], logits[r], bounds,
                                                     found[0])
                found += runs
                out[b] += [replace(e, answer_hedge=float(hedge[r])) for e in found]
        return out

    def _restated_runs(self, memory: RequestMemory, pair: tuple, encoded: tuple[list[int], int], hidden: torch.Tensor,
                       text: torch.Tensor, logits: torch.Tensor, bounds: Optional[tuple[torch.Tensor, torch.Tensor]],
                       answer: GroundedEvent) -> tuple[GroundedEvent, list[GroundedEvent]]:
        """(``answer``, [more answer events]) for one pair. When its sentence restates an earlier one
        (repeats at least ``read.restated_runs`` of its words), each run of words it replaces there
        (:func:`replaced_runs`: in a correction, the new value) gives two answer events: the run
        whole (``restated_run``) and the pointer's best span that overlaps it (``restated_span``;
        logits [T, 3]; ``bounds``: where a span may start / end [T] each, None: anywhere). A run can
        carry the update's own words ("now 0.8" for "861 GB" -> "now 0.8 GB") and a span can cut a
        value, so the ReadScorer weighs both. Each field holds the share repeated; an event equal to
        another (``answer`` included) marks that one instead of being added twice."""
        b, chunk_id, char, sentence, earlier = pair
        floor = self.config.read.restated_runs
        found = None if earlier is None or floor <= 0 else _sentence_offsets(self.tokenizer, sentence)
        share, runs = replaced_runs(found[0], earlier) if found is not None else (0.0, [])
        if share < floor or not runs:
            return answer, []
        n = encoded[1]
        null = torch.tensor([n - 1], device=logits.device)  # the prompt's last token is the null position
        pos = torch.arange(text.shape[0], device=text.device)
        events = {(answer.value_text, answer.position): answer}
        for c0, c1 in runs:
            tokens = [t for t, (s, e) in enumerate(found[1]) if e > c0 and s < c1]
            if not tokens:
                continue
            first, last = n + tokens[0], n + tokens[-1]  # the run's first and last token in the pair
            spans = []
            if last - first < MAX_SPAN:
                whole = logits[first, 0] + logits[last, 1] - logits[n - 1, 0] - logits[n - 1, 1]
                spans.append(("restated_run", first, last, float(whole)))
            start_ok, end_ok = text & (pos <= last), text & (pos >= first)  # [T]: the span touches the run
            if bounds is not None:
                start_ok, end_ok = start_ok & bounds[0], end_ok & bounds[1]
            s, e, margin = best_spans(logits[None, :, :2], text[None], null, starts=start_ok[None], ends=end_ok[None])
            if int(s[0]) <= last and int(e[0]) >= first:
                spans.append(("restated_span", int(s[0]), int(e[0]), float(margin[0])))
            for field, s_, e_, m in spans:
                event = self._answer_event(memory, b, chunk_id, char, sentence, encoded, hidden, text, s_, e_, m)
                key = (event.value_text, event.position)
                events[key] = replace(events.get(key, event), **{field: share})
        answer = events.pop((answer.value_text, answer.position))
        return answer, list(events.values())

    def _changes(self, pairs: list[tuple[str, Optional[str]]], n: torch.Tensor, text: torch.Tensor) -> Optional[torch.Tensor]:
        """Each row's restatement features [G, T, R] (:func:`sentence_changes` of its (sentence,
        earlier sentence) on its text tokens, 0 elsewhere); None when no row has an earlier sentence."""
        if all(earlier is None for _, earlier in pairs):
            return None
        out = torch.zeros(*text.shape, len(RESTATEMENT_FEATURES))
        for r, (sentence, earlier) in enumerate(pairs):
            feats = sentence_changes(self.tokenizer, sentence, earlier)
            k = int(text[r].sum())
            if feats is not None and len(feats) == k:
                out[r, int(n[r]):int(n[r]) + k] = torch.tensor(feats)
        return out

    def _word_masks(self, sentences: list[str], n: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each row's span may start / end [G, T] (:func:`sentence_bounds`), True on the text
        tokens of a row whose tokenizer gives no offsets or whose offsets do not line up."""
        starts, ends = text.clone(), text.clone()
        for r, sentence in enumerate(sentences):
            bounds = sentence_bounds(self.tokenizer, sentence)
            k = int(text[r].sum())
            if bounds is not None and len(bounds[0]) == k:
                at = int(n[r])
                starts[r, at:at + k] = torch.tensor(bounds[0], device=text.device)
                ends[r, at:at + k] = torch.tensor(bounds[1], device=text.device)
        return starts, ends

    def _stream_position(self, memory: RequestMemory, b: int, chunk_id: int, before: str) -> int:
        """The stream position (token index) of the token after ``before``, the start of chunk ``chunk_id``'s text."""
        offset = len(self._tok()(before, add_special_tokens=False)["input_ids"]) if before.strip() else 0
        return memory.indexes[b].span(chunk_id)[0] + offset

    def _withdrawal_event(self, memory: RequestMemory, b: int, chunk_id: int, char: int, sentence: str,
                          hidden: torch.Tensor, text: torch.Tensor, score: float) -> GroundedEvent:
        """A sentence that withdraws what is asked, as an event: no value, the whole sentence as its key
        (text and pooled key), ``position`` its first token in the stream."""
        pooled, key = self._pooled_key(hidden, text)
        chunk_text = memory.indexes[b].text(chunk_id) or ""
        return GroundedEvent(sentence, None, self.grounding.value_proj(pooled).float().cpu(), key, ANSWER,
                             0.0, self._stream_position(memory, b, chunk_id, chunk_text[:char]), sentence, score)

    def _pooled_key(self, hidden: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the normed mean of ``hidden`` [T, H] over ``tokens`` [T], its key [dk] on the CPU), as the
        GroundingHead keys a span."""
        pooled = self.grounding.norm(hidden[tokens].mean(0))
        return pooled, self.grounding.key(pooled[None], pooled[None])[0].float().cpu()

    def _answer_event(self, memory: RequestMemory, b: int, chunk_id: int, char: int, sentence: str,
                      encoded: tuple[list[int], int], hidden: torch.Tensor, text: torch.Tensor, s: int, e: int,
                      margin: float) -> GroundedEvent:
        """One pointer answer as an event: the span's text and pooled value, the rest of the
        sentence as its key (text and pooled key), ``position`` the span's first token in the stream."""
        ids, n = encoded
        value_text = self._decode(ids[s:e + 1]).strip()
        head = self._decode(ids[n:s])  # the sentence before the span
        key_text = (head + " " + self._decode(ids[e + 1:])).strip() or sentence
        span = torch.zeros_like(text)
        span[s:e + 1] = True
        rest = text & ~span
        value = self.grounding.value_proj(self.grounding.norm(hidden[span].mean(0)))
        _, key = self._pooled_key(hidden, rest if rest.any() else text)
        chunk_text = memory.indexes[b].text(chunk_id) or ""
        position = self._stream_position(memory, b, chunk_id, chunk_text[:char] + head.lstrip())  # the span's first token
        return GroundedEvent(key_text, value_text, value.float().cpu(), key, ANSWER, 0.0,
                             position, sentence, margin)
