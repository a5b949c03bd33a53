"""Phase 13's adapter and its inputs: backbone features of controlled samples (:func:`featurize`),
the learned key pool, and :class:`Phase13Adapter` (writer + key/query retriever + pointer readouts).
Which metadata each protocol may read is decided here, in :func:`featurize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from memadapter.errors import ConfigError, EmptyInputError, ShapeError
from memadapter.heads import WriteController, masked_attention_pool, masked_attention_pool_reference
from memadapter.slots import EventType

from .phase13_backbones import HiddenCache
from .phase13_data import MAX_KEYS, Sample

PROTOCOLS = ("oracle", "learned")
TEMP = 0.05  # key-similarity temperature of training and of the fallback's ranking


# ----------------------------------------------------------------------------- features


@dataclass
class Feats:
    """Backbone features of B samples with N events each; ``None`` where a protocol reads nothing."""

    event_vec: torch.Tensor  # [B, N, H] mean-pooled full event sentence
    query_vec: torch.Tensor  # [B, H] mean-pooled full query sentence
    event_tok: Optional[torch.Tensor] = None  # [B, N, T, H] learned: token states
    event_mask: Optional[torch.Tensor] = None  # [B, N, T]
    query_tok: Optional[torch.Tensor] = None  # [B, Tq, H]
    query_mask: Optional[torch.Tensor] = None  # [B, Tq]
    canon_event: Optional[torch.Tensor] = None  # [B, N, H] oracle: canonical "entity N" vectors
    canon_query: Optional[torch.Tensor] = None  # [B, H]
    event_key_ids: Optional[torch.Tensor] = None  # [B, N] oracle: exact key equality
    query_key_ids: Optional[torch.Tensor] = None  # [B]
    event_text: Optional[list[list[str]]] = None  # learned: the B x N event sentences (lexical agreement)
    query_text: Optional[list[str]] = None  # learned: the B query sentences


def _pad_tokens(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """list of [T_i, H] -> ([n, T, H] zero-padded, [n, T] mask)."""
    T = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros(len(rows), T, rows[0].shape[1])
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, :r.shape[0]], mask[i, :r.shape[0]] = r, True
    return out, mask


def featurize(samples: Sequence[Sample], cache: HiddenCache, protocol: str) -> Feats:
    """Features of equal-length samples. ``learned`` reads ``events`` and ``query`` only;
    ``oracle`` also reads ``key_ids`` and ``query_key_id`` (= key_ids[target]), as paper 2.4 does."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: unknown {protocol!r}; choose from {list(PROTOCOLS)}")
    if not samples:
        raise EmptyInputError("samples: need at least one sample")
    B, N = len(samples), len(samples[0].events)
    if any(len(s.events) != N for s in samples):
        raise ShapeError("samples: every sample in a batch needs the same number of events")
    flat = [e for s in samples for e in s.events]
    toks = cache.tokens(flat + [s.query for s in samples])
    ev_tok, ev_mask = _pad_tokens(toks[:B * N])
    q_tok, q_mask = _pad_tokens(toks[B * N:])
    mean = lambda t, m: (t * m[..., None]).sum(-2) / m.sum(-1, keepdim=True)  # noqa: E731
    f = Feats(mean(ev_tok, ev_mask).reshape(B, N, -1), mean(q_tok, q_mask))  # [B*N, H] -> [B, N, H]
    if protocol == "learned":
        f.event_tok, f.event_mask = ev_tok.reshape(B, N, *ev_tok.shape[1:]), ev_mask.reshape(B, N, -1)
        f.query_tok, f.query_mask = q_tok, q_mask
        f.event_text, f.query_text = [list(s.events) for s in samples], [s.query for s in samples]
        return f
    ids = torch.tensor([s.key_ids for s in samples])  # [B, N]
    qids = torch.tensor([s.query_key_id for s in samples])  # [B]
    canon = cache.mean([f"entity {k}" for k in range(MAX_KEYS)])  # [K, H]
    f.canon_event, f.canon_query = canon[ids], canon[qids]
    f.event_key_ids, f.query_key_ids = ids, qids
    return f


# ----------------------------------------------------------------------------- the adapter
def multi_head_pool(hidden: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden [M, T, H], scores [M, T, h], mask [M, T] -> [M, h*H]: one attention pool per head."""
    return torch.cat([masked_attention_pool(hidden, scores[..., i], mask) for i in range(scores.shape[-1])], -1)


def multi_head_pool_reference(hidden: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain-loop reference for :func:`multi_head_pool`."""
    return torch.cat([masked_attention_pool_reference(hidden, scores[..., i], mask)
                      for i in range(scores.shape[-1])], -1)


class KeyPool(nn.Module):
    """Learned key from a sentence's own tokens: h attention pools over token states, projected to a
    unit key. Shared by events and queries, so one key space serves writing and reading.

    Example:
        >>> pool = KeyPool(hidden_size=64, key_dim=32)
        >>> tuple(pool(torch.randn(2, 5, 9, 64), torch.ones(2, 5, 9, dtype=torch.bool)).shape)
        (2, 5, 32)
    """

    def __init__(self, hidden_size: int, key_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)  # Gemma's hidden states are sqrt(d) larger
        self.score = nn.Linear(hidden_size, heads)
        self.proj = nn.Linear(heads * hidden_size, key_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens [..., T, H], mask [..., T] -> [..., dk] unit keys."""
        lead, (T, H) = tokens.shape[:-2], tokens.shape[-2:]
        h = self.norm(tokens.reshape(-1, T, H))  # [M, T, H]
        pooled = multi_head_pool(h, self.score(h), mask.reshape(-1, T))  # [M, heads*H]
        return F.normalize(self.proj(pooled), dim=-1).reshape(*lead, -1)  # [..., dk]


def _mlp(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out))


class Phase13Adapter(nn.Module):
    """Writer + key/query retriever + pointer readouts over frozen hidden states.

    ``oracle``: retriever keys from canonical-key vectors, readouts from [full, canonical].
    ``learned``: retriever keys from :class:`KeyPool`, readouts from full-sentence vectors only.

    Example:
        >>> ad = Phase13Adapter(hidden_size=64, protocol="learned")
        >>> f = Feats(torch.randn(1, 6, 64), torch.randn(1, 64), torch.randn(1, 6, 4, 64),
        ...           torch.ones(1, 6, 4, dtype=torch.bool), torch.randn(1, 4, 64), torch.ones(1, 4, dtype=torch.bool))
        >>> tuple(ad.p_write(f).shape), tuple(ad.event_keys(f).shape)
        ((1, 6), (1, 6, 64))
    """

    def __init__(self, hidden_size: int, protocol: str, key_dim: int = 64, token_writer: bool = False) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol: unknown {protocol!r}; choose from {list(PROTOCOLS)}")
        if token_writer and protocol != "learned":
            raise ConfigError("token_writer: reads token states, which only the learned protocol has")
        # token_writer: the writer reads an attention pool over the sentence's tokens instead of its
        # mean, so a signal word ("update") is not diluted by an unseen sentence structure's words.
        self.protocol, self.key_dim, self.token_writer = protocol, key_dim, token_writer
        if token_writer:
            self.write_norm, self.write_score = nn.LayerNorm(hidden_size), nn.Linear(hidden_size, 1)
        # IDF of words over the training sentences, set by :func:`train` (Thresholds.lexical_idf "train")
        self.background: Optional[Callable[[str], float]] = None
        rep = 2 * hidden_size if protocol == "oracle" else hidden_size
        self.write_in = nn.Sequential(_mlp(hidden_size, key_dim), nn.GELU())
        self.write_event = nn.Linear(key_dim, len(EventType))
        self.writer = WriteController(key_dim, num_event_types=len(EventType), init_bias=0.0)
        self.key = _mlp(hidden_size, key_dim) if protocol == "oracle" else KeyPool(hidden_size, key_dim)
        self.read_q, self.read_e, self.read_pos = _mlp(rep, key_dim), _mlp(rep, key_dim), nn.Linear(2, 1)
        self.sparse_q, self.sparse_e = _mlp(rep, key_dim), _mlp(rep, key_dim)

    def p_write(self, f: Feats) -> torch.Tensor:
        """[B, N]: the writer sees the full event sentence only (write labels supervise it)."""
        B, N, _ = f.event_vec.shape
        if self.token_writer:
            h = self.write_norm(f.event_tok.flatten(0, 1))  # [B*N, T, H]
            pooled = masked_attention_pool(h, self.write_score(h)[..., 0], f.event_mask.flatten(0, 1))  # [B*N, H]
            x = self.write_in(pooled)  # [B*N, dk]
        else:
            x = self.write_in(f.event_vec).reshape(B * N, -1)  # [B*N, dk]
        # Memory-state features (match, conflict, fill) stay zero: lite labels depend on the event alone.
        feats = x.new_zeros(B * N, 4)
        return self.writer(x, self.write_event(x).softmax(-1), feats).reshape(B, N)

    def event_keys(self, f: Feats) -> torch.Tensor:
        """[B, N, dk] unit retriever keys."""
        if self.protocol == "oracle":
            return F.normalize(self.key(f.canon_event), dim=-1)
        return self.key(f.event_tok, f.event_mask)

    def query_key(self, f: Feats) -> torch.Tensor:
        """[B, dk] unit retriever query (same module as the keys: a shared key/query space)."""
        if self.protocol == "oracle":
            return F.normalize(self.key(f.canon_query), dim=-1)
        return self.key(f.query_tok, f.query_mask)

    def _reps(self, f: Feats) -> tuple[torch.Tensor, torch.Tensor]:
        if self.protocol == "oracle":
            return torch.cat([f.event_vec, f.canon_event], -1), torch.cat([f.query_vec, f.canon_query], -1)
        return f.event_vec, f.query_vec

    def readout_scores(self, f: Feats) -> torch.Tensor:
        """[B, N] unconstrained full-hidden pointer: bilinear match + a learned position term."""
        e, q = self._reps(f)
        N = e.shape[1]
        pos = torch.linspace(0.0, 1.0, N, device=e.device)
        pos = torch.stack([pos, pos * pos], -1)  # [N, 2]: lets it learn "prefer later"
        match = torch.einsum("bnd,bd->bn", self.read_e(e), self.read_q(q)) / math.sqrt(self.key_dim)
        return match + self.read_pos(pos).squeeze(-1)

    def sparse_vectors(self, f: Feats) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, N, dk], [B, dk]) unit vectors for the hidden sparse top-16 row."""
        e, q = self._reps(f)
        return F.normalize(self.sparse_e(e), dim=-1), F.normalize(self.sparse_q(q), dim=-1)


@dataclass
class Targets:
    """Training targets of a batch (never read at inference)."""

    key_ids: torch.Tensor  # [B, N]
    target: torch.Tensor  # [B]
    write: torch.Tensor  # [B, N] float

    @staticmethod
    def of(samples: Sequence[Sample]) -> "Targets":
        return Targets(torch.tensor([s.key_ids for s in samples]), torch.tensor([s.target for s in samples]),
                       torch.tensor([s.write_labels for s in samples], dtype=torch.float32))
