"""The write path of MemAdapterForCausalLM: text or token ids -> chunks -> proposals -> slot writes.

Each row is cut into chunks (``chunk_tokens`` tokens, or at sentence ends with
``ingest.chunk_boundary="sentence"``); each chunk is read on its own by the backbone's first
``read_layer`` layers, its summary and text go into the row's ``ChunkIndex``, and the
GroundingHead's proposals go through the WriteController into one ``SlotMemory.write``.
``reference_ingest`` switches to the plain-loop reference of that batched path (one Candidate,
one write at a time); tests/modeling/test_batched_ingest.py compares the two.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memadapter.errors import ConfigError, DTypeError, EmptyInputError, ShapeError
from memadapter.heads import Proposals, sentence_ends
from memadapter.request_memory import RequestMemory
from memadapter.slots import SlotMemory
from memadapter.spans import sentence_chunks

__all__ = ["PROGRESS_MIN_CHUNKS", "IngestMixin", "IngestReport", "reference_ingest"]

PROGRESS_MIN_CHUNKS = 8  # show a progress bar from this many chunks on
# True inside reference_ingest(): ingest proposes and writes through the plain loops
_REFERENCE_INGEST: ContextVar[bool] = ContextVar("memadapter_reference_ingest", default=False)


@contextmanager
def reference_ingest() -> Iterator[None]:
    """Inside the block (this thread / task only), ``ingest`` takes the plain-loop reference path:
    ``GroundingHead.propose`` Candidates, one write per candidate. Tests and benches compare the
    batched path against it."""
    token = _REFERENCE_INGEST.set(True)
    try:
        yield
    finally:
        _REFERENCE_INGEST.reset(token)


@dataclass
class IngestReport:
    """Counts from one ``ingest`` call, per request row."""

    chunks: list[int]
    candidates: list[int]
    writes: list[int]


class IngestMixin:
    """``ingest`` and its write path, mixed into :class:`MemAdapterForCausalLM`; it uses the model's
    config, grounding, writer, tokenizer, input checks and hidden-state helpers (``_hidden``,
    ``_mean``, ``_decode``, ``_decode_rows``, ``_word_marks``, ``_propose``, ``_tok``, ``_right_pad``).

    Example:
        >>> from memadapter.modeling import MemAdapterForCausalLM
        >>> issubclass(MemAdapterForCausalLM, IngestMixin)
        True
    """

    def _ingest_rows(self, memory: RequestMemory, text_or_ids: Any, attention_mask: Optional[torch.Tensor]) -> list[list[int]]:
        """Normalise every accepted input form to one token list per memory row."""
        B = memory.batch_size
        if isinstance(text_or_ids, str):
            text_or_ids = [text_or_ids]
        if isinstance(text_or_ids, (list, tuple)) and all(isinstance(t, str) for t in text_or_ids):
            if attention_mask is not None:
                raise ConfigError("attention_mask: applies to token ids only; text is tokenized whole (pass ids to mask)")
            rows = [self._tok()(t, add_special_tokens=False)["input_ids"] for t in text_or_ids]
            self._check_token_ids("text_or_ids (the tokenizer's ids)", torch.tensor(sum(rows, []), dtype=torch.long))
        elif isinstance(text_or_ids, torch.Tensor):
            self._check_token_ids("text_or_ids", text_or_ids)
            ids = text_or_ids.reshape(1, -1) if text_or_ids.dim() == 1 else text_or_ids  # [T] -> [1, T]
            if ids.dim() != 2:
                raise ShapeError(f"text_or_ids: expected [T] or [B, T] ids, got shape {tuple(text_or_ids.shape)}")
            # a row may be all padding here (nothing new for that request), as "" is for text
            mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None \
                else self._check_mask(attention_mask, text_or_ids, empty_rows=True).reshape(ids.shape).bool()
            rows = [ids[b][mask[b]].tolist() for b in range(ids.shape[0])]
        else:
            raise DTypeError(f"text_or_ids: expected a str, a list of str or a tensor of ids, got {type(text_or_ids).__name__}")
        if len(rows) != B:
            raise ShapeError(f"text_or_ids: {len(rows)} rows for a memory of batch size {B}")
        if all(len(r) == 0 for r in rows):
            raise EmptyInputError("text_or_ids: no tokens to ingest")
        return rows

    @torch.no_grad()
    def ingest(self, memory: RequestMemory, text_or_ids: Any, *, attention_mask: Optional[torch.Tensor] = None,
               progress: Optional[bool] = None) -> IngestReport:
        """Stream the rows through the backbone in chunks of ``chunk_tokens`` and update memory.

        Cost is linear in tokens: each chunk is read on its own (up to ``read_layer`` only), and
        memory stays bounded by ``num_slots``. On any error the memory is restored as it was.
        """
        self._check_memory(memory)
        if progress is not None and not isinstance(progress, bool):
            raise DTypeError(f"progress: expected None or a bool, got {type(progress).__name__}")
        rows = self._ingest_rows(memory, text_or_ids, attention_mask)
        bounds = [self._chunk_bounds(r) for r in rows]  # per row: (start, end) of each chunk
        n_chunks = max(len(b) for b in bounds)
        show = n_chunks >= PROGRESS_MIN_CHUNKS if progress is None else progress
        report = IngestReport([0] * len(rows), [0] * len(rows), [0] * len(rows))
        snap = memory.snapshot()
        try:
            for c in tqdm(range(n_chunks), desc="ingest", unit="chunk", disable=not show):
                self._ingest_chunk(memory, [r[slice(*b[c])] if c < len(b) else [] for r, b in zip(rows, bounds)], report)
        except BaseException:
            memory.restore(snap)
            raise
        return report

    def _chunk_bounds(self, row: list[int]) -> list[tuple[int, int]]:
        """Where ``row``'s chunks start and end: every ``chunk_tokens`` tokens, or
        (``chunk_boundary="sentence"``, with a tokenizer) after a sentence end (:func:`sentence_chunks`)."""
        C = self.config.chunk_tokens
        if self.config.ingest.chunk_boundary == "sentence" and self.tokenizer is not None:
            return sentence_chunks(sentence_ends([row], self._decode_rows)[0], C)
        return [(s, min(s + C, len(row))) for s in range(0, len(row), C)]

    def _ingest_chunk(self, memory: RequestMemory, chunk: list[list[int]], report: IngestReport) -> None:
        live = [b for b, r in enumerate(chunk) if r]
        ids, mask = self._right_pad(chunk)
        hidden = self._hidden(ids, mask)  # [B, T, H]
        summary = self._mean(hidden, mask).float().cpu()  # [B, H]
        chunk_ids = torch.full((len(chunk),), -1, dtype=torch.long)
        for b in live:
            start = memory.tokens_seen[b]
            span = torch.tensor([[start, start + len(chunk[b])]])
            chunk_ids[b] = int(memory.indexes[b].add(summary[b : b + 1], [self._decode(chunk[b])], span)[0])
            report.chunks[b] += 1
        if _REFERENCE_INGEST.get():
            self._write_candidates_reference(memory, chunk, self._propose(hidden, mask, chunk), chunk_ids, report)
        else:
            props = self.grounding.propose_batched(hidden, mask, self._word_marks(chunk))
            self._write_candidates(memory, chunk, props, chunk_ids, report)
        for b in live:
            memory.tokens_seen[b] += len(chunk[b])

    def _write_candidates(self, memory: RequestMemory, chunk: list[list[int]], props: Proposals,
                          chunk_ids: torch.Tensor, report: IngestReport) -> None:
        """The chunk's proposals [B, N] -> p_write -> one ``SlotMemory.write`` (ingest's path; the
        plain loop over Candidate objects is ``_write_candidates_reference``)."""
        B, N = props.mask.shape
        if N == 0:
            return
        slots, cmask = memory.slots, props.mask.cpu()
        keys = props.keys.float().cpu().masked_fill(~cmask[..., None], 0.0)  # [B, N, dk]
        keys[..., 0] += (~cmask).float()  # padding candidates need a non-zero key (they are masked out)
        values = props.values.float().cpu().masked_fill(~cmask[..., None], 0.0)  # [B, N, dv]
        ev_probs = props.event_probs.float().cpu().masked_fill(~cmask[..., None], 0.0)  # [B, N, E]
        conf = props.confidence.float().cpu().masked_fill(~cmask, 0.0)  # [B, N]
        kinds = props.event_type.cpu().masked_fill(~cmask, 0)
        ks, vs, has_value = props.key_spans.cpu(), props.value_spans.cpu(), props.has_value.cpu()
        end = torch.maximum(torch.where(has_value, vs[..., 1], ks[..., 1]), ks[..., 1])  # [B, N]
        off = torch.tensor(memory.tokens_seen, dtype=torch.long)[:, None]  # [B, 1]
        spans = (torch.stack([ks[..., 0], end], -1) + off[..., None]).masked_fill(~cmask[..., None], 0)  # [B, N, 2]
        key_text, value_text = self._span_texts(chunk, ks, vs, has_value, cmask)
        p_write = self._p_write(slots, keys, values, ev_probs, conf)
        result = slots.write(keys, values, p_write, event=kinds, importance=conf.clamp(0, 1),
                             chunk_id=chunk_ids[:, None].expand(B, N), span=spans,
                             key_text=key_text, value_text=value_text, mask=cmask)
        counts, writes = cmask.sum(1).tolist(), result.num_writes.tolist()
        for b in range(B):
            report.candidates[b] += int(counts[b])
            report.writes[b] += int(writes[b])

    def _span_texts(self, chunk: list[list[int]], ks: torch.Tensor, vs: torch.Tensor, has_value: torch.Tensor,
                    cmask: torch.Tensor) -> tuple[list, list]:
        """Key and value strings [B][N] (None: no value / padding) from one batch decode per chunk."""
        B, N = cmask.shape
        where = cmask.nonzero().tolist()  # [(b, n)] of the real candidates
        kl, vl = ks.tolist(), vs.tolist()
        pieces = [chunk[b][kl[b][n][0]:kl[b][n][1]] for b, n in where] + [chunk[b][vl[b][n][0]:vl[b][n][1]] for b, n in where]
        if self.tokenizer is not None and pieces:  # decode's own options, one call per chunk
            texts = self.tokenizer.batch_decode(pieces, skip_special_tokens=True)
        else:
            texts = [self._decode(p) for p in pieces]
        key_text, value_text = [[None] * N for _ in range(B)], [[None] * N for _ in range(B)]
        hv = has_value.tolist()
        for i, (b, n) in enumerate(where):
            key_text[b][n] = texts[i]
            value_text[b][n] = texts[len(where) + i] if hv[b][n] else None
        return key_text, value_text

    def _write_candidates_reference(self, memory: RequestMemory, chunk: list[list[int]], cands: list,
                                    chunk_ids: torch.Tensor, report: IngestReport) -> None:
        """Plain-loop reference of ``_write_candidates`` over ``GroundingHead.propose``'s Candidates."""
        B, N = len(chunk), max(len(c) for c in cands)
        if N == 0:
            return
        cfg, slots = self.config, memory.slots
        keys, values = torch.zeros(B, N, cfg.key_dim), torch.zeros(B, N, cfg.value_dim)
        keys[..., 0] = 1.0  # padding candidates need a non-zero key (they are masked out)
        ev_probs, conf = torch.zeros(B, N, cfg.num_event_types), torch.zeros(B, N)
        kinds = torch.zeros(B, N, dtype=torch.long)  # the candidate's event type (a lifecycle layer's, if any)
        spans, cmask = torch.zeros(B, N, 2, dtype=torch.long), torch.zeros(B, N, dtype=torch.bool)
        key_text, value_text = [[None] * N for _ in range(B)], [[None] * N for _ in range(B)]
        for b, row in enumerate(cands):
            off = memory.tokens_seen[b]
            for n, c in enumerate(row):
                keys[b, n], values[b, n], ev_probs[b, n], conf[b, n] = c.key.float().cpu(), c.value.float().cpu(), c.event_probs.float().cpu(), c.confidence
                kinds[b, n] = c.event_type
                end = c.value_span[1] if c.value_span else c.key_span[1]
                spans[b, n] = torch.tensor([off + c.key_span[0], off + max(end, c.key_span[1])])
                key_text[b][n] = self._decode(chunk[b][c.key_span[0]:c.key_span[1]])
                value_text[b][n] = self._decode(chunk[b][c.value_span[0]:c.value_span[1]]) if c.value_span else None
                cmask[b, n] = True
        p_write = self._p_write(slots, keys, values, ev_probs, conf)
        batched = slots.batched_writes
        slots.batched_writes = False  # the rules' own order: one candidate at a time
        try:
            result = slots.write(keys, values, p_write, event=kinds, importance=conf.clamp(0, 1),
                                 chunk_id=chunk_ids[:, None].expand(B, N), span=spans,
                                 key_text=key_text, value_text=value_text, mask=cmask)
        finally:
            slots.batched_writes = batched
        for b in range(B):
            report.candidates[b] += int(cmask[b].sum())
            report.writes[b] += int(result.num_writes[b])

    @torch.no_grad()
    def _p_write(self, slots: SlotMemory, keys: torch.Tensor, values: torch.Tensor, ev_probs: torch.Tensor,
                 conf: torch.Tensor) -> torch.Tensor:
        """WriteController over (candidate, memory) features; computed against the pre-chunk state."""
        B, N, _ = keys.shape
        best, slot = slots.match(keys)  # [B, N]
        matched_v = slots.values.gather(1, slot.clamp(min=0)[..., None].expand(B, N, slots.value_dim))  # [B, N, dv]
        conflict = torch.where(slot >= 0, 1 - F.cosine_similarity(matched_v, values, dim=-1), torch.zeros_like(best))
        fill = slots.occupied.float().mean(1, keepdim=True).expand(B, N)
        feats = torch.stack([conf, best.clamp(min=-1.0), conflict, fill], -1)  # [B, N, 4]
        dt = self.writer.mlp[0].weight.dtype
        dev = self.writer.mlp[0].weight.device
        p = self.writer(keys.flatten(0, 1).to(dev, dt), ev_probs.flatten(0, 1).to(dev, dt), feats.flatten(0, 1).to(dev, dt))
        return p.view(B, N).float().cpu().clamp(0, 1)  # [B*N] -> [B, N]
