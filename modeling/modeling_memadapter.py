"""MemAdapterForCausalLM: a frozen causal LM plus an editable, request-local memory adapter.

The backbone is never trained or saved. The adapter is the grounding / write / query heads and
the injector (soft prefix or gated cross-attention modules), plus an optional peft LoRA on the
backbone. Data path of one request (see DESIGN.md):

    ingest:   chunk of <= chunk_tokens tokens -> backbone layers [0, read_layer) -> hidden
              -> ChunkIndex.add (summary + text)  and  GroundingHead -> WriteController -> SlotMemory
    generate: question -> QueryHead -> pool (slots + events grounded in retrieved chunks) -> ReadScorer
              -> prefix | cross_attn | text
              -> backbone.generate

Nothing is injected through ``past_key_values``, so the KV cache, batching with left padding,
greedy decoding and sampling all behave as in the plain backbone.

Threads: one model may serve concurrent requests (threads or asyncio tasks), each with its own
``RequestMemory``; they get exactly what they get one at a time (tests/modeling/test_concurrency.py).
Hidden-state capture, cross-attention memory and ``disable_adapter`` are per thread / task
(context variables), never model-wide. Not covered: one memory used by two requests at once
(lock it), sampling (the global torch RNG is shared, so draws interleave), a peft LoRA's
``disable_adapter`` (model-wide in peft), loading weights while requests run, and a caller that
tokenizes with ``padding=`` / ``truncation=`` on the shared fast tokenizer in other threads
(memadapter's own calls never pad or truncate, but a settings change can race them, 'Already
borrowed': give such threads a copy).

    >>> model = MemAdapterForCausalLM.from_pretrained(base_model, tokenizer=tok)   # doctest: +SKIP
    >>> memory = model.new_memory()                                                # doctest: +SKIP
    >>> model.ingest(memory, "alice lives in paris")                               # doctest: +SKIP
    >>> model.generate(**tok("where does alice live", return_tensors="pt"), memory=memory)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from memadapter._validate import check_allocation, check_size
from memadapter.chunk_index import ChunkIndex, index_bytes
from memadapter.errors import ConfigError, DTypeError, EmptyInputError, MemAdapterError, ShapeError
from memadapter.heads import (GroundingHead, Proposals, QueryHead, WriteController, masked_attention_pool, sentence_ends,
                              word_starts)
from memadapter.spans import sentence_chunks
from memadapter.request_memory import RequestMemory
from memadapter.slots import SlotMemory, slot_state_bytes

from . import hub
from .backbones import backbone_parts, check_pad_token, embed_tokens, read_hidden_states
from .configuration_memadapter import MemAdapterConfig
from .injectors import INJECTORS, Injector, get_injector
from .input_checks import InputChecksMixin
from .read_scorer import ReadScorer
from .reader import MemoryReaderMixin
from .selection import Selection

PROGRESS_MIN_CHUNKS = 8  # show a progress bar from this many chunks on
# ids of the models whose adapter is off (disable_adapter) in this thread / asyncio task
_ADAPTER_OFF: ContextVar[frozenset[int]] = ContextVar("memadapter_adapter_off", default=frozenset())
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


class MemAdapterForCausalLM(MemoryReaderMixin, InputChecksMixin, PreTrainedModel):
    """A frozen causal LM with a request-local slot memory and sparse chunk fallback.

    Example:
        >>> model = MemAdapterForCausalLM(MemAdapterConfig(key_dim=16, value_dim=16), backbone=lm)  # doctest: +SKIP
        >>> memory = model.new_memory(batch_size=2)                                   # doctest: +SKIP
        >>> model.ingest(memory, ["alice lives in paris", "bob lives in rome"])      # doctest: +SKIP
        >>> memory.table(0)                                                           # doctest: +SKIP
    """

    config_class = MemAdapterConfig
    base_model_prefix = "memadapter"
    supports_gradient_checkpointing = True
    _no_split_modules: list[str] = []

    def __init__(self, config: MemAdapterConfig, backbone: Optional[nn.Module] = None, tokenizer: Any = None):
        if backbone is None:
            raise ConfigError("backbone: MemAdapterForCausalLM needs a base model; use from_pretrained(base, adapter=...)")
        parts = backbone_parts(backbone)  # UnsupportedBackboneError for unknown families
        config.check_backbone(_unwrap(backbone).config)  # AdapterMismatchError naming both sides
        config.backbone_model_type = config.backbone_model_type or _unwrap(backbone).config.model_type
        config.hidden_size = config.hidden_size or parts.hidden_size
        config.backbone_num_layers = config.backbone_num_layers or parts.num_layers
        config.validate_fields()
        super().__init__(config)
        self.backbone = backbone
        for name, p in self.backbone.named_parameters():
            p.requires_grad_("lora_" in name)  # frozen backbone; a peft LoRA on it is adapter
        self._build_heads(config, parts.hidden_size)
        self.tokenizer = tokenizer
        self.post_init()
        ref = next(backbone.parameters())
        self._adapter_modules().to(device=ref.device, dtype=ref.dtype)

    def _build_heads(self, config: MemAdapterConfig, hidden: int) -> None:
        self.grounding = GroundingHead(hidden, config.key_dim, config.value_dim, config.num_event_types,
                                       context_size=config.grounding_context_size,
                                       type_reads_relation=config.type_reads_relation,
                                       lifecycle_typing=config.lifecycle_typing)
        self.writer = WriteController(config.key_dim, config.num_event_types)
        self.query_head = QueryHead(hidden, config.key_dim)
        self.read_scorer = ReadScorer()  # fitted after the heads (memadapter.training.fit_reader)
        # The injector's modules under the attribute names that are their state-dict prefixes
        # ("injector", "cross_attn", "value_token_proj"): saved adapters keep their keys.
        built = get_injector(config.injection).build(self, config, hidden)
        for name, module in built.items():
            setattr(self, name, module)
        self._injection_modules = tuple(built)

    def _adapter_modules(self) -> nn.ModuleList:
        mods = (self.grounding, self.writer, self.query_head, self.read_scorer, *(getattr(self, n) for n in self._injection_modules))
        return nn.ModuleList(mods)

    def _init_weights(self, module: nn.Module) -> None:
        """Heads initialise themselves; the frozen backbone must never be re-initialised."""

    # ------------------------------------------------------------------ adapter parameters
    @staticmethod
    def _is_adapter_key(name: str) -> bool:
        # peft LoRA weights live inside the backbone and are part of the adapter.
        return not name.startswith("backbone.") or "lora_" in name

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the adapter's tensors: heads, injector, cross-attention, LoRA. Never the backbone."""
        return {k: v for k, v in self.state_dict().items() if self._is_adapter_key(k)}

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if self._is_adapter_key(n))

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strict load of adapter tensors; a missing or unexpected key is a ConfigError naming it.
        An adapter saved before the learned reader has no ``read_scorer.*`` tensors: it reads with
        the scorer's prior (the plain joint score)."""
        own = self.adapter_state_dict()
        if not any(k.startswith("read_scorer.") for k in state):
            self.read_scorer.reset_prior()
            own = {k: v for k, v in own.items() if not k.startswith("read_scorer.")}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ConfigError(f"adapter weights: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ConfigError(f"adapter weights: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict(state, strict=False)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the plain backbone (no memory, no LoRA) inside the block.

        The memory is off only in the calling thread / task: concurrent requests keep theirs. A
        peft LoRA on the backbone is switched off by peft itself, which is model-wide.
        """
        peft_off = getattr(self.backbone, "disable_adapter", None)
        token = _ADAPTER_OFF.set(_ADAPTER_OFF.get() | {id(self)})
        try:
            with peft_off() if callable(peft_off) else nullcontext():
                yield
        finally:
            _ADAPTER_OFF.reset(token)

    @property
    def _adapter_enabled(self) -> bool:
        return id(self) not in _ADAPTER_OFF.get()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        # Non-reentrant by default: with a frozen backbone the reentrant variant drops adapter grads.
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        _unwrap(self.backbone).activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_disable(self) -> None:
        _unwrap(self.backbone).activation_checkpointing_disable()

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    # ------------------------------------------------------------------ text helpers
    def _tok(self) -> Any:
        if self.tokenizer is None:
            raise ConfigError("tokenizer: this operation needs text; pass tokenizer= to from_pretrained or set model.tokenizer")
        return self.tokenizer

    def _decode(self, ids: Sequence[int]) -> str:
        # Without a tokenizer, ids as words still give BM25 an exact-token lexical channel.
        if self.tokenizer is None:
            return " ".join(str(i) for i in ids)
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _token_marks(self, rows: list[list[int]]) -> tuple[Optional[list[list[bool]]], Optional[list[list[bool]]]]:
        """Per token of ``rows``: (begins a word, for ``snap_spans``; ends a sentence, for
        ``pair_in_sentence``), each None when its setting is off or there is no tokenizer."""
        if self.tokenizer is None:
            return None, None
        return (word_starts(rows, self._decode_rows) if self.config.ingest.snap_spans else None,
                sentence_ends(rows, self._decode_rows) if self.config.ingest.pair_in_sentence else None)

    def _decode_rows(self, rows: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(rows, clean_up_tokenization_spaces=False)

    def _propose(self, hidden: torch.Tensor, mask: torch.Tensor, rows: list[list[int]]) -> list:
        """The GroundingHead's candidates for ``rows`` (token lists behind ``hidden``), with the
        word and sentence marks the config asks for."""
        return self.grounding.propose(hidden, mask, *self._token_marks(rows))

    def _pad_id(self) -> int:
        pad = check_pad_token(self.backbone)
        return 0 if pad is None else int(pad)

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def _right_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token lists -> ids [B, T], mask [B, T] (right padding: spans stay row-relative)."""
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, : len(r)] = 1
        return ids.to(self._device()), mask.to(self._device())

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return read_hidden_states(self.backbone, ids, mask, self.config.read_layer)

    def _mean(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over tokens: [B, T, H] -> [B, H]."""
        return masked_attention_pool(hidden, torch.zeros(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device), mask.bool())

    @torch.no_grad()
    def encode_text(self, texts: list[str], kind: str) -> torch.Tensor:
        """Texts -> key vectors [N, dk] (unit norm) or value vectors [N, dv], as ingest makes them."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise DTypeError(f"texts: expected a list of str, got {type(texts).__name__}")
        if not texts:
            raise EmptyInputError("texts: the list is empty")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise DTypeError(f"texts[{bad}]: expected a str, got {type(texts[bad]).__name__}")
        if kind not in ("key", "value"):
            raise ConfigError(f"kind: expected 'key' or 'value', got {kind!r}")
        rows = [self._tok()(t, add_special_tokens=False)["input_ids"] for t in texts]
        if any(len(r) == 0 for r in rows):
            raise EmptyInputError("texts: a text has no tokens")
        self._check_token_ids("texts (the tokenizer's ids)", torch.tensor(sum(rows, []), dtype=torch.long))
        ids, mask = self._right_pad(rows)
        pooled = self.grounding.norm(self._mean(self._hidden(ids, mask), mask))  # [N, H]
        if kind == "key":
            # A free-text key ("Alice's city") names entity and relation at once: it fills both halves.
            return self.grounding.key(pooled, pooled).float().cpu()
        return self.grounding.value_proj(pooled).float().cpu()

    # ------------------------------------------------------------------ memory and ingest
    def new_memory(self, batch_size: int = 1) -> RequestMemory:
        """An empty memory for ``batch_size`` independent requests (CapacityError, before
        allocating, if it would not fit in the available memory)."""
        cfg = self.config
        check_size("batch_size", batch_size)
        need = slot_state_bytes(batch_size, cfg.num_slots, cfg.key_dim, cfg.value_dim) \
            + batch_size * index_bytes(cfg.hidden_size)
        check_allocation("batch_size x (num_slots x (key_dim + value_dim) + hidden_size)", need)
        # Memory lives on the CPU: it is small request data, and rows are edited by index from Python.
        slots = SlotMemory(cfg.num_slots, cfg.key_dim, cfg.value_dim, batch_size=batch_size,
                           match_threshold=cfg.ingest.slot_match_threshold,
                           update_match_threshold=cfg.ingest.slot_update_match_threshold,
                           tombstones=cfg.ingest.retract_tombstones, update_name_weight=cfg.ingest.slot_update_name_weight)
        indexes = [ChunkIndex(cfg.hidden_size, chunk_tokens=cfg.chunk_tokens) for _ in range(batch_size)]
        memory = RequestMemory(slots, indexes, self.encode_text)
        memory.adapter_id = self.adapter_fingerprint()  # _check_adapter_id refuses it to any other adapter
        return memory

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
            props = self.grounding.propose_batched(hidden, mask, *self._token_marks(chunk))
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

    def _value_embeds(self, sel: Selection) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Selected value token ids [B, K, L] -> backbone embeddings [B, K, L, H] and mask [B, K, L]."""
        if sel.value_ids is None:
            return None, None
        ids = sel.value_ids.to(self._device())
        mask = ids >= 0
        b, k, n = ids.shape
        embeds = embed_tokens(self.backbone, ids.clamp(min=0).view(b, k * n)).view(b, k, n, -1)  # [B, K, L, H]
        return embeds, mask

    # ------------------------------------------------------------------ injection
    def _memory_on(self, memory: Optional[RequestMemory]) -> bool:
        if memory is not None:
            self._check_memory(memory)
        return memory is not None and self._adapter_enabled

    def _injector(self) -> Injector:
        """The injector ``config.injection`` names, looked up per call: generation_eval switches a
        trained adapter to ``text`` on the same memory."""
        return get_injector(self.config.injection)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, memory: Optional[RequestMemory] = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """Causal LM forward with the memory injected; logits are aligned with ``input_ids``."""
        attention_mask = self._check_ids(input_ids, attention_mask)
        if labels is not None:
            self._check_labels(labels, input_ids)
        if not self._memory_on(memory):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        with torch.no_grad():
            sel = self.select(memory, input_ids, attention_mask)
        return self._forward_selected(sel, input_ids, attention_mask, labels, **kwargs)

    def forward_with_values(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                            values: torch.Tensor, valid: torch.Tensor, labels: Optional[torch.Tensor] = None,
                            value_ids: Optional[torch.Tensor] = None, **kwargs: Any) -> CausalLMOutputWithPast:
        """Differentiable forward with given memory ``values`` [B, K, dv] / ``valid`` [B, K] injected.

        Training's teacher-forced path: the values come from the grounding head (gold or softly
        selected events) with gradients, bypassing the router. ``value_ids`` [B, K, value_tokens]
        (-1 = none) are the entries' value tokens, required exactly when ``config.value_tokens > 0``.
        Injectors with ``takes_values`` only (``prefix``, ``cross_attn``): ``text`` has nothing differentiable to feed.
        """
        attention_mask = self._check_ids(input_ids, attention_mask)
        if not self._injector().takes_values:
            raise ConfigError(f"injection: forward_with_values needs an injector that reads value vectors "
                              f"({', '.join(n for n, i in INJECTORS.items() if i.takes_values)}), not "
                              f"{self.config.injection!r}")
        if values.dim() != 3 or tuple(values.shape[:2]) != tuple(valid.shape) or values.shape[0] != input_ids.shape[0]:
            raise ShapeError(f"values: expected [B={input_ids.shape[0]}, K, dv] matching valid {tuple(valid.shape)}, "
                             f"got {tuple(values.shape)}")
        if (value_ids is None) != (self.config.value_tokens == 0):
            raise ConfigError(f"value_ids: needed exactly when config.value_tokens > 0 (it is {self.config.value_tokens})")
        if value_ids is not None and tuple(value_ids.shape) != (*valid.shape, self.config.value_tokens):
            raise ShapeError(f"value_ids: expected {(*valid.shape, self.config.value_tokens)}, got {tuple(value_ids.shape)}")
        sel = Selection(values, valid.bool(), [[] for _ in range(values.shape[0])], ["memory"] * values.shape[0], value_ids)
        return self._forward_selected(sel, input_ids, attention_mask, labels, **kwargs)

    def _forward_selected(self, sel: Selection, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          labels: Optional[torch.Tensor], **kwargs: Any) -> CausalLMOutputWithPast:
        prep = self._injector().prepare(self, sel, input_ids, attention_mask)
        with prep.context:
            if prep.where is None:  # the text kept its places: the backbone's own output and loss
                return self.backbone(**prep.inputs, labels=labels, **kwargs)
            out = self.backbone(**prep.inputs, **kwargs)
        logits = out.logits.gather(1, prep.where[..., None].expand(-1, -1, out.logits.shape[-1]))  # [B, T, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 memory: Optional[RequestMemory] = None, **generate_kwargs: Any) -> torch.Tensor:
        """Like the backbone's generate (returns prompt + new tokens), with the memory injected."""
        attention_mask = self._check_ids(input_ids, attention_mask)
        if not self._memory_on(memory):
            return self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        generate_kwargs.setdefault("pad_token_id", self._pad_id())
        sel = self.select(memory, input_ids, attention_mask)
        prep = self._injector().prepare(self, sel, input_ids, attention_mask)
        with prep.context:
            out = self.backbone.generate(**prep.inputs, **generate_kwargs)
        # generate returns prompt + new tokens from input_ids, only the new ones from inputs_embeds
        new = out[:, prep.inputs["input_ids"].shape[1]:] if "input_ids" in prep.inputs else out
        return torch.cat([input_ids.repeat_interleave(new.shape[0] // input_ids.shape[0], 0), new], dim=1)

    # ------------------------------------------------------------------ save, load, Hub
    def _config_dict(self) -> dict:
        return json.loads(self.config.to_json_string(use_diff=True))

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> list:
        """Write adapter_config.json, adapter_model.safetensors and README.md, all at once.

        The files go to a fresh folder beside ``save_directory`` that is then swapped in
        (:func:`hub.save_adapter`): a save that fails or is killed leaves the previous adapter
        loadable. Other files in the folder are kept, and so is a README.md the user wrote (one
        without ``hub.CARD_MARKER``). ``results`` (a dict) fills the card's results table.
        """
        from memadapter.hub_cards.model_card import render_model_card

        config = self._config_dict()
        n_params = sum(v.numel() for v in self.adapter_state_dict().values())
        card = render_model_card({**config, "adapter_parameters": n_params}, kwargs.get("results"))
        return hub.save_adapter(save_directory, config, self.adapter_state_dict(), card)

    def push_to_hub(self, repo_id: str, *, token: Optional[Union[str, bool]] = None, private: Optional[bool] = None,
                    revision: Optional[str] = None, commit_message: str = "Upload memadapter adapter", **_: Any) -> Any:
        """Save to a temporary folder and upload exactly the three adapter files."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return hub.push_adapter(tmp, repo_id, token=token, private=private, revision=revision,
                                    commit_message=commit_message)

    @classmethod
    def from_pretrained(cls, base: Any = None, *, adapter: Any = None, revision: Optional[str] = None,
                        tokenizer: Any = None, token: Optional[Union[str, bool]] = None, dtype: Any = None,
                        **config_overrides: Any) -> "MemAdapterForCausalLM":
        """``base``: repo id / local dir / loaded model; ``adapter``: adapter dir or Hub repo id (optional:
        without it a fresh, untrained adapter is built from ``config_overrides``).

        ``from_pretrained(adapter_folder)`` alone, and ``AutoModelForCausalLM.from_pretrained(adapter_folder
        or repo_id)`` (which lands here through the ``config.json`` saved beside the adapter), load the
        base named in the adapter config plus the adapter, as peft's auto classes do; the config the
        Auto class built is not used (adapter_config.json is the adapter's config), and its
        ``cache_dir`` / ``force_download`` / ``local_files_only`` apply to the adapter and the base.
        A Hub adapter also loads with ``from_pretrained(adapter=repo_id)``, which needs no config.json
        (adapters pushed before it existed).
        """
        download: dict = {}
        if config_overrides.pop("_from_auto", False):
            dtype, download = _auto_kwargs(config_overrides, dtype)
            if adapter is None:
                base, adapter = None, base
        elif adapter is None and _is_adapter_folder(base):
            base, adapter = None, base
        if adapter is not None and config_overrides:
            raise ConfigError(f"config_overrides: {sorted(config_overrides)} cannot change a saved adapter's config")
        weights = None
        if adapter is not None:  # both files are read and checked before the base is loaded
            folder = hub.resolve_adapter(adapter, revision=revision, token=token, **download)
            config = _saved_config(folder)
            weights = hub.load_adapter_weights(folder)
        else:
            config = MemAdapterConfig(**config_overrides)
        if base is None:
            base = config.base_model_name_or_path
        backbone, tokenizer = _load_base(base, config, tokenizer, dtype, token, download)
        if isinstance(base, str) and config.base_model_name_or_path is None:
            config.base_model_name_or_path = base
        model = cls(config, backbone=backbone, tokenizer=tokenizer)
        if weights is not None:
            model.load_adapter_state_dict(weights)
        return model.eval()


# What transformers' Auto classes pass on to from_pretrained besides the path (auto_factory, 5.x).
# Loading an adapter has no use for these: the adapter's config is adapter_config.json, proxies are
# huggingface_hub's settings, and remote code is never run, whatever trust_remote_code says.
_AUTO_KWARGS = ("config", "proxies", "trust_remote_code", "adapter_kwargs")
# ... and these go on to the adapter's download and the base's load, as the user set them.
_AUTO_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "local_files_only")


def _auto_kwargs(kwargs: dict, dtype: Any) -> tuple[Any, dict]:
    """Take the Auto class's keyword arguments out of ``kwargs``; returns the dtype asked for and
    the download options that were set."""
    if kwargs.pop("subfolder", "") not in ("", None):
        raise ConfigError("subfolder: an adapter is loaded from its folder or repo root; subfolders are not supported")
    for name in _AUTO_KWARGS:
        kwargs.pop(name, None)
    download = {name: kwargs.pop(name, None) for name in _AUTO_DOWNLOAD_KWARGS}
    torch_dtype = kwargs.pop("torch_dtype", None)
    return (dtype if dtype is not None else torch_dtype), {k: v for k, v in download.items() if v not in (None, False)}


def _is_adapter_folder(path: Any) -> bool:
    """A local folder holding an adapter_config.json: from_pretrained(folder) then loads it as the adapter."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    try:
        return os.path.isfile(os.path.join(os.fspath(path), hub.ADAPTER_CONFIG_NAME))
    except (TypeError, ValueError):  # a bytes path, a NUL in it: not a folder we load; resolve_adapter says why
        return False


def _unwrap(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _saved_config(folder: Any) -> MemAdapterConfig:
    """The adapter's config; a ConfigError names the file it came from."""
    try:
        return MemAdapterConfig.from_dict(hub.load_adapter_config(folder))
    except ConfigError as err:
        if type(err) is not ConfigError:
            raise
        raise ConfigError(f"adapter: {os.path.join(os.fspath(folder), hub.ADAPTER_CONFIG_NAME)}: {err}") from err


def _load_base(base: Any, config: MemAdapterConfig, tokenizer: Any, dtype: Any, token: Any, download: dict):
    """A loaded model is used as is; a path or repo id loads without remote code, ever.
    ``download``: cache_dir / force_download / local_files_only given to the Auto class, or none."""
    if isinstance(base, nn.Module):
        return base, tokenizer
    is_path = isinstance(base, os.PathLike)
    if is_path:
        base = os.fspath(base)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"base: expected a repo id, a local directory or a loaded model, got {base!r}")
    if os.path.isfile(base):
        raise ConfigError(f"base: {base!r} is a file; expected a model folder or a Hub repo id")
    if (is_path or hub._looks_like_path(base)) and not os.path.isdir(base):
        raise ConfigError(f"base: no model folder at {base!r}")
    from transformers import AutoTokenizer

    kwargs = dict(download, revision=config.base_model_revision, trust_remote_code=False, token=token)
    if hub.hub_offline():  # transformers reads HF_HUB_OFFLINE at import only
        kwargs["local_files_only"] = True
    try:
        backbone = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:  # not found, offline, no weights, unknown model type
        if isinstance(err, MemAdapterError):
            raise
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"base: cannot load {base!r} ({type(err).__name__}: {first_line})") from err
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(base, **kwargs)
        except (OSError, ValueError):
            tokenizer = None  # ids-only use still works; text methods will ask for one
    return backbone, tokenizer


def _keep_peft_detection_off_memadapter() -> None:
    """Let ``AutoModelForCausalLM.from_pretrained(repo_id)`` reach MemAdapterForCausalLM on a Hub id.

    The Auto class first asks ``find_adapter_config_file`` whether the path holds an
    adapter_config.json. For a Hub id (no local config.json to keep it) it then swaps in the base
    named there and hands the repo to peft, which refuses our config (no peft_type) before any
    registered class is asked. A local folder escapes only because its config.json is found on disk.
    The wrapper answers "no peft adapter" for memadapter configs alone (hub.is_adapter_config_file:
    model_type "memadapter", no peft_type), so transformers reads config.json, finds the registered
    type, and calls our from_pretrained; every other answer is transformers' own, unchanged.

    Why this and not a new file name for the config: adapter_config.json is peft's convention, the
    trainer's checkpoints and every saved adapter (the bundled one included) use it, and adapters
    already pushed with it would stay unloadable by id, where this way they load. The wrapper only
    sees the name auto_factory imported; if a transformers release moves it, Hub ids go to peft
    again and tests/modeling/test_auto_loading.py fails, rather than anything breaking at import.
    """
    from transformers.models.auto import auto_factory

    find = getattr(auto_factory, "find_adapter_config_file", None)
    if find is None or getattr(find, "_memadapter_wrapper", False):
        return  # another transformers layout, or wrapped already (a reload of this module)

    @functools.wraps(find)
    def find_adapter_config_file(*args: Any, **kwargs: Any) -> Optional[str]:
        path = find(*args, **kwargs)
        return None if path is not None and hub.is_adapter_config_file(path) else path

    find_adapter_config_file._memadapter_wrapper = True  # type: ignore[attr-defined]
    auto_factory.find_adapter_config_file = find_adapter_config_file


# Registration lets AutoConfig / AutoModelForCausalLM map model_type "memadapter" to these classes
# with no remote code (the package is the code).
AutoConfig.register("memadapter", MemAdapterConfig, exist_ok=True)
AutoModelForCausalLM.register(MemAdapterConfig, MemAdapterForCausalLM, exist_ok=True)
_keep_peft_detection_off_memadapter()
