"""Learned adapter heads over frozen hidden states: grounding, write control, query encoding.

Pure torch, no Hugging Face import: these are memory-core modules. The model wrapper in
``memadapter.modeling`` feeds them hidden states taken at the backbone's read layer.

- ``GroundingHead`` tags tokens (BIO over key and value spans), classifies the event type and
  scores confidence, then decodes candidate events: ``propose`` with plain loops (the reference),
  ``propose_batched`` (ingest's path) with tensor ops per batch, no loop per candidate or token.
- ``WriteController`` turns a candidate plus its match/conflict features against the memory
  into ``p_write``.
- ``QueryHead`` pools a question into a key-space query vector.

Decoding tags into spans and pooling over spans live in :mod:`memadapter.spans`.

Keys and queries are L2-normalised so that ``q . k`` is a cosine and one match threshold
works for every backbone width.

Training targets (for the training issue; nothing here trains):
    GroundingHead.loss(out, tag_targets [B,T] long in 0..4 or -100,
                       event_targets [B,T] long in 0..3 or -100,
                       confidence_targets [B,T] float in [0,1] or NaN to ignore)
    WriteController.loss(p_write [N], write_targets [N] float in {0,1})
    QueryHead.contrastive_loss(queries [N,dk], keys [N,dk])  (row i of keys is the positive)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_positive_int, check_tensor
from .errors import ShapeError
# The span helpers live in their own module; these names are part of this module's API too.
from .spans import (  # noqa: F401
    RELATION_WINDOW, TAG_KEY_B, TAG_KEY_I, TAG_O, TAG_VAL_B, TAG_VAL_I, TAGS, decode_pairs_batched, decode_spans,
    marks_tensor, pair_spans, pool_spans, pool_spans_batched, pool_spans_reference, relation_spans,
    relation_spans_reference, sentence_ends, snap_to_words, word_starts,
)

# Same order as memadapter.slots.EventType (NEW / UPDATE / RETRACT / IRRELEVANT).
EVENT_TYPES: tuple[str, ...] = ("new", "update", "retract", "irrelevant")
IGNORE_INDEX = -100
CONTEXT_WINDOW = 2  # tokens on each side the grounding head's context convolution reads


@dataclass
class Candidate:
    """One proposed memory event, decoded from a row of token tags.

    Spans are ``(start, end)`` token positions, end exclusive, relative to the input row.
    ``value_span`` is None when no value span followed the key (e.g. a retraction).
    """

    key_span: tuple[int, int]
    value_span: Optional[tuple[int, int]]
    event_type: int
    event_probs: torch.Tensor  # [E]
    confidence: float
    key: torch.Tensor  # [dk], unit norm
    value: torch.Tensor  # [dv]

    @property
    def event_name(self) -> str:
        return EVENT_TYPES[self.event_type]


@dataclass
class GroundingOutput:
    """Per-token logits from ``GroundingHead.forward``."""

    tag_logits: torch.Tensor  # [B, T, 5]
    event_logits: torch.Tensor  # [B, T, E]
    confidence_logits: torch.Tensor  # [B, T]
    extra: dict = field(default_factory=dict)


class GroundingHead(nn.Module):
    """Token tagger + event classifier + confidence that proposes candidate memory events.

    Example:
        >>> head = GroundingHead(hidden_size=64, key_dim=16, value_dim=16)
        >>> cands = head.propose(torch.randn(2, 10, 64), torch.ones(2, 10, dtype=torch.bool))
        >>> len(cands)
        2
    """

    def __init__(self, hidden_size: int, key_dim: int, value_dim: int, num_event_types: int = len(EVENT_TYPES),
                 context_size: int = 0, context_window: int = CONTEXT_WINDOW):
        super().__init__()
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.key_dim = check_positive_int("key_dim", key_dim)
        self.value_dim = check_positive_int("value_dim", value_dim)
        self.num_event_types = check_positive_int("num_event_types", num_event_types)
        self.context_window = check_positive_int("context_window", context_window)
        self.norm = nn.LayerNorm(hidden_size)  # hidden norms differ by family (Gemma scales by sqrt(d))
        # A causal backbone's state at "The" cannot know an unseen name follows; a small
        # two-sided convolution lets every token see its neighbours before it is tagged.
        self.context = nn.Conv1d(hidden_size, context_size, 2 * context_window + 1, padding=context_window) \
            if context_size > 0 else None
        features = hidden_size + max(context_size, 0)
        self.tagger = nn.Linear(features, len(TAGS))
        self.event = nn.Linear(features, num_event_types)
        self.confidence = nn.Linear(features, 1)
        self.key_proj = nn.Linear(2 * hidden_size, key_dim)  # [entity ; relation] -> key
        self.value_proj = nn.Linear(hidden_size, value_dim)
        self._tag_bias: Optional[torch.Tensor] = None  # see tag_bias()

    @contextmanager
    def tag_bias(self, bias: Sequence[float]) -> Iterator[None]:
        """Add ``bias`` (one number per tag in TAGS order) to the tag logits inside the block.

        A benchmark hook: raising KEY_B and VAL_B makes the tagger propose more spans, so ingest
        can be timed at several times a trained tagger's proposal rate. The model is shared, so
        this is model-wide while the block runs; never use it while serving requests."""
        check_tensor("bias", torch.as_tensor(bias, dtype=torch.float32), ndim=1, last_dim=len(TAGS))
        old, self._tag_bias = self._tag_bias, torch.as_tensor(bias, dtype=torch.float32)
        try:
            yield
        finally:
            self._tag_bias = old

    def key(self, entity: torch.Tensor, relation: torch.Tensor) -> torch.Tensor:
        """Unit key from the pooled entity span and relation region: [..., H] x2 -> [..., dk]."""
        return F.normalize(self.key_proj(torch.cat([entity, relation], -1)), dim=-1)

    def _check(self, hidden: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        check_tensor("hidden", hidden, ndim=3, last_dim=self.hidden_size)
        if mask is None:
            return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        check_tensor("mask", mask, ndim=2, floating=False, nonempty=False)
        if tuple(mask.shape) != tuple(hidden.shape[:2]):
            raise ShapeError(f"mask: expected shape {tuple(hidden.shape[:2])}, got {tuple(mask.shape)}")
        return mask.bool()

    def features(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What the tagger, event and confidence layers read: [B, T, H] -> [B, T, H + C]."""
        h = self.norm(hidden)
        if self.context is not None:
            x = (h * mask[..., None].to(h.dtype)).transpose(1, 2)  # [B, H, T]; padding reads as zeros
            h = torch.cat([h, F.gelu(self.context(x)).transpose(1, 2)], -1)  # [B, T, H + C]
        return h

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None) -> GroundingOutput:
        """Per-token logits; padded positions get tag O so they never open a span."""
        mask = self._check(hidden, mask)
        h = self.features(hidden, mask)
        tag_logits = self.tagger(h)  # [B, T, 5]
        if self._tag_bias is not None:
            tag_logits = tag_logits + self._tag_bias.to(tag_logits)
        pad_o = torch.full_like(tag_logits, torch.finfo(tag_logits.dtype).min)
        pad_o[..., TAG_O] = 0.0
        tag_logits = torch.where(mask[..., None], tag_logits, pad_o)
        return GroundingOutput(tag_logits, self.event(h), self.confidence(h).squeeze(-1))

    @torch.no_grad()
    def propose(self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None,
                word_start: Optional[list[list[bool]]] = None) -> list[list[Candidate]]:
        """Decode candidates per row: spans by a plain BIO loop, a key paired with the value after
        it, spans
        widened to whole words when ``word_start`` [B][T] says which tokens begin one
        (:func:`snap_to_words`), vectors pooled over the spans."""
        mask = self._check(hidden, mask)
        out = self.forward(hidden, mask)
        tags = out.tag_logits.argmax(-1).tolist()  # [B][T]
        h = self.norm(hidden)
        lengths = mask.sum(-1).tolist()
        result: list[list[Candidate]] = []
        for b in range(hidden.shape[0]):
            n = int(lengths[b])
            pairs = pair_spans(decode_spans(tags[b][:n]))
            if word_start is not None:
                pairs = snap_to_words(pairs, word_start[b][:n])
            result.append(self._row_candidates(h[b], out, b, pairs, n))
        return result

    @torch.no_grad()
    def propose_batched(self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None,
                        word_start: Optional[list[list[bool]]] = None) -> "Proposals":
        """What :meth:`propose` (the plain-loop reference) decodes, as padded [B, N] tensors: spans
        decoded, paired and snapped by tensor ops, and pooled by prefix sums, with no Python loop
        per candidate or token (ingest's path)."""
        mask = self._check(hidden, mask)
        out = self.forward(hidden, mask)
        lengths = mask.sum(-1)  # [B]
        T = hidden.shape[1]
        ws = None if word_start is None else marks_tensor(word_start, lengths, T, True, hidden.device)
        key_spans, val_spans, has_value, cmask = decode_pairs_batched(out.tag_logits.argmax(-1), lengths, ws)
        return self._pool_proposals(self.norm(hidden), out, key_spans, val_spans, has_value, cmask, lengths[:, None])

    def _pool_proposals(self, h: torch.Tensor, out: GroundingOutput, key_spans: torch.Tensor, val_spans: torch.Tensor,
                        has_value: torch.Tensor, cmask: torch.Tensor, length: torch.Tensor) -> "Proposals":
        """``_row_candidates`` for a whole batch: [B, N, 2] spans -> pooled vectors and scores."""
        N = key_spans.shape[1]
        whole = torch.stack([key_spans[..., 0], torch.maximum(key_spans[..., 1], val_spans[..., 1])], -1)  # [B, N, 2]
        rel = relation_spans(key_spans, val_spans, length)  # [B, N, 2]
        pooled = pool_spans_batched(h, torch.cat([key_spans, rel, val_spans], 1))  # [B, 3N, H]: one prefix sum
        keys = self.key(pooled[:, :N], pooled[:, N:2 * N])  # [B, N, dk]
        values = self.value_proj(pooled[:, 2 * N:])  # [B, N, dv]
        ev = pool_spans_batched(out.event_logits, whole).softmax(-1)  # [B, N, E]
        kind = ev.argmax(-1)
        conf = torch.sigmoid(pool_spans_batched(out.confidence_logits[..., None], whole)[..., 0])  # [B, N]
        return Proposals(key_spans, val_spans, has_value, kind, ev, conf, keys, values, cmask)

    def _row_candidates(self, h: torch.Tensor, out: GroundingOutput, b: int,
                        pairs: list[tuple[tuple[int, int], Optional[tuple[int, int]]]], length: int) -> list[Candidate]:
        if not pairs:
            return []
        key_spans = torch.tensor([k for k, _ in pairs], device=h.device)  # [N, 2]
        # A key without a value pools its value from the key span (retractions carry no value).
        val_spans = torch.tensor([v if v is not None else k for k, v in pairs], device=h.device)
        # Confidence and the event type are read over the whole candidate (key start .. value end).
        whole = torch.stack([key_spans[:, 0], torch.maximum(key_spans[:, 1], val_spans[:, 1])], -1)
        rel = relation_spans(key_spans, val_spans, length)  # [N, 2]
        keys = self.key(pool_spans(h, key_spans), pool_spans(h, rel))  # [N, dk]
        values = self.value_proj(pool_spans(h, val_spans))  # [N, dv]
        ev = pool_spans(out.event_logits[b], whole).softmax(-1)  # [N, E]
        kind = ev.argmax(-1)
        conf = torch.sigmoid(pool_spans(out.confidence_logits[b][:, None], whole)[:, 0])  # [N]
        return [
            Candidate(k, v, int(kind[i]), ev[i], float(conf[i]), keys[i], values[i])
            for i, (k, v) in enumerate(pairs)
        ]

    def loss(
        self,
        out: GroundingOutput,
        tag_targets: torch.Tensor,
        event_targets: torch.Tensor,
        confidence_targets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Token-level training loss: CE(tags) + CE(event) + BCE(confidence), ignoring -100 / NaN."""
        for name, t in (("tag_targets", tag_targets), ("event_targets", event_targets)):
            if tuple(t.shape) != tuple(out.tag_logits.shape[:2]):
                raise ShapeError(f"{name}: expected shape {tuple(out.tag_logits.shape[:2])}, got {tuple(t.shape)}")
        loss = F.cross_entropy(out.tag_logits.flatten(0, 1), tag_targets.flatten(), ignore_index=IGNORE_INDEX)
        if bool((event_targets != IGNORE_INDEX).any()):
            loss = loss + F.cross_entropy(out.event_logits.flatten(0, 1), event_targets.flatten(),
                                          ignore_index=IGNORE_INDEX)
        if confidence_targets is not None:
            keep = ~torch.isnan(confidence_targets)
            if bool(keep.any()):
                loss = loss + F.binary_cross_entropy_with_logits(out.confidence_logits[keep], confidence_targets[keep])
        return loss


@dataclass
class Proposals:
    """Candidates of a whole batch as padded tensors (``GroundingHead.propose_batched``).

    ``mask`` [B, N] marks real candidates; spans are row-relative ``(start, end)``, end exclusive.
    A candidate without a value has ``has_value`` False and its ``value_spans`` equal to its key span.
    """

    key_spans: torch.Tensor  # [B, N, 2] long
    value_spans: torch.Tensor  # [B, N, 2] long
    has_value: torch.Tensor  # [B, N] bool
    event_type: torch.Tensor  # [B, N] long
    event_probs: torch.Tensor  # [B, N, E]
    confidence: torch.Tensor  # [B, N]
    keys: torch.Tensor  # [B, N, dk], unit norm
    values: torch.Tensor  # [B, N, dv]
    mask: torch.Tensor  # [B, N] bool

    @property
    def counts(self) -> list[int]:
        return self.mask.sum(1).tolist()


WRITE_FEATURES: tuple[str, ...] = ("confidence", "match", "conflict", "fill")


class WriteController(nn.Module):
    """p_write = sigmoid(f(key, event type probs, confidence, match, conflict, fill)).

    ``match`` is the best key score against the row's memory, ``conflict`` is how far the
    candidate's value is from that matched slot's value (1 - cosine), ``fill`` the used fraction.
    The last bias starts at ``init_bias`` (default +2, p ~ 0.88) so an untrained controller lets
    the grounding head's candidates through and tests can see writes happen.

    Example:
        >>> wc = WriteController(key_dim=16)
        >>> p = wc(torch.randn(3, 16), torch.softmax(torch.randn(3, 4), -1), torch.rand(3, 4))
        >>> tuple(p.shape)
        (3,)
    """

    def __init__(self, key_dim: int, num_event_types: int = len(EVENT_TYPES), hidden: int = 32, init_bias: float = 2.0):
        super().__init__()
        self.key_dim = check_positive_int("key_dim", key_dim)
        self.num_event_types = check_positive_int("num_event_types", num_event_types)
        check_positive_int("hidden", hidden)
        self.mlp = nn.Sequential(
            nn.Linear(key_dim + num_event_types + len(WRITE_FEATURES), hidden), nn.GELU(), nn.Linear(hidden, 1)
        )
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.constant_(self.mlp[2].bias, init_bias)

    def forward(self, keys: torch.Tensor, event_probs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """keys [N, dk], event_probs [N, E], features [N, 4] (WRITE_FEATURES order) -> p_write [N]."""
        check_tensor("keys", keys, ndim=2, last_dim=self.key_dim, nonempty=False)
        check_tensor("event_probs", event_probs, ndim=2, last_dim=self.num_event_types, nonempty=False)
        check_tensor("features", features, ndim=2, last_dim=len(WRITE_FEATURES), nonempty=False)
        if not (keys.shape[0] == event_probs.shape[0] == features.shape[0]):
            raise ShapeError(
                f"keys/event_probs/features: row counts differ ({keys.shape[0]}, {event_probs.shape[0]}, {features.shape[0]})"
            )
        x = torch.cat([keys, event_probs, features], -1)  # [N, dk + E + 4]
        return torch.sigmoid(self.mlp(x).squeeze(-1))

    @staticmethod
    def loss(p_write: torch.Tensor, write_targets: torch.Tensor) -> torch.Tensor:
        """BCE against 0/1 write labels (lite write supervision)."""
        if p_write.shape != write_targets.shape:
            raise ShapeError(f"write_targets: expected shape {tuple(p_write.shape)}, got {tuple(write_targets.shape)}")
        return F.binary_cross_entropy(p_write.clamp(1e-6, 1 - 1e-6), write_targets.to(p_write.dtype))


def masked_attention_pool(hidden: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax-weighted mean over unmasked tokens: hidden [B,T,H], scores [B,T], mask [B,T] -> [B,H]."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(-1) * mask  # rows with no token get all-zero weights
    return torch.einsum("bt,bth->bh", weights, hidden)


def masked_attention_pool_reference(hidden: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain-loop reference for ``masked_attention_pool``."""
    out = hidden.new_zeros(hidden.shape[0], hidden.shape[-1])
    for b in range(hidden.shape[0]):
        idx = [t for t in range(hidden.shape[1]) if bool(mask[b, t])]
        if idx:
            w = torch.softmax(scores[b, idx], -1)
            out[b] = sum(w[i] * hidden[b, t] for i, t in enumerate(idx))
    return out


class QueryHead(nn.Module):
    """Pools a question's hidden states into a unit-norm query in key space.

    Example:
        >>> qh = QueryHead(hidden_size=64, key_dim=16)
        >>> q = qh(torch.randn(2, 7, 64), torch.ones(2, 7, dtype=torch.bool))
        >>> tuple(q.shape)
        (2, 16)
    """

    def __init__(self, hidden_size: int, key_dim: int):
        super().__init__()
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.key_dim = check_positive_int("key_dim", key_dim)
        self.norm = nn.LayerNorm(hidden_size)
        self.score = nn.Linear(hidden_size, 1)
        self.proj = nn.Linear(hidden_size, key_dim)

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """hidden [B, T, H], mask [B, T] -> q [B, dk] (unit norm)."""
        check_tensor("hidden", hidden, ndim=3, last_dim=self.hidden_size)
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        elif tuple(mask.shape) != tuple(hidden.shape[:2]):
            raise ShapeError(f"mask: expected shape {tuple(hidden.shape[:2])}, got {tuple(mask.shape)}")
        h = self.norm(hidden)
        pooled = masked_attention_pool(h, self.score(h).squeeze(-1), mask.bool())  # [B, H]
        return F.normalize(self.proj(pooled), dim=-1)

    @staticmethod
    def contrastive_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
        """InfoNCE: row i of ``keys`` is the positive for query i, the other rows are negatives."""
        if queries.shape != keys.shape:
            raise ShapeError(f"keys: expected shape {tuple(queries.shape)}, got {tuple(keys.shape)}")
        logits = queries @ keys.T / temperature  # [N, N]
        return F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))
