"""Phase 13 of the paper (sections 2.4, 4.3): the frozen-hidden-state bridge, with and without oracle keys.

A frozen backbone reads controlled event sentences; a small adapter (writer + key/query retriever +
pointer readout) predicts which event answers the query. Two protocols:

* ``oracle`` (the paper's): event/query vectors = [mean-pooled full sentence, mean-pooled canonical
  string ``entity N`` built from the generator's integer key id]; the query's key comes from
  ``key_ids[target]``; same-key replacement and memory-vs-sparse arbitration use exact integer key
  equality (one-hot slot keys, threshold 0.5). Uses metadata exactly where section 2.4 says.
* ``learned``: inference reads the event and query TEXTS only. Keys come from a learned multi-head
  attention pool over the sentence's own token hidden states (shared by events and queries);
  same-key replacement and branch arbitration use key cosine against thresholds calibrated with
  ``Router.calibrate`` on a validation split (unseen names, unseen templates); evaluation uses a
  test split with other unseen names and other unseen templates. Key ids / write labels / target
  are training targets only.

Rows per protocol: ``full_hidden`` (unconstrained pointer over all events from full-sentence
vectors), ``sparse_top16`` (cosine top-16 over full-sentence projections, best one answers),
``memory`` (slot memory alone), ``tail64`` (hybrid on the last 64 events only), ``hybrid``
(authoritative slot when the key matches, else the sparse fallback: top-16 events by key
similarity, re-ranked with the learned readout). Only the lite-write variant
(write labels supervise the writer) is implemented.

CLI: ``python -m memadapter.training.phase13 --families llama,qwen2 --protocol oracle --seeds 3
--samples 60 --json out.json``.

Example:
    >>> import random
    >>> s = make_sample("versioning", 16, random.Random(0), split="train")
    >>> len(s.events), s.write_labels[s.target], s.key_ids[s.target] == s.query_key_id
    (16, 1, True)
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from memadapter.bench.stats import wilson_interval, write_rows_json
from memadapter.bm25 import background_idf, query_coverage
from memadapter.chunk_index import ChunkIndex
from memadapter.errors import ConfigError, EmptyInputError, ShapeError
from memadapter.heads import WriteController, masked_attention_pool, masked_attention_pool_reference
from memadapter.modeling.selection import slot_versions
from memadapter.router import Router
from memadapter.slots import EventType, SlotMemory

# The controlled samples live in their own module; these names are part of this module's API too.
from .phase13_data import (  # noqa: F401
    ATTRIBUTES, EVAL_SETTINGS, KINDS, MAX_KEYS, SETTINGS, SPLITS, VALUES, WRITE_KINDS, Sample, make_sample,
    make_samples, vocabulary,
)

from .phase13_backbones import (  # noqa: F401
    PAPER_FAMILIES, HiddenCache, backbone_fingerprint, default_read_layer, load_backbone, tiny_backbone,
    word_tokenizer,
)

NUM_SLOTS = 32
TOP_SPARSE = 16
TAIL = 64
ROWS = ("full_hidden", "sparse_top16", "memory", "tail64", "hybrid")


# ----------------------------------------------------------------------------- features
PROTOCOLS = ("oracle", "learned")


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


# ----------------------------------------------------------------------------- training
TEMP = 0.05


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


def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """-log(sum over positives of softmax(logits)), mean over rows with a positive. logits/positive [R, N]."""
    keep = positive.any(-1)
    pos = logits.masked_fill(~positive, -math.inf).logsumexp(-1)
    return (logits.logsumexp(-1) - pos)[keep].mean()


def key_key_loss(keys: torch.Tensor, key_ids: torch.Tensor, max_events: int = 64) -> torch.Tensor:
    """Supervised contrastive loss among a sample's events: same key id = positive (versions and
    rumours of one key), look-alikes and the entity's other attributes are the hard negatives."""
    B, N, _ = keys.shape
    take = torch.randperm(N)[:max_events]
    k, ids = keys[:, take], key_ids[:, take]  # [B, n, dk], [B, n]
    logits = torch.einsum("bid,bjd->bij", k, k) / TEMP
    eye = torch.eye(len(take), dtype=torch.bool)
    logits = logits.masked_fill(eye, -1e4)  # a key is not its own positive
    positive = (ids[:, :, None] == ids[:, None, :]) & ~eye
    return multi_positive_nce(logits.flatten(0, 1), positive.flatten(0, 1))


def losses(ad: Phase13Adapter, f: Feats, t: Targets) -> dict[str, torch.Tensor]:
    """write BCE (lite), retrieval (query vs same-key events), readout and sparse pointer CE."""
    keys, q = ad.event_keys(f), ad.query_key(f)
    same = t.key_ids == t.key_ids.gather(1, t.target[:, None])  # [B, N]: events of the query's key
    out = {"write": WriteController.loss(ad.p_write(f), t.write),
           "retrieve": multi_positive_nce(torch.einsum("bnd,bd->bn", keys, q) / TEMP, same),
           "readout": F.cross_entropy(ad.readout_scores(f), t.target)}
    se, sq = ad.sparse_vectors(f)
    out["sparse"] = F.cross_entropy(torch.einsum("bnd,bd->bn", se, sq) / TEMP, t.target)
    if ad.protocol == "learned":  # the oracle's same-key test is integer equality, nothing to learn
        out["key_key"] = key_key_loss(keys, t.key_ids)
    return out


@dataclass
class TrainConfig:
    """Adapter training on the train split (its own names and templates)."""

    protocol: str = "oracle"
    seed: int = 0
    steps: int = 300
    batch: int = 16
    train_samples: int = 480
    train_events: int = 48
    lr: float = 3e-3
    key_dim: int = 64
    augment_templates: bool = False  # paraphrased train templates (phase13_data._T_EXTRA)
    token_writer: bool = False  # learned protocol: the writer attention-pools token states (Phase13Adapter)


TRAIN_SETTINGS = ("recall", "versioning", "distractor", "uniform", "hardneg", "streaming")


def train_pool(cfg: TrainConfig) -> list[Sample]:
    rng = random.Random(f"train:{cfg.seed}")
    return [make_sample(TRAIN_SETTINGS[i % len(TRAIN_SETTINGS)], cfg.train_events, rng, "train",
                        cfg.augment_templates) for i in range(cfg.train_samples)]


def train(cfg: TrainConfig, cache: HiddenCache, hidden_size: int, progress: bool = False) -> tuple[Phase13Adapter, list[float]]:
    """Train one adapter seed; returns it (eval mode) and the loss curve."""
    torch.manual_seed(cfg.seed)
    pool = train_pool(cfg)
    feats = [(featurize(pool[i:i + cfg.batch], cache, cfg.protocol), Targets.of(pool[i:i + cfg.batch]))
             for i in range(0, len(pool), cfg.batch)]
    ad = Phase13Adapter(hidden_size, cfg.protocol, cfg.key_dim, cfg.token_writer)
    ad.background = background_idf([t for s in pool for t in (*s.events, s.query)])
    opt = torch.optim.AdamW(ad.parameters(), lr=cfg.lr, weight_decay=0.01)
    curve = []
    for step in range(cfg.steps):
        f, t = feats[step % len(feats)]
        parts = losses(ad, f, t)
        loss = sum(parts.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
        if progress and step % 100 == 0:
            print(f"  step {step} loss {float(loss):.3f} " + " ".join(f"{k}={float(v):.3f}" for k, v in parts.items()),
                  file=sys.stderr)
    return ad.eval(), curve


# ----------------------------------------------------------------------------- inference
@dataclass
class Thresholds:
    """replace: SlotMemory match threshold (same-key replacement); route: Router branch threshold;
    lexical: weight of the question's word coverage (:func:`query_coverage`: the IDF share of its
    words that an event's sentence holds, IDF over the stream) added to the key cosine wherever a
    question is matched (slots, routing, the fallback). 0 reads keys only. Learned keys are weakest
    on names never seen in training, and the words a question shares with a sentence are exact
    evidence for them. lexical_idf "train" weighs words by their IDF over the adapter's training
    sentences (:func:`background_idf`), so a word of the sentence templates ("lives") weighs little
    and a name never trained on weighs most; "stream" uses IDF over the stream itself.
    version_margin / version_cosine: with a margin, a memory read takes the latest of the best
    slot's versions (``selection.slot_versions``): versions of one fact that never merged into one
    slot score about equally, and the stream says which is current."""

    replace: float
    route: float
    lexical: float = 0.0
    write: float = 0.5  # SlotMemory write threshold on the writer's p_write (calibrated with write_false)
    lexical_idf: str = "stream"  # word weights of the coverage: IDF over the stream, or "train": the training corpus
    version_margin: Optional[float] = None  # read the latest of the best slot's versions (selection.slot_versions)
    version_cosine: float = 0.5  # ... slots within the margin whose key cosine with the best reaches this


# Oracle slot keys are one-hot key ids: cosine is 1 for equal ids and 0 otherwise, so 0.5 is exact
# integer equality for both replacement and arbitration, as the paper's protocol prescribes.
ORACLE_THRESHOLDS = Thresholds(0.5, 0.5)


def memory_keys(ad: Phase13Adapter, f: Feats, keys: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot keys [B, N, dm] and slot query [B, dm]: one-hot key ids (oracle) or learned keys."""
    if ad.protocol == "oracle":
        return F.one_hot(f.event_key_ids, MAX_KEYS).float(), F.one_hot(f.query_key_ids, MAX_KEYS).float()
    return keys, q


@dataclass
class Texts:
    """The sentences a learned read matches words against: events [B][N] and questions [B]."""

    events: list[list[str]]
    questions: list[str]
    idf: Optional[Callable[[str], float]] = None  # word weights (None: IDF over each stream)

    def coverage(self) -> torch.Tensor:
        """[B, N] :func:`query_coverage` of each question by each event sentence of its stream."""
        return torch.tensor([query_coverage(q, ev, self.idf) for q, ev in zip(self.questions, self.events)],
                            dtype=torch.float32)


def _slot_bias(mem: SlotMemory, cov: torch.Tensor, lex: float, offset: int) -> torch.Tensor:
    """[B, M] ``lex`` x the coverage ``cov`` [B, N] of the event each slot came from (0 on a free slot)."""
    slot_event = mem.chunk_id - offset  # [B, M], < 0 on a free slot
    return lex * cov.gather(1, slot_event.clamp(min=0)).masked_fill(slot_event < 0, 0.0)


def _memory_pointer(mem: SlotMemory, mq: torch.Tensor, bias: Optional[torch.Tensor], thr: Thresholds) -> torch.Tensor:
    """[B] the event the memory answers with (-1: no slot clears ``thr.route``): the best-matching
    slot, or with the version rule the latest of its versions. No side effects (no usage credit)."""
    best, slot = mem.match(mq, bias)  # [B, 1]
    if thr.version_margin is not None:
        sims = torch.einsum("bd,bmd->bm", mq, mem.keys) + (0.0 if bias is None else bias)
        _, newest = slot_versions(sims.masked_fill(~mem.occupied, -math.inf), mem.chunk_id, mem.keys,
                                  thr.version_margin, thr.version_cosine)
        slot = torch.where(slot[:, 0] >= 0, newest, slot[:, 0])[:, None]  # [B, 1]
    return torch.where((best[:, 0] >= thr.route) & (slot[:, 0] >= 0),
                       mem.chunk_id.gather(1, slot.clamp(min=0))[:, 0], torch.full((mq.shape[0],), -1))


def _hybrid(mk: torch.Tensor, mq: torch.Tensor, keys: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
            thr: Thresholds, offset: int, readout: torch.Tensor,
            texts: Optional[Texts] = None) -> dict[str, torch.Tensor]:
    """Write events into a 32-slot memory, then route: authoritative slot if the key matches, else
    the sparse fallback: the top-16 events by key similarity, ranked by that similarity at the
    training temperature plus the learned readout (``readout`` [B, N] logits), so a rumour or an
    older version of the same key can lose to the update. With ``texts`` and ``thr.lexical`` > 0,
    the question's word coverage is added to the key cosine of slots and fallback events alike.
    Returns hybrid / memory-alone pointers [B] (-1: none), writes, branch."""
    B, N, dk = keys.shape
    lex = thr.lexical if texts is not None else 0.0
    mem = SlotMemory(NUM_SLOTS, mk.shape[-1], dk, batch_size=B, match_threshold=thr.replace, write_threshold=thr.write)
    ids = torch.arange(N).expand(B, N) + offset  # provenance: the event index each slot came from
    wr = mem.write(mk, keys, p.clamp(0.0, 1.0), event=torch.full((B, N), int(EventType.UPDATE)), chunk_id=ids)
    cov = texts.coverage() if lex > 0 else None  # [B, N]
    bias = _slot_bias(mem, cov, lex, offset) if lex > 0 else None  # [B, M]
    alone = _memory_pointer(mem, mq, bias, thr)  # before the read: memory-alone is independent of routing
    indexes = []
    for b in range(B):
        # hybrid = w * cosine + (1 - w) * BM25 ranks like cosine + lex * BM25
        idx = ChunkIndex(dk, dense_weight=1.0 / (1.0 + lex))
        idx.add(keys[b], texts=texts.events[b] if lex > 0 else None)
        indexes.append(idx)
    res = Router(thr.route, top_k_slots=1, top_k_chunks=TOP_SPARSE).route(
        mem, indexes, mq, query_text=texts.questions if lex > 0 else None, chunk_query=q, slot_bias=bias)
    hybrid = torch.full((B,), -1)
    for b, branch in enumerate(res.branch):
        if branch == "memory":  # the read slot, or with the version rule the latest version of it
            hybrid[b] = alone[b] if thr.version_margin is not None else \
                mem.chunk_id[b, int(res.memory.indices[b, 0, 0])]
            continue
        found = res.chunks[b]
        ok = found.ids[0] >= 0
        cand = found.ids[0][ok]  # the top-16 events by key similarity (and BM25 with ``lex``)
        if len(cand):
            sim = found.dense[0][ok] + (lex * cov[b, cand] if lex > 0 else 0.0)
            # Key similarity at the training temperature plus the readout logit: exact oracle keys
            # (cosine 1 vs 0) keep the choice within the query's key; learned keys let the readout
            # prefer the signalled update over a same-looking rumour or older version.
            hybrid[b] = int(cand[(sim / TEMP + readout[b, cand]).argmax()]) + offset
    return {"hybrid": hybrid, "memory": alone, "writes": wr.num_writes,
            "memory_branch": torch.tensor([br == "memory" for br in res.branch])}


def sparse_top(se: torch.Tensor, sq: torch.Tensor, k: int = TOP_SPARSE) -> torch.Tensor:
    """[B] best event among the top-k cosine candidates of each sample (a ChunkIndex per sample)."""
    out = []
    for b in range(se.shape[0]):
        idx = ChunkIndex(se.shape[-1], dense_weight=1.0)
        idx.add(se[b])
        out.append(int(idx.search(sq[b], top_k=k).ids[0, 0]))
    return torch.tensor(out)


@torch.no_grad()
def predict(ad: Phase13Adapter, f: Feats, thr: Thresholds) -> dict[str, torch.Tensor]:
    """Pointers [B] for every row from features alone (no targets, labels or values are passed)."""
    p, keys, q = ad.p_write(f), ad.event_keys(f), ad.query_key(f)
    mk, mq = memory_keys(ad, f, keys, q)
    readout = ad.readout_scores(f)  # [B, N]
    idf = ad.background if thr.lexical_idf == "train" else None
    texts = Texts(f.event_text, f.query_text, idf) if f.event_text is not None else None
    full = _hybrid(mk, mq, keys, q, p, thr, 0, readout, texts)
    s = max(0, keys.shape[1] - TAIL)
    tail_texts = None if texts is None else Texts([e[s:] for e in texts.events], texts.questions, idf)
    tail = _hybrid(mk[:, s:], mq, keys[:, s:], q, p[:, s:], thr, s, readout[:, s:], tail_texts)
    se, sq = ad.sparse_vectors(f)
    return {"full_hidden": readout.argmax(-1), "sparse_top16": sparse_top(se, sq),
            "memory": full["memory"], "tail64": tail["hybrid"], "hybrid": full["hybrid"],
            "writes": full["writes"], "memory_branch": full["memory_branch"]}


@torch.no_grad()
def calibrate(ad: Phase13Adapter, groups: dict[str, list[Sample]], cache: HiddenCache,
              max_false_match: float = 0.01, lexical: float = 0.0,
              write_false: Optional[float] = None, lexical_idf: str = "stream") -> Thresholds:
    """Learned thresholds from a validation split (labels are calibration targets there).

    replace: cosine between signalled events of the same key (positive) vs other keys (negative);
    route: query vs the latest signalled event of its key (positive) vs the best signalled event
    of another key in the same stream (negative: look-alike, other attribute, other entity), as
    key cosine plus ``lexical`` times the question's word coverage (as :func:`predict` reads it);
    write (with ``write_false``, else 0.5): p_write of signalled (positive) vs unsignalled events
    (negative), at most ``write_false`` of them written."""
    if ad.protocol == "oracle":
        return ORACLE_THRESHOLDS
    pr, nr, pq, nq, pw, nw = [], [], [], [], [], []
    for samples in groups.values():
        f, t = featurize(samples, cache, "learned"), Targets.of(samples)
        keys, q, p = ad.event_keys(f), ad.query_key(f), ad.p_write(f)
        pw.append(p[t.write > 0]), nw.append(p[t.write == 0])
        for b in range(len(samples)):
            w, ids = t.write[b] > 0, t.key_ids[b]
            k, kid = keys[b][w], ids[w]
            sims, same = k @ k.T, kid[:, None] == kid[None, :]
            upper = torch.ones_like(same).triu(1)
            pr.append(sims[same & upper]), nr.append(sims[~same & upper])
            qs, qkey = keys[b] @ q[b], ids[t.target[b]]
            if lexical > 0:
                idf = ad.background if lexical_idf == "train" else None
                qs = qs + lexical * torch.tensor(query_coverage(samples[b].query, samples[b].events, idf))
            mine = (w & (ids == qkey)).nonzero()
            if len(mine):
                pq.append(qs[mine[-1]])
            other = w & (ids != qkey)
            if bool(other.any()):
                nq.append(qs[other].max()[None])
    write = 0.5 if write_false is None else \
        min(1.0, Router.calibrate(torch.cat(pw), torch.cat(nw), max_false_match=write_false))
    return Thresholds(Router.calibrate(torch.cat(pr), torch.cat(nr), max_false_match=max_false_match),
                      Router.calibrate(torch.cat(pq), torch.cat(nq), max_false_match=max_false_match), lexical, write,
                      lexical_idf)


# ----------------------------------------------------------------------------- evaluation and CLI
def evaluate(ad: Phase13Adapter, groups: dict[str, list[Sample]], cache: HiddenCache,
             thr: Thresholds) -> list[dict]:
    """One row per (setting, method): correct / total; targets are compared only after predict."""
    out = []
    for name, samples in groups.items():
        if not samples:
            continue
        pred = predict(ad, featurize(samples, cache, ad.protocol), thr)
        target = torch.tensor([s.target for s in samples])
        for row in ROWS:
            out.append({"setting": name, "row": row, "correct": int((pred[row] == target).sum()),
                        "total": len(samples)})
        out.append({"setting": name, "row": "writes_mean", "value": float(pred["writes"].float().mean())})
        out.append({"setting": name, "row": "memory_branch_rate", "value": float(pred["memory_branch"].float().mean())})
    return out


def run_seed(family: str, protocol: str, seed: int, samples: int, cache: HiddenCache, hidden_size: int,
             cfg: Optional[TrainConfig] = None, settings=EVAL_SETTINGS, progress: bool = False,
             read: Optional[Thresholds] = None, split: str = "test", write_false: Optional[float] = None) -> list[dict]:
    """Train one adapter seed, calibrate on val (learned), evaluate on the held-out ``split``.

    ``read`` carries the learned read's settings (lexical weight, version rule; its thresholds are
    ignored: they are calibrated). ``split="val"`` evaluates on another draw of the validation
    split (seed + 1000), where those settings are chosen without touching the test split.
    ``write_false``: calibrate the write threshold on val too (:func:`calibrate`)."""
    cfg = cfg or TrainConfig()
    cfg = replace(cfg, protocol=protocol, seed=seed, token_writer=cfg.token_writer and protocol == "learned")
    read = read or Thresholds(0.0, 0.0)
    t0 = time.time()
    ad, curve = train(cfg, cache, hidden_size, progress)
    val = make_samples("val", max(12, samples // 2), seed, [s for s in settings if s[2] <= 128])
    thr = calibrate(ad, val, cache, lexical=read.lexical, write_false=write_false, lexical_idf=read.lexical_idf)
    if protocol == "learned":
        thr = replace(thr, version_margin=read.version_margin, version_cosine=read.version_cosine)
    rows = evaluate(ad, make_samples(split, samples, seed + 1000 if split == "val" else seed, settings), cache, thr)
    meta = {"family": family, "protocol": protocol, "seed": seed, "variant": "lite_write", "split": split,
            "augment_templates": cfg.augment_templates, "token_writer": cfg.token_writer,
            "lexical": thr.lexical, "lexical_idf": thr.lexical_idf, "version_margin": thr.version_margin, "version_cosine": thr.version_cosine,
            "replace_threshold": thr.replace, "route_threshold": thr.route, "write_threshold": thr.write,
            "final_loss": curve[-1], "seconds": round(time.time() - t0, 1)}
    return [{**meta, **r} for r in rows]


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Pool seeds and settings per (family, protocol, method) and over all families; Wilson 95% CIs."""
    groups: dict[tuple, list[int]] = {}
    for r in rows:
        if "correct" not in r:
            continue
        for fam in (r["family"], "pooled"):
            acc = groups.setdefault((fam, r["protocol"], r["row"]), [0, 0])
            acc[0] += r["correct"]
            acc[1] += r["total"]
    out = []
    for (fam, proto, row), (c, n) in groups.items():
        lo, hi = wilson_interval(c, n)
        out.append({"method": row, "task": f"{proto}/{fam}", "family": fam, "protocol": proto,
                    "correct": c, "total": n, "accuracy": c / n, "ci_low": lo, "ci_high": hi})
    return out


def markdown_table(summary: Sequence[dict]) -> str:
    lines = ["| protocol | family | method | correct / total | accuracy | Wilson 95% CI |", "|---|---|---|---|---|---|"]
    for s in sorted(summary, key=lambda s: (s["protocol"], s["family"] == "pooled", s["family"], ROWS.index(s["method"]))):
        lines.append(f"| {s['protocol']} | {s['family']} | {s['method']} | {s['correct']} / {s['total']} | "
                     f"{100 * s['accuracy']:.2f}% | [{s['ci_low']:.3f}, {s['ci_high']:.3f}] |")
    return "\n".join(lines)


def _default_cache_dir() -> Path:
    root = os.environ.get("MEMADAPTER_CACHE") or os.path.join("~", ".cache", "memadapter")
    return Path(root).expanduser() / "phase13"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m memadapter.training.phase13", description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(PAPER_FAMILIES),
                    help="comma list of tiny model types, or smollm2 for the real offline model")
    ap.add_argument("--protocol", choices=PROTOCOLS + ("both",), default="oracle")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=60, help="test samples per seed, spread over the settings")
    ap.add_argument("--max-events", type=int, default=2048, help="drop settings longer than this")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--train-samples", type=int, default=TrainConfig.train_samples)
    ap.add_argument("--train-events", type=int, default=TrainConfig.train_events)
    ap.add_argument("--augment-templates", action="store_true",
                    help="train on several paraphrased templates per fact and question (val/test templates stay unseen)")
    ap.add_argument("--token-writer", action="store_true",
                    help="learned: the writer attention-pools token states instead of reading the mean-pooled sentence")
    ap.add_argument("--lexical", type=float, default=0.0,
                    help="learned: weight of the question's word coverage added to key cosine (0: keys only)")
    ap.add_argument("--lexical-idf", choices=("stream", "train"), default="stream",
                    help="learned: coverage word weights from IDF over the stream or over the training sentences")
    ap.add_argument("--version-margin", type=float, default=None,
                    help="learned: read the latest version among slots within this score margin of the best")
    ap.add_argument("--version-cosine", type=float, default=0.5,
                    help="learned: ... whose key cosine with the best slot reaches this")
    ap.add_argument("--write-false", type=float, default=None,
                    help="learned: calibrate the write threshold on val at this rate of unsignalled events written")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="evaluate on the test split, or on another draw of val (to choose settings)")
    ap.add_argument("--cache-dir", default=None, help="hidden-state cache (default $MEMADAPTER_CACHE/phase13)")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--read-layer", type=int, default=None,
                    help="hidden-state index to read (default: last for tiny backbones, the middle for smollm2)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    families = [f for f in args.families.split(",") if f]
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    settings = tuple(s for s in EVAL_SETTINGS if s[2] <= args.max_events)
    if not settings or args.seeds < 1 or args.samples < len(settings):
        raise ConfigError(f"samples: need at least one sample per setting ({len(settings)}) and seeds >= 1")
    cfg = TrainConfig(steps=args.steps, train_samples=args.train_samples, train_events=args.train_events,
                      augment_templates=args.augment_templates, token_writer=args.token_writer)
    read = Thresholds(0.0, 0.0, lexical=args.lexical, lexical_idf=args.lexical_idf, version_margin=args.version_margin,
                      version_cosine=args.version_cosine)
    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else _default_cache_dir()
    rows: list[dict] = []
    for fam in families:
        model, tok, name = load_backbone(fam)
        layer = args.read_layer if args.read_layer is not None else default_read_layer(fam, model)
        cache = HiddenCache(model, tok, name, cache_dir, layer=layer)
        for proto in protocols:
            for seed in range(args.seeds):
                print(f"[phase13] {fam} {proto} seed {seed}", file=sys.stderr)
                rows += run_seed(fam, proto, seed, args.samples, cache, model.config.hidden_size, cfg, settings,
                                 read=read, split=args.split, write_false=args.write_false)
    summary = summarize(rows)
    print(markdown_table(summary))
    if args.json:
        write_rows_json(args.json, [{"method": r["row"], "task": r["setting"], **r} for r in rows] + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
