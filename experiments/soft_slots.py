"""Differentiable relaxation of SlotMemory's match / write / read, for training.

Every hard decision of ``memadapter.slots`` becomes a sigmoid or softmax with a temperature T:

* match: weights ``softmax(sim / T)`` over occupied slots, gate ``sigmoid((s* - match_threshold) / T)``
  with s* the soft maximum cosine; value agreement likewise against ``value_threshold``;
* write gate ``sigmoid((p_write - write_threshold) / T)``;
* allocation: ``softmax(logits / T)`` where free slots outrank occupied ones (lowest index first)
  and occupied unprotected slots are ranked by low retention, as the hard eviction rule;
* read: a soft top-K mask ``sigmoid((score - tau_K) / T)`` (tau_K halfway between the K-th and
  (K+1)-th score) times the usual softmax over read scores.

As T -> 0 each gate becomes the hard branch, so ``soft_write``/``soft_read`` reproduce
``SlotMemory.write``/``read`` for inferred (event None) and explicit UPDATE events; the tests measure
the error per temperature. Gradients flow to keys, values, p_write and queries. RETRACT, masks and
provenance are hard-path only (training does not need them).

Example:
    >>> import torch
    >>> from experiments.soft_slots import SoftSlotConfig, SoftSlotState, soft_read, soft_write
    >>> cfg = SoftSlotConfig()
    >>> state = SoftSlotState.empty(batch_size=1, num_slots=4, key_dim=8, value_dim=8)
    >>> key, value = torch.eye(8)[:1], torch.eye(8)[1:2].requires_grad_()
    >>> state, info = soft_write(state, key, value, torch.ones(1), config=cfg, temperature=0.01)
    >>> out, weights, state = soft_read(state, key, top_k=1, config=cfg, temperature=0.01)
    >>> round(float(out.detach()[0, 0, 1]), 3)
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch
import torch.nn.functional as F

from memadapter._validate import check_tensor
from memadapter.errors import CapacityError, ConfigError, ShapeError
from memadapter.slots import SlotMemory

_FREE_PENALTY = 4.0  # pushes free slots below any cosine (>= -1) in the soft match
_READ_PENALTY = 1e4  # pushes free slots out of the soft top-K


@dataclass(frozen=True)
class SoftSlotConfig:
    """The thresholds and read/retention coefficients; ``from_memory`` copies a SlotMemory's."""

    match_threshold: float = 0.8
    value_threshold: float = 0.9
    write_threshold: float = 0.5
    alpha: Optional[float] = None
    read_lambda: float = 0.1
    read_gamma: float = 0.05
    recency_beta: float = 0.05
    retention_weights: tuple = (1.0, 0.5, 0.5, 1.0)

    @classmethod
    def from_memory(cls, mem: SlotMemory) -> "SoftSlotConfig":
        return cls(**{f.name: getattr(mem, f.name) for f in fields(cls)})


@dataclass
class SoftSlotState:
    """Soft memory state: [B, M] floats (occupancy in [0, 1]), keys [B, M, dk], values [B, M, dv]."""

    keys: torch.Tensor
    values: torch.Tensor
    confidence: torch.Tensor
    usage: torch.Tensor
    version: torch.Tensor
    time: torch.Tensor
    hits: torch.Tensor
    importance: torch.Tensor
    occupied: torch.Tensor
    protected: torch.Tensor  # bool, not learned
    step: torch.Tensor  # [B]

    @classmethod
    def empty(cls, batch_size: int, num_slots: int, key_dim: int, value_dim: int, *,
              dtype: torch.dtype = torch.float32, device=None) -> "SoftSlotState":
        z = dict(dtype=dtype, device=device)
        bm = lambda: torch.zeros(batch_size, num_slots, **z)  # noqa: E731
        return cls(keys=torch.zeros(batch_size, num_slots, key_dim, **z),
                   values=torch.zeros(batch_size, num_slots, value_dim, **z),
                   confidence=bm(), usage=bm(), version=bm(), time=bm(), hits=bm(), importance=bm(),
                   occupied=bm(), protected=torch.zeros(batch_size, num_slots, dtype=torch.bool, device=device),
                   step=torch.zeros(batch_size, **z))

    @classmethod
    def from_memory(cls, mem: SlotMemory) -> "SoftSlotState":
        """A soft copy of a hard memory's state (floats; gradients start here)."""
        f = lambda x: x.detach().clone().to(mem.dtype)  # noqa: E731
        return cls(keys=f(mem.keys), values=f(mem.values), confidence=f(mem.confidence), usage=f(mem.usage),
                   version=f(mem.version), time=f(mem.time), hits=f(mem.hits), importance=f(mem.importance),
                   occupied=f(mem.occupied), protected=mem.protected.clone(), step=f(mem.step))


def soft_retention(state: SoftSlotState, config: SoftSlotConfig) -> torch.Tensor:
    """[B, M] the hard retention formula on soft state."""
    w_c, w_u, w_r, w_i = config.retention_weights
    rec = 1.0 / (1.0 + (state.step[:, None] - state.time).clamp(min=0))
    return w_c * state.confidence + w_u * state.usage / (1 + state.usage) + w_r * rec + w_i * state.importance


def _alloc_weights(state: SoftSlotState, config: SoftSlotConfig, temperature: float) -> torch.Tensor:
    """[B, M] soft choice of the slot a new key goes to: lowest free index, else lowest retention."""
    B, M = state.occupied.shape
    occ = state.occupied
    top = sum(config.retention_weights) + 1.0  # every free slot outranks every occupied one
    order = (M - torch.arange(M, dtype=occ.dtype, device=occ.device)) / M  # prefer low indices
    logits = (1 - occ) * (top + order) - occ * soft_retention(state, config)
    allowed = ~((occ > 0.5) & state.protected)
    logits = logits.masked_fill(~allowed, float("-inf")) / temperature
    weights = torch.softmax(logits.masked_fill(~allowed.any(1, keepdim=True), 0.0), dim=-1)
    return weights * allowed.any(dim=1, keepdim=True)  # all protected: DROPPED, nothing written


@dataclass
class SoftWriteInfo:
    """The relaxed decisions of one write, all [B] except the [B, M] slot weights."""

    write_gate: torch.Tensor
    match_gate: torch.Tensor
    agree: torch.Tensor
    match_weights: torch.Tensor
    alloc_weights: torch.Tensor
    reinforce: torch.Tensor  # [B, M]
    overwrite: torch.Tensor  # [B, M]
    allocate: torch.Tensor  # [B, M]


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"temperature: must be a positive number, got {temperature!r}")
    return float(temperature)


def _check_write_inputs(state: SoftSlotState, key, value, p_write, update) -> None:
    B, M, dk = state.keys.shape
    check_tensor("key", key, ndim=2, last_dim=dk)
    check_tensor("value", value, ndim=2, last_dim=state.values.shape[-1])
    check_tensor("p_write", p_write, ndim=1)
    for name, x in (("key", key), ("value", value), ("p_write", p_write)):
        if x.shape[0] != B:
            raise ShapeError(f"{name}: expected batch size {B}, got shape {tuple(x.shape)}")
    if update is not None and check_tensor("update", update, ndim=1).shape[0] != B:
        raise ShapeError(f"update: expected shape ({B},), got {tuple(update.shape)}")


def _soft_decisions(state, k, v, p, upd, config, T) -> SoftWriteInfo:
    """Gates and per-slot action weights for one candidate per row."""
    occ = state.occupied
    sim = torch.einsum("bmd,bd->bm", state.keys, k) - (1 - occ) * _FREE_PENALTY  # [B, M]
    w = torch.softmax(sim / T, dim=-1)
    match_gate = torch.sigmoid(((w * sim).sum(-1) - config.match_threshold) / T)  # [B]
    vcos = F.cosine_similarity(state.values, v[:, None, :], dim=-1, eps=1e-12)  # [B, M]
    agree = torch.sigmoid(((w * vcos).sum(-1) - config.value_threshold) / T)
    write_gate = torch.sigmoid((p - config.write_threshold) / T)
    free_to_change = 1.0 - state.protected.to(sim.dtype)  # inferred evidence never edits protected slots
    hit = (write_gate * match_gate)[:, None] * w
    reinforce = hit * ((1 - upd) * agree)[:, None] * free_to_change
    overwrite = hit * (upd[:, None] + ((1 - upd) * (1 - agree))[:, None] * free_to_change)
    alloc_w = _alloc_weights(state, config, T)
    allocate = (write_gate * (1 - match_gate))[:, None] * alloc_w
    return SoftWriteInfo(write_gate, match_gate, agree, w, alloc_w, reinforce, overwrite, allocate)


def soft_write(state: SoftSlotState, key: torch.Tensor, value: torch.Tensor, p_write: torch.Tensor, *,
               config: SoftSlotConfig, temperature: float, update: Optional[torch.Tensor] = None,
               importance: Optional[torch.Tensor] = None) -> tuple[SoftSlotState, SoftWriteInfo]:
    """One candidate per row: key [B, dk], value [B, dv], p_write [B]; update [B] in [0, 1] is the
    probability of an explicit UPDATE event (default 0: inferred). Returns a new state (functional)."""
    T = _check_temperature(temperature)
    _check_write_inputs(state, key, value, p_write, update)
    k = F.normalize(key, dim=-1, eps=1e-12)
    upd = torch.zeros_like(p_write) if update is None else update
    imp = torch.zeros_like(p_write) if importance is None else importance
    state = replace(state, step=state.step + 1)  # the clock ticks first, as in the hard path
    d = _soft_decisions(state, k, value, p_write, upd, config, T)
    r, o, n = d.reinforce, d.overwrite, d.allocate  # [B, M]
    alpha = torch.full_like(state.hits, config.alpha) if config.alpha is not None else 1 / (state.hits + 1)
    p = p_write[:, None]
    c_reinforced = 1 - (1 - state.confidence) * (1 - alpha * p)
    to_value = (r * alpha + o + n)[..., None]
    to_key = (r * alpha + n)[..., None]
    new = replace(
        state,
        values=state.values + to_value * (value[:, None, :] - state.values),
        keys=F.normalize(state.keys + to_key * (k[:, None, :] - state.keys), dim=-1, eps=1e-12),
        confidence=state.confidence + r * (c_reinforced - state.confidence) + (o + n) * (p - state.confidence),
        hits=state.hits + r + (o + n) * (1 - state.hits),
        version=state.version + o + n * (1 - state.version),
        time=state.time + (r + o + n) * (state.step[:, None] - state.time),
        usage=state.usage * (1 - n),
        importance=state.importance + (r + o) * F.relu(imp[:, None] - state.importance)
        + n * (imp[:, None] - state.importance),
        occupied=state.occupied + n * (1 - state.occupied),
    )
    return new, d


def soft_read(state: SoftSlotState, query: torch.Tensor, *, top_k: int, config: SoftSlotConfig,
              temperature: float, update_usage: bool = True) -> tuple[torch.Tensor, torch.Tensor, SoftSlotState]:
    """query [B, dk] or [B, Q, dk] -> (readout [B, Q, dv], weights [B, Q, M], new state)."""
    T = _check_temperature(temperature)
    B, M, dk = state.keys.shape
    query = check_tensor("query", query, ndim=(2, 3), last_dim=dk)
    if query.shape[0] != B:
        raise ShapeError(f"query: expected batch size {B}, got shape {tuple(query.shape)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 < top_k <= M:
        raise CapacityError(f"top_k: must be an int in [1, {M}], got {top_k!r}")
    q = F.normalize(query if query.dim() == 3 else query[:, None, :], dim=-1, eps=1e-12)  # [B, Q, dk]
    rec = 1.0 / (1.0 + (state.step[:, None] - state.time).clamp(min=0))
    bias = config.read_lambda * state.confidence + config.read_gamma * state.usage / (1 + state.usage) \
        + config.recency_beta * rec
    occ = state.occupied[:, None, :]
    scores = torch.einsum("bqd,bmd->bqm", q, state.keys) + bias[:, None, :] - (1 - occ) * _READ_PENALTY
    ranked = scores.detach().sort(dim=-1, descending=True).values  # [B, Q, M]
    if top_k < M:  # the cut sits halfway between the K-th and (K+1)-th score
        tau = (ranked[..., top_k - 1: top_k] + ranked[..., top_k: top_k + 1]) / 2
        in_top = torch.sigmoid((scores - tau) / T)
    else:
        in_top = torch.ones_like(scores)
    expo = torch.exp(scores - ranked[..., :1]) * in_top * occ
    weights = expo / expo.sum(-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    readout = torch.einsum("bqm,bmd->bqd", weights, state.values)
    if update_usage:
        state = replace(state, usage=state.usage + weights.sum(dim=1))
    return readout, weights, state
