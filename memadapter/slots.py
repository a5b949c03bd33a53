"""Request-local slot memory with a lifecycle: write, overwrite by newer version, protect, evict, forget.

Each request (row ``b`` of the batch) owns ``M`` slots. A slot holds the paper's record
``(k, v, c, u, tau, z)`` (section 2.1) plus provenance (source chunk id and token span) and the
strings it was written from, so ``table()`` can show where every fact came from.

Semantics of one write candidate (applied in order n = 0..N-1, vectorised over the batch):

* the request's clock ``step`` ticks once for every candidate not masked out;
* gate: ``p_write >= write_threshold`` and event is not IRRELEVANT, else SKIPPED;
* match: best cosine between the (unit) key and the occupied slots' keys, matched when
  ``>= match_threshold`` (UPDATE and RETRACT: ``>= update_match_threshold``, by default the same:
  they claim an earlier version exists, so weaker key evidence may suffice); value agreement is
  ``cos(v_slot, v) >= value_threshold`` (never with a withdrawn slot);
  With ``update_name_weight`` w > 0, an UPDATE or RETRACT that has key text matches on
  ``cos + w * overlap``, the overlap being the Jaccard overlap of its key text's words with each
  slot's (:func:`memadapter.bm25.word_overlap`): a revision names the entity it revises, and
  learned keys of look-alike names ("Priya", "Priyam") can sit closer than the fact it revises;
* RETRACT + match -> slot freed (RETRACTED); RETRACT without match -> SKIPPED. With
  ``tombstones`` a retraction instead leaves a withdrawn record: the matched slot takes the
  retraction's value, loses its value text and is flagged ``retracted`` (RETRACTED); an unmatched
  retraction is placed like a new fact, flagged likewise. A question then finds that the fact was
  withdrawn instead of nothing (and a fallback that would re-read the old text);
* UPDATE + match -> OVERWRITTEN even if protected (explicit newer version);
* inferred / NEW + match: agreeing value -> REINFORCED with the alpha update, conflicting value ->
  OVERWRITTEN (newer version wins instead of averaging, paper 2.2); a protected slot is never
  changed by inferred evidence: SKIPPED (a conflicting value is counted in its ``blocked`` aux);
* no match: lowest free slot (ALLOCATED), else the occupied unprotected slot with the lowest
  retention (EVICTED), else DROPPED when every slot is protected.

Retention = w_c * c + w_u * u/(1+u) + w_r * recency + w_i * importance, recency = 1/(1 + step - time).
Read score = q.k + lambda * c + gamma * u/(1+u) + b(tau), with b(tau) = recency_beta * recency;
usage enters saturated so that scores stay bounded however often a slot is read.
``memadapter.slots_reference`` implements the same rules with plain loops (tested against this).
"""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from ._validate import check_allocation, check_positive_int, check_real, check_size, check_tensor
from .bm25 import word_overlap
from .errors import CapacityError, ConfigError, DTypeError, NonFiniteError, ShapeError


class EventType(enum.IntEnum):
    """What a write candidate claims to be (from the grounding head, or None: infer it)."""

    NEW = 0
    UPDATE = 1
    RETRACT = 2
    IRRELEVANT = 3


class WriteAction(enum.IntEnum):
    """What ``SlotMemory.write`` did with one candidate."""

    SKIPPED = 0
    ALLOCATED = 1
    OVERWRITTEN = 2
    REINFORCED = 3
    EVICTED = 4
    RETRACTED = 5
    DROPPED = 6


STATE_CHANGING = (
    WriteAction.ALLOCATED,
    WriteAction.OVERWRITTEN,
    WriteAction.REINFORCED,
    WriteAction.EVICTED,
    WriteAction.RETRACTED,
)
# Names of the aux (conflict / source) features, in order; aux_dim > 4 pads with zeros.
AUX_FEATURES = ("overwrites", "conflict", "hits", "blocked")
AUX_OVERWRITES, AUX_CONFLICT, AUX_HITS, AUX_BLOCKED = range(4)
NO_EVENT = -1  # internal code for "infer the event from key match and value agreement"
# A batched run leaves to the one-at-a-time path any score this close to a threshold or runner-up,
# where a different float summation order could flip the decision.
_RUN_MARGIN = 1e-5
_RUN_WINDOW = 64  # candidates a run looks ahead at: its pairwise checks cost R x R


@dataclass
class WriteResult:
    """Per-candidate outcome of a write: ``action`` [B, N] (WriteAction) and ``slot`` [B, N] (-1: none)."""

    action: torch.Tensor
    slot: torch.Tensor

    @property
    def num_writes(self) -> torch.Tensor:
        """[B] number of candidates that changed the memory."""
        changed = torch.zeros_like(self.action, dtype=torch.bool)
        for act in STATE_CHANGING:
            changed |= self.action == int(act)
        return changed.sum(dim=1)


@dataclass
class ReadResult:
    """Top-K read: indices/scores/weights/valid [B, Q, K], values [B, Q, K, dv], match [B, Q]."""

    indices: torch.Tensor
    scores: torch.Tensor
    weights: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    match: torch.Tensor

    @property
    def readout(self) -> torch.Tensor:
        """[B, Q, dv] weighted sum of the active values."""
        return (self.weights.unsqueeze(-1) * self.values).sum(dim=2)


@dataclass
class _Candidates:
    """Validated write inputs, batch-first: [B, N, ...] on the memory's device and dtype."""

    keys: torch.Tensor
    values: torch.Tensor
    p_write: torch.Tensor
    event: torch.Tensor
    importance: torch.Tensor
    protect: torch.Tensor
    chunk_id: torch.Tensor
    span: torch.Tensor
    mask: torch.Tensor
    key_text: Optional[list]
    value_text: Optional[list]


def _check_unit_interval(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{name}: must lie in [{low}, {high}], got {value}")
    return float(value)


def _check_finite_number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def normalize_keys(x: torch.Tensor, name: str) -> torch.Tensor:
    """L2-normalise the last dim; a zero vector has no direction and is rejected."""
    norms = x.norm(dim=-1, keepdim=True)
    if bool((norms <= 1e-12).any()):
        raise NonFiniteError(f"{name}: a vector has zero norm and cannot be normalised")
    return x / norms


def saturate(usage: torch.Tensor) -> torch.Tensor:
    """Map usage counts to [0, 1) so scores and retention stay bounded."""
    return usage / (1.0 + usage)


def recency(step: torch.Tensor, time: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, M]: 1 for a slot written at the current step, decaying as 1/(1 + age)."""
    age = (step.unsqueeze(-1) - time).clamp(min=0).to(dtype)
    return 1.0 / (1.0 + age)


def _check_side(name: str, x: Any, shape: tuple, kind: str, device: torch.device) -> torch.Tensor:
    """Validate a per-candidate input of ``shape``; kind is 'float', 'long' or 'bool'."""
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    is_int = not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
    ok = {"float": x.is_floating_point(), "long": is_int, "bool": x.dtype == torch.bool}[kind]
    if not ok:
        raise DTypeError(f"{name}: expected a {kind} tensor, got dtype {x.dtype}")
    if len(shape) >= 2 and x.dim() == len(shape) - 1 and shape[1] == 1:
        x = x.unsqueeze(1)  # keys came as [B, dk]: accept [B] / [B, 2] side inputs too
    if tuple(x.shape) != tuple(shape):
        raise ShapeError(f"{name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")
    if kind == "float" and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name}: contains NaN or infinity")
    return x.to(device)


def _check_range(name: str, x: torch.Tensor, low: float, high: float) -> None:
    if x.numel() and (bool((x < low).any()) or bool((x > high).any())):
        raise ConfigError(f"{name}: values must lie in [{low}, {high}], got min {x.min().item()} max {x.max().item()}")


def _check_texts(name: str, texts: Any, batch: int, n: int, two_d: bool) -> Optional[list]:
    """texts: B lists of N (str | None); with [B, dk] keys a flat list of B entries is accepted."""
    if texts is None:
        return None
    if not isinstance(texts, (list, tuple)) or len(texts) != batch:
        raise ShapeError(f"{name}: expected a list of {batch} rows")
    rows = [[row] if two_d and not isinstance(row, (list, tuple)) else row for row in texts]
    for row in rows:
        if not isinstance(row, (list, tuple)) or len(row) != n:
            raise ShapeError(f"{name}: every row must hold {n} entries")
        if any(t is not None and not isinstance(t, str) for t in row):
            raise DTypeError(f"{name}: entries must be str or None")
    return [list(row) for row in rows]


def slot_state_bytes(batch_size: int, num_slots: int, key_dim: int, value_dim: int, aux_dim: int = 4,
                     dtype: torch.dtype = torch.float32) -> int:
    """Bytes a SlotMemory of these sizes holds: per slot its key, value and aux vectors, four float,
    five long and three bool fields, and two text references (checked before ``reset`` allocates)."""
    width = torch.finfo(dtype).bits // 8
    per_slot = (key_dim + value_dim + aux_dim + 4) * width + 5 * 8 + 3 + 2 * 8
    return batch_size * (num_slots * per_slot + 8)


_STATE_TENSORS = (
    "keys", "values", "confidence", "usage", "version", "time", "aux", "importance", "hits",
    "occupied", "protected", "retracted", "chunk_id", "span", "step",
)


class SlotMemory:
    """Batched, request-local slot memory (one independent memory per batch row).

    Example:
        >>> import torch
        >>> from memadapter.slots import SlotMemory, WriteAction
        >>> mem = SlotMemory(num_slots=4, key_dim=8, value_dim=8)
        >>> key, old, new = torch.eye(8)[:1], torch.eye(8)[1:2], torch.eye(8)[2:3]
        >>> WriteAction(int(mem.write(key, old).action[0, 0])).name
        'ALLOCATED'
        >>> WriteAction(int(mem.write(key, new).action[0, 0])).name   # conflicting value: newer wins
        'OVERWRITTEN'
        >>> int(mem.version[0, 0]), mem.read(key, top_k=1).indices.tolist()
        (2, [[[0]]])
    """

    # Apply runs of candidates that do not interact in one step (``_run_length``); False: one at a
    # time, the plain order the rules are written in (the reference path, and the check in tests).
    batched_writes: bool = True

    def __init__(
        self,
        num_slots: int,
        key_dim: int,
        value_dim: int,
        *,
        batch_size: int = 1,
        aux_dim: int = 4,
        match_threshold: float = 0.8,
        update_match_threshold: Optional[float] = None,
        tombstones: bool = False,
        update_name_weight: float = 0.0,
        value_threshold: float = 0.9,
        write_threshold: float = 0.5,
        alpha: Optional[float] = None,
        read_lambda: float = 0.1,
        read_gamma: float = 0.05,
        recency_beta: float = 0.05,
        retention_weights: Sequence[float] = (1.0, 0.5, 0.5, 1.0),
        device: Optional[torch.device | str] = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self._num_slots = check_size("num_slots", num_slots)
        self._key_dim = check_size("key_dim", key_dim)
        self._value_dim = check_size("value_dim", value_dim)
        self._batch_size = check_size("batch_size", batch_size)
        self.aux_dim = check_size("aux_dim", aux_dim, allow_zero=True)
        self.match_threshold = _check_unit_interval("match_threshold", match_threshold, low=-1.0)
        self.update_match_threshold = self.match_threshold if update_match_threshold is None else \
            _check_unit_interval("update_match_threshold", update_match_threshold, low=-1.0)
        if not isinstance(tombstones, bool):
            raise DTypeError(f"tombstones: expected a bool, got {type(tombstones).__name__}")
        self.tombstones = tombstones
        self.update_name_weight = _check_finite_number("update_name_weight", update_name_weight)
        if self.update_name_weight < 0:
            raise ConfigError(f"update_name_weight: must be >= 0, got {update_name_weight}")
        self.value_threshold = _check_unit_interval("value_threshold", value_threshold, low=-1.0)
        self.write_threshold = _check_unit_interval("write_threshold", write_threshold)
        if alpha is not None and (_check_unit_interval("alpha", alpha) <= 0.0):
            raise ConfigError("alpha: must lie in (0, 1], got 0")
        self.alpha = None if alpha is None else float(alpha)
        self.read_lambda = _check_finite_number("read_lambda", read_lambda)
        self.read_gamma = _check_finite_number("read_gamma", read_gamma)
        self.recency_beta = _check_finite_number("recency_beta", recency_beta)
        weights = tuple(retention_weights) if isinstance(retention_weights, (list, tuple)) else ()
        if len(weights) != 4:
            raise ConfigError("retention_weights: expected 4 numbers (confidence, usage, recency, importance)")
        self.retention_weights = tuple(_check_finite_number("retention_weights", w) for w in weights)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise DTypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        check_allocation("batch_size x num_slots x (key_dim + value_dim + aux_dim)",
                         slot_state_bytes(self._batch_size, self._num_slots, self._key_dim, self._value_dim,
                                          self.aux_dim, dtype), self.device)
        self.reset()

    # ----------------------------------------------------------------- sizes and state
    @property
    def num_slots(self) -> int:
        return self._num_slots

    @property
    def key_dim(self) -> int:
        return self._key_dim

    @property
    def value_dim(self) -> int:
        return self._value_dim

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def reset(self, batch_mask: Optional[torch.Tensor] = None) -> None:
        """Empty every slot (and the clock) of the rows where ``batch_mask`` [B] is True (default: all)."""
        B, M = self._batch_size, self._num_slots
        if batch_mask is None:
            f = dict(device=self.device, dtype=self.dtype)
            i = dict(device=self.device, dtype=torch.long)
            self.keys = torch.zeros(B, M, self._key_dim, **f)
            self.values = torch.zeros(B, M, self._value_dim, **f)
            self.confidence, self.usage = torch.zeros(B, M, **f), torch.zeros(B, M, **f)
            self.importance, self.hits = torch.zeros(B, M, **f), torch.zeros(B, M, **f)
            self.aux = torch.zeros(B, M, self.aux_dim, **f)
            self.version, self.time = torch.zeros(B, M, **i), torch.zeros(B, M, **i)
            self.chunk_id, self.span = torch.full((B, M), -1, **i), torch.full((B, M, 2), -1, **i)
            self.occupied = torch.zeros(B, M, dtype=torch.bool, device=self.device)
            self.protected = torch.zeros(B, M, dtype=torch.bool, device=self.device)
            self.retracted = torch.zeros(B, M, dtype=torch.bool, device=self.device)
            self.step = torch.zeros(B, **i)
            self.key_text = [[None] * M for _ in range(B)]
            self.value_text = [[None] * M for _ in range(B)]
            return
        rows = _check_side("batch_mask", batch_mask, (B,), "bool", self.device)
        self._clear_slots(rows.unsqueeze(1).expand(B, M))
        self.step = torch.where(rows, torch.zeros_like(self.step), self.step)

    def _clear_slots(self, sel: torch.Tensor) -> None:
        """Return the slots where ``sel`` [B, M] is True to the empty state."""
        s3 = sel.unsqueeze(-1)
        self.keys = self.keys.masked_fill(s3, 0.0)
        self.values = self.values.masked_fill(s3, 0.0)
        self.aux = self.aux.masked_fill(s3, 0.0)
        for name in ("confidence", "usage", "importance", "hits", "version", "time"):
            setattr(self, name, getattr(self, name).masked_fill(sel, 0))
        self.chunk_id = self.chunk_id.masked_fill(sel, -1)
        self.span = self.span.masked_fill(s3, -1)
        self.occupied = self.occupied & ~sel
        self.protected = self.protected & ~sel
        self.retracted = self.retracted & ~sel
        for b, m in sel.nonzero().tolist():
            self.key_text[b][m] = None
            self.value_text[b][m] = None

    def retention(self) -> torch.Tensor:
        """[B, M] eviction score: weighted confidence, saturated usage, recency, importance."""
        w_c, w_u, w_r, w_i = self.retention_weights
        rec = recency(self.step, self.time, self.dtype)
        return w_c * self.confidence + w_u * saturate(self.usage) + w_r * rec + w_i * self.importance

    def read_bias(self) -> torch.Tensor:
        """[B, M] the non-key part of the read score: lambda*c + gamma*u/(1+u) + b(tau)."""
        rec = recency(self.step, self.time, self.dtype)
        return self.read_lambda * self.confidence + self.read_gamma * saturate(self.usage) + self.recency_beta * rec

    # ----------------------------------------------------------------- write
    def write(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        p_write: Optional[torch.Tensor] = None,
        *,
        event: Optional[torch.Tensor] = None,
        importance: Optional[torch.Tensor] = None,
        protect: Optional[torch.Tensor] = None,
        chunk_id: Optional[torch.Tensor] = None,
        span: Optional[torch.Tensor] = None,
        key_text: Optional[list] = None,
        value_text: Optional[list] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> WriteResult:
        """Apply N candidates per request in order n = 0..N-1 (vectorised over the batch).

        keys [B, N, dk] or [B, dk]; values [B, N, dv]; p_write [B, N] in [0, 1] (default 1);
        event [B, N] long EventType, -1 or None: infer; importance [B, N] in [0, 1] (default 0);
        protect [B, N] bool: protect the written slot; chunk_id [B, N], span [B, N, 2] long
        provenance; key_text/value_text B lists of N str|None; mask [B, N] bool (False: ignore).
        Every input is validated before anything changes.
        """
        cand = self._prepare(keys, values, p_write, event, importance, protect, chunk_id, span,
                             key_text, value_text, mask)
        actions, slots = [], []
        n, N = 0, cand.keys.shape[1]
        while n < N:
            run, decided = self._run_length(cand, n) if self.batched_writes else (0, {})
            if run:  # candidates that do not interact: all at once
                action, slot = self._apply_run(cand, n, decided)
            else:  # the next candidate depends on an earlier one (or batching is off): on its own
                action, slot = (x[:, None] for x in self._write_one(cand, n))
            actions.append(action)
            slots.append(slot)
            n += action.shape[1]
        B = self._batch_size
        if not actions:
            return WriteResult(action=torch.zeros(B, 0, dtype=torch.long), slot=torch.zeros(B, 0, dtype=torch.long))
        return WriteResult(action=torch.cat(actions, dim=1), slot=torch.cat(slots, dim=1))

    def _prepare(self, keys, values, p_write, event, importance, protect, chunk_id, span,
                 key_text, value_text, mask) -> _Candidates:
        B, dev = self._batch_size, self.device
        keys = check_tensor("keys", keys, ndim=(2, 3), last_dim=self._key_dim)
        values = check_tensor("values", values, ndim=keys.dim(), last_dim=self._value_dim)
        if keys.shape[0] != B:
            raise ShapeError(f"keys: expected batch size {B}, got shape {tuple(keys.shape)}")
        if values.shape[:-1] != keys.shape[:-1]:
            raise ShapeError(f"values: shape {tuple(values.shape)} does not match keys {tuple(keys.shape)}")
        two_d = keys.dim() == 2
        if two_d:
            keys, values = keys.unsqueeze(1), values.unsqueeze(1)  # [B, 1, dk], [B, 1, dv]
        N = keys.shape[1]
        keys = normalize_keys(keys.to(dev, self.dtype), "keys")
        side = {"p_write": (p_write, (B, N), "float", 1.0), "event": (event, (B, N), "long", NO_EVENT),
                "importance": (importance, (B, N), "float", 0.0), "protect": (protect, (B, N), "bool", False),
                "chunk_id": (chunk_id, (B, N), "long", -1), "span": (span, (B, N, 2), "long", -1),
                "mask": (mask, (B, N), "bool", True)}
        out = {}
        for name, (x, shape, kind, default) in side.items():
            if x is None:
                dtype = {"float": self.dtype, "long": torch.long, "bool": torch.bool}[kind]
                out[name] = torch.full(shape, default, dtype=dtype, device=dev)
            else:
                out[name] = _check_side(name, x, shape, kind, dev)
        _check_range("p_write", out["p_write"], 0.0, 1.0)
        _check_range("importance", out["importance"], 0.0, 1.0)
        _check_range("event", out["event"], NO_EVENT, int(EventType.IRRELEVANT))
        out["p_write"] = out["p_write"].to(self.dtype)
        out["importance"] = out["importance"].to(self.dtype)
        out["event"], out["chunk_id"], out["span"] = (out[k].long() for k in ("event", "chunk_id", "span"))
        return _Candidates(keys=keys, values=values.to(dev, self.dtype),
                           key_text=_check_texts("key_text", key_text, B, N, two_d),
                           value_text=_check_texts("value_text", value_text, B, N, two_d), **out)

    def _decide(self, cand: _Candidates, n: int) -> dict[str, torch.Tensor]:
        """Which action each row takes for candidate n ([B] masks), given the current state."""
        k, v, ev = cand.keys[:, n], cand.values[:, n], cand.event[:, n]  # [B, dk], [B, dv], [B]
        rows = torch.arange(self._batch_size, device=self.device)
        retract, update = ev == EventType.RETRACT, ev == EventType.UPDATE
        sims = torch.einsum("bmd,bd->bm", self.keys, k)  # [B, M]
        if self.update_name_weight > 0 and cand.key_text is not None:
            sims = sims + self.update_name_weight * self._name_overlap(cand, n, (retract | update) & cand.mask[:, n])
        sims = sims.masked_fill(~self.occupied, -math.inf)
        best, best_m = sims.max(dim=1)  # [B]
        matched = best >= torch.where(retract | update, self.update_match_threshold, self.match_threshold)
        vcos = F.cosine_similarity(self.values[rows, best_m], v, dim=-1, eps=1e-12)  # [B]
        agree = (vcos >= self.value_threshold) & ~self.retracted[rows, best_m]
        slot_protected = self.protected[rows, best_m]
        gate = cand.mask[:, n] & (cand.p_write[:, n] >= self.write_threshold) & (ev != EventType.IRRELEVANT)
        inferred_hit = gate & matched & ~retract & ~update
        free = ~self.occupied
        evictable = self.occupied & ~self.protected
        evict_m = self.retention().masked_fill(~evictable, math.inf).argmin(dim=1)
        want_new = gate & ~matched & (~retract | self.tombstones)  # an unmatched tombstone is placed
        return {
            "matched_slot": best_m, "vcos": vcos,
            "retract": gate & matched & retract,
            "overwrite": (gate & matched & update) | (inferred_hit & ~agree & ~slot_protected),
            "reinforce": inferred_hit & agree & ~slot_protected,
            "blocked": inferred_hit & slot_protected & ~agree,
            "allocate": want_new & free.any(dim=1),
            "evict": want_new & ~free.any(dim=1) & evictable.any(dim=1),
            "drop": want_new & ~free.any(dim=1) & ~evictable.any(dim=1),
            "new_slot": torch.where(free.any(dim=1), free.long().argmax(dim=1), evict_m),
        }

    def _name_overlap(self, cand: _Candidates, n: int, rows: torch.Tensor) -> torch.Tensor:
        """[B, M]: word overlap of candidate n's key text with each slot's, in the ``rows`` [B] given."""
        out = torch.zeros(self._batch_size, self._num_slots, dtype=self.dtype, device=self.device)
        for b in rows.nonzero().flatten().tolist():
            if cand.key_text[b][n]:
                out[b] = torch.tensor(word_overlap(cand.key_text[b][n], self.key_text[b]), dtype=self.dtype)
        return out

    def _write_one(self, cand: _Candidates, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply candidate n to every row; returns (action [B], slot [B])."""
        self.step = self.step + cand.mask[:, n].long()  # the clock ticks before anything is decided
        d = self._decide(cand, n)
        M = self._num_slots
        on_match = F.one_hot(d["matched_slot"], M).bool()  # [B, M]
        on_new = F.one_hot(d["new_slot"], M).bool()
        # branches are skipped when no row takes them: most candidates take one or two
        if bool(d["blocked"].any()):
            self._aux_add(AUX_BLOCKED, on_match & d["blocked"][:, None], 1.0)
            self._aux_set(AUX_CONFLICT, on_match & d["blocked"][:, None], 1.0 - d["vcos"][:, None])
        if bool(d["reinforce"].any()):
            self._reinforce(on_match & d["reinforce"][:, None], cand, n)
        if bool(d["overwrite"].any()):
            self._overwrite(on_match & d["overwrite"][:, None], cand, n, d["vcos"])
        if bool(d["retract"].any()):
            if self.tombstones:
                self._withdraw(on_match & d["retract"][:, None], cand, n, d["vcos"])
            else:
                self._clear_slots(on_match & d["retract"][:, None])
        if bool((d["allocate"] | d["evict"]).any()):
            new_sel = on_new & (d["allocate"] | d["evict"])[:, None]
            self._clear_slots(new_sel)  # an evicted slot starts from scratch
            self._fill(new_sel, cand, n)
        action = torch.full_like(d["matched_slot"], int(WriteAction.SKIPPED))
        slot = torch.full_like(d["matched_slot"], -1)
        for name, act, where in (("reinforce", WriteAction.REINFORCED, "matched_slot"),
                                 ("overwrite", WriteAction.OVERWRITTEN, "matched_slot"),
                                 ("retract", WriteAction.RETRACTED, "matched_slot"),
                                 ("allocate", WriteAction.ALLOCATED, "new_slot"),
                                 ("evict", WriteAction.EVICTED, "new_slot")):
            action = torch.where(d[name], int(act), action)
            slot = torch.where(d[name], d[where], slot)
        action = torch.where(d["drop"], int(WriteAction.DROPPED), action)
        return action, slot

    # ----------------------------------------------------------------- batched runs of candidates
    def _run_length(self, cand: _Candidates, n0: int) -> tuple[int, dict[str, torch.Tensor]]:
        """How many candidates from ``n0`` on can be applied at once, and their decisions ([B, R]).

        Candidates n0, n0+1, ... decide against the current state exactly as one at a time while
        none of them depends on an earlier one of the run: each touches a different matched slot,
        no key written in the run comes near a later key, new facts fit in free slots, no
        retraction frees a slot, no revision reads name overlaps, and no score sits within
        ``_RUN_MARGIN`` of a threshold or of the runner-up (float rounding could flip it)."""
        n1 = min(cand.keys.shape[1], n0 + _RUN_WINDOW)
        d = self._decide_many(cand, n0, n1)
        R = n1 - n0
        earlier = torch.ones(R, R, dtype=torch.bool, device=self.device).tril(-1)  # [n, j]: j < n
        touch = d["gate"] & d["matched"]  # [B, R]
        same = (d["matched_slot"][:, :, None] == d["matched_slot"][:, None, :]) & touch[:, None, :] & earlier
        bad = d["unsure"] | (touch & same.any(-1))
        written = d["allocate"] | d["reinforce"]  # these put a key in a slot
        bar = torch.where(d["matched"], d["best"], d["thr"])  # a later key must stay below this
        cross = torch.einsum("bnd,bjd->bnj", cand.keys[:, n0:n1], d["new_key"])  # [B, R, R]
        bad |= d["gate"] & ((cross >= bar[..., None] - _RUN_MARGIN) & written[:, None, :] & earlier).any(-1)
        first = torch.where(bad.any(1), bad.long().argmax(1), torch.full_like(bad[:, 0], R, dtype=torch.long))
        run = int(first.min())
        return run, {k: v[:, :run] for k, v in d.items()}

    def _decide_many(self, cand: _Candidates, n0: int, n1: int) -> dict[str, torch.Tensor]:
        """``_decide`` for candidates n0 .. n1-1 against the current state ([B, R] each), plus
        ``unsure``: the candidates a run must not take (see ``_run_length``)."""
        sl = slice(n0, n1)
        k, v, ev = cand.keys[:, sl], cand.values[:, sl], cand.event[:, sl]  # [B, R, dk], [B, R, dv], [B, R]
        B, R = ev.shape
        retract, update = ev == EventType.RETRACT, ev == EventType.UPDATE
        sims = torch.einsum("bmd,brd->brm", self.keys, k).masked_fill(~self.occupied[:, None, :], -math.inf)
        top = sims.topk(min(2, self._num_slots), dim=-1)
        best, best_m = top.values[..., 0], top.indices[..., 0]  # [B, R]
        thr = torch.where(retract | update, self.update_match_threshold, self.match_threshold).to(self.dtype)
        matched = best >= thr
        m_v = self.values.gather(1, best_m[..., None].expand(B, R, self._value_dim))  # [B, R, dv]
        vcos = F.cosine_similarity(m_v, v, dim=-1, eps=1e-12)
        agree = (vcos >= self.value_threshold) & ~self.retracted.gather(1, best_m)
        prot = self.protected.gather(1, best_m)
        gate = cand.mask[:, sl] & (cand.p_write[:, sl] >= self.write_threshold) & (ev != EventType.IRRELEVANT)
        inferred = gate & matched & ~retract & ~update
        want_new = gate & ~matched & (~retract | self.tombstones)
        free = ~self.occupied
        order = torch.sort(self.occupied.long(), dim=1, stable=True).indices  # free slots first, in slot order
        nth = (want_new.long().cumsum(1) - 1).clamp(min=0)  # [B, R]: which free slot a new fact takes
        near = (best - thr).abs() < _RUN_MARGIN
        if self._num_slots > 1:
            near |= matched & (best - top.values[..., 1] < _RUN_MARGIN)
        near |= inferred & ((vcos - self.value_threshold).abs() < _RUN_MARGIN)
        unsure = gate & (near & torch.isfinite(best) | (retract & matched & (not self.tombstones)))
        unsure |= want_new & (nth >= free.sum(1, keepdim=True))  # would evict or drop
        if self.update_name_weight > 0 and cand.key_text is not None:
            unsure |= gate & (retract | update)
        a = self._alpha().gather(1, best_m)[..., None]  # [B, R, 1]
        m_k = self.keys.gather(1, best_m[..., None].expand(B, R, self._key_dim))
        reinforce = inferred & agree & ~prot
        new_key = torch.where(reinforce[..., None], F.normalize((1 - a) * m_k + a * k, dim=-1, eps=1e-12), k)
        return {"gate": gate, "matched": matched, "best": best, "thr": thr.expand(B, R), "matched_slot": best_m,
                "vcos": vcos, "retract": gate & matched & retract,
                "overwrite": (gate & matched & update) | (inferred & ~agree & ~prot), "reinforce": reinforce,
                "blocked": inferred & prot & ~agree, "allocate": want_new,
                "new_slot": order.gather(1, nth.clamp(max=self._num_slots - 1)),
                "new_key": new_key, "unsure": unsure}

    def _apply_run(self, cand: _Candidates, n0: int, d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply a run from ``_run_length`` at once: every candidate writes a different slot, with the
        same arithmetic as one at a time. Returns (action [B, R], slot [B, R])."""
        R = d["gate"].shape[1]
        sl = slice(n0, n0 + R)
        steps = self.step[:, None] + cand.mask[:, sl].long().cumsum(1)  # [B, R]: the clock at each candidate
        self.step = steps[:, -1].clone()
        for name in _STATE_TENSORS[:-1]:  # written in place below: never alias a snapshot or an earlier result
            setattr(self, name, getattr(self, name).clone())
        at = lambda sel, slot: (*sel.nonzero(as_tuple=True), slot[sel])  # noqa: E731  (b, r, m) of the chosen
        b, r, m = at(d["blocked"], d["matched_slot"])
        self._aux_put(AUX_BLOCKED, b, m, self._aux_get(AUX_BLOCKED, b, m) + 1.0)
        self._aux_put(AUX_CONFLICT, b, m, 1.0 - d["vcos"][b, r])
        self._reinforce_at(cand, n0, *at(d["reinforce"], d["matched_slot"]), steps)
        over = d["overwrite"] | d["retract"]  # a tombstone is an overwrite that is then withdrawn
        self._overwrite_at(cand, n0, *at(over, d["matched_slot"]), steps, d["vcos"])
        b, r, m = at(d["retract"], d["matched_slot"])
        self.retracted[b, m] = True
        for bi, mi in zip(b.tolist(), m.tolist()):
            self.value_text[bi][mi] = None
        self._fill_at(cand, n0, *at(d["allocate"], d["new_slot"]), steps)
        action = torch.full_like(steps, int(WriteAction.SKIPPED))
        slot = torch.full_like(steps, -1)
        for name, act, where in (("reinforce", WriteAction.REINFORCED, "matched_slot"),
                                 ("overwrite", WriteAction.OVERWRITTEN, "matched_slot"),
                                 ("retract", WriteAction.RETRACTED, "matched_slot"),
                                 ("allocate", WriteAction.ALLOCATED, "new_slot")):
            action = torch.where(d[name], int(act), action)
            slot = torch.where(d[name], d[where], slot)
        return action, slot

    def _aux_get(self, feature: int, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.aux[b, m, feature] if feature < self.aux_dim else torch.zeros(len(b), dtype=self.dtype)

    def _aux_put(self, feature: int, b: torch.Tensor, m: torch.Tensor, value: torch.Tensor | float) -> None:
        if feature < self.aux_dim:
            self.aux[b, m, feature] = torch.as_tensor(value, dtype=self.dtype, device=self.device)

    def _reinforce_at(self, cand, n0, b, r, m, steps) -> None:
        """``_reinforce`` on the (b, m) slots from candidates n0 + r."""
        n = n0 + r
        a = self._alpha()[b, m][:, None]  # [P, 1]
        self.values[b, m] = (1 - a) * self.values[b, m] + a * cand.values[b, n]
        self.keys[b, m] = F.normalize((1 - a) * self.keys[b, m] + a * cand.keys[b, n], dim=-1, eps=1e-12)
        self.confidence[b, m] = 1 - (1 - self.confidence[b, m]) * (1 - a[:, 0] * cand.p_write[b, n])
        self.importance[b, m] = torch.maximum(self.importance[b, m], cand.importance[b, n])
        self.hits[b, m] = self.hits[b, m] + 1
        self.time[b, m] = steps[b, r]
        self.protected[b, m] |= cand.protect[b, n]
        self._aux_put(AUX_HITS, b, m, self.hits[b, m])
        self._texts_at(cand, b, n, m, key=False, value=False)

    def _overwrite_at(self, cand, n0, b, r, m, steps, vcos) -> None:
        """``_overwrite`` on the (b, m) slots from candidates n0 + r."""
        n = n0 + r
        self.values[b, m] = cand.values[b, n]
        self.version[b, m] = self.version[b, m] + 1
        self.confidence[b, m] = cand.p_write[b, n]
        self.importance[b, m] = torch.maximum(self.importance[b, m], cand.importance[b, n])
        self.hits[b, m] = 1.0
        self.time[b, m] = steps[b, r]
        self.protected[b, m] |= cand.protect[b, n]
        self.retracted[b, m] = False
        self.chunk_id[b, m] = cand.chunk_id[b, n]
        self.span[b, m] = cand.span[b, n]
        self._aux_put(AUX_OVERWRITES, b, m, self._aux_get(AUX_OVERWRITES, b, m) + 1.0)
        self._aux_put(AUX_CONFLICT, b, m, 1.0 - vcos[b, r])
        self._aux_put(AUX_HITS, b, m, 1.0)
        self._texts_at(cand, b, n, m, key=False, value=True)

    def _fill_at(self, cand, n0, b, r, m, steps) -> None:
        """``_clear_slots`` + ``_fill`` on the free (b, m) slots from candidates n0 + r: version 1."""
        n = n0 + r
        self.keys[b, m], self.values[b, m] = cand.keys[b, n], cand.values[b, n]
        self.aux[b, m] = 0.0
        self.usage[b, m] = 0.0
        self.confidence[b, m], self.importance[b, m] = cand.p_write[b, n], cand.importance[b, n]
        self.hits[b, m] = 1.0
        self.version[b, m] = 1
        self.time[b, m] = steps[b, r]
        self.occupied[b, m] = True
        self.protected[b, m] = cand.protect[b, n]
        self.retracted[b, m] = cand.event[b, n] == EventType.RETRACT
        self.chunk_id[b, m], self.span[b, m] = cand.chunk_id[b, n], cand.span[b, n]
        self._aux_put(AUX_HITS, b, m, 1.0)
        for bi, mi in zip(b.tolist(), m.tolist()):
            self.key_text[bi][mi] = self.value_text[bi][mi] = None
        self._texts_at(cand, b, n, m, key=True, value=True)

    def _texts_at(self, cand, b, n, m, *, key: bool, value: bool) -> None:
        """``_set_texts`` for the (b, m) slots from candidates n: strings are Python objects."""
        for bi, ni, mi in zip(b.tolist(), n.tolist(), m.tolist()):
            kt = None if cand.key_text is None else cand.key_text[bi][ni]
            vt = None if cand.value_text is None else cand.value_text[bi][ni]
            if kt is not None and (key or self.key_text[bi][mi] is None):
                self.key_text[bi][mi] = kt
            if vt is not None and (value or self.value_text[bi][mi] is None):
                self.value_text[bi][mi] = vt

    def _aux_set(self, feature: int, sel: torch.Tensor, value: torch.Tensor | float) -> None:
        if feature < self.aux_dim:
            col = self.aux[..., feature]
            self.aux[..., feature] = torch.where(sel, torch.as_tensor(value, dtype=self.dtype), col)

    def _aux_add(self, feature: int, sel: torch.Tensor, value: float) -> None:
        if feature < self.aux_dim:
            self.aux[..., feature] = torch.where(sel, self.aux[..., feature] + value, self.aux[..., feature])

    def _alpha(self) -> torch.Tensor:
        """[B, M] step size of the next reinforcement: fixed alpha, or 1/(hits+1) (sum = inf)."""
        if self.alpha is not None:
            return torch.full_like(self.hits, self.alpha)
        return 1.0 / (self.hits + 1.0)

    def _set_texts(self, sel: torch.Tensor, cand: _Candidates, n: int, *, key: bool, value: bool) -> None:
        """Copy candidate n's strings into the selected slots; False keeps an existing string."""
        b, m = sel.nonzero().unbind(-1)
        self._texts_at(cand, b, torch.full_like(b, n), m, key=key, value=value)

    def _fill(self, sel: torch.Tensor, cand: _Candidates, n: int) -> None:
        """Write candidate n into the (empty) slots selected by ``sel`` [B, M]: version 1."""
        s3 = sel.unsqueeze(-1)
        self.keys = torch.where(s3, cand.keys[:, n, None, :], self.keys)
        self.values = torch.where(s3, cand.values[:, n, None, :], self.values)
        self.confidence = torch.where(sel, cand.p_write[:, n, None], self.confidence)
        self.importance = torch.where(sel, cand.importance[:, n, None], self.importance)
        self.hits = torch.where(sel, torch.ones_like(self.hits), self.hits)
        self.version = torch.where(sel, torch.ones_like(self.version), self.version)
        self.time = torch.where(sel, self.step[:, None], self.time)
        self.occupied = self.occupied | sel
        self.protected = torch.where(sel, cand.protect[:, n, None], self.protected)
        self.retracted = torch.where(sel, cand.event[:, n, None] == EventType.RETRACT, self.retracted)
        self.chunk_id = torch.where(sel, cand.chunk_id[:, n, None], self.chunk_id)
        self.span = torch.where(s3, cand.span[:, n, None, :], self.span)
        self._aux_set(AUX_HITS, sel, 1.0)
        self._set_texts(sel, cand, n, key=True, value=True)

    def _overwrite(self, sel: torch.Tensor, cand: _Candidates, n: int, vcos: torch.Tensor) -> None:
        """Newer version: replace the value (no averaging), bump version, restart the hit count."""
        s3 = sel.unsqueeze(-1)
        self.values = torch.where(s3, cand.values[:, n, None, :], self.values)
        self.version = self.version + sel.long()
        self.confidence = torch.where(sel, cand.p_write[:, n, None], self.confidence)
        self.importance = torch.where(sel, torch.maximum(self.importance, cand.importance[:, n, None]), self.importance)
        self.hits = torch.where(sel, torch.ones_like(self.hits), self.hits)
        self.time = torch.where(sel, self.step[:, None], self.time)
        self.protected = self.protected | (sel & cand.protect[:, n, None])
        self.retracted = self.retracted & ~sel  # a newer version revives a withdrawn fact
        self.chunk_id = torch.where(sel, cand.chunk_id[:, n, None], self.chunk_id)
        self.span = torch.where(s3, cand.span[:, n, None, :], self.span)
        self._aux_add(AUX_OVERWRITES, sel, 1.0)
        self._aux_set(AUX_CONFLICT, sel, 1.0 - vcos[:, None])
        self._aux_set(AUX_HITS, sel, 1.0)
        self._set_texts(sel, cand, n, key=False, value=True)

    def _withdraw(self, sel: torch.Tensor, cand: _Candidates, n: int, vcos: torch.Tensor) -> None:
        """Tombstone: the retraction is the slot's newest version; its old value text is gone."""
        self._overwrite(sel, cand, n, vcos)
        self.retracted = self.retracted | sel
        for b, m in sel.nonzero().tolist():
            self.value_text[b][m] = None

    def _reinforce(self, sel: torch.Tensor, cand: _Candidates, n: int) -> None:
        """Same version seen again: v <- (1-a) v + a v_t, key likewise (re-normalised), c raised."""
        a = self._alpha()  # [B, M]
        a3 = a.unsqueeze(-1)
        s3 = sel.unsqueeze(-1)
        new_v = (1 - a3) * self.values + a3 * cand.values[:, n, None, :]
        new_k = F.normalize((1 - a3) * self.keys + a3 * cand.keys[:, n, None, :], dim=-1, eps=1e-12)
        new_c = 1 - (1 - self.confidence) * (1 - a * cand.p_write[:, n, None])
        self.values = torch.where(s3, new_v, self.values)
        self.keys = torch.where(s3, new_k, self.keys)
        self.confidence = torch.where(sel, new_c, self.confidence)
        self.importance = torch.where(sel, torch.maximum(self.importance, cand.importance[:, n, None]), self.importance)
        self.hits = self.hits + sel.to(self.dtype)
        self.time = torch.where(sel, self.step[:, None], self.time)
        self.protected = self.protected | (sel & cand.protect[:, n, None])
        self._aux_set(AUX_HITS, sel, self.hits)
        self._set_texts(sel, cand, n, key=False, value=False)

    # ----------------------------------------------------------------- read
    def _check_query(self, query: Any, name: str = "query") -> torch.Tensor:
        """Validate and normalise a query; returns [B, Q, dk]."""
        query = check_tensor(name, query, ndim=(2, 3), last_dim=self._key_dim)
        if query.shape[0] != self._batch_size:
            raise ShapeError(f"{name}: expected batch size {self._batch_size}, got shape {tuple(query.shape)}")
        if query.dim() == 2:
            query = query.unsqueeze(1)  # [B, 1, dk]
        return normalize_keys(query.to(self.device, self.dtype), name)

    def _check_top_k(self, top_k: Any) -> int:
        top_k = check_positive_int("top_k", top_k)
        if top_k > self._num_slots:
            raise CapacityError(f"top_k: {top_k} exceeds num_slots {self._num_slots}")
        return top_k

    def _check_bias(self, bias: Any, q: torch.Tensor) -> torch.Tensor:
        """None, [B, M] or [B, Q, M] finite evidence per slot -> [B, Q, M] (zeros for None)."""
        B, Q, M = q.shape[0], q.shape[1], self._num_slots
        if bias is None:
            return torch.zeros(B, Q, M, dtype=self.dtype, device=self.device)
        bias = check_tensor("bias", bias, ndim=(2, 3))
        if bias.dim() == 2:
            bias = bias.unsqueeze(1)  # [B, M] -> [B, 1, M]
        if bias.shape[0] != B or bias.shape[2] != M or bias.shape[1] not in (1, Q):
            raise ShapeError(f"bias: expected [B, M] = {(B, M)} or [B, Q, M] = {(B, Q, M)}, got {tuple(bias.shape)}")
        if not bool(torch.isfinite(bias).all()):
            raise NonFiniteError("bias: contains NaN or inf")
        return bias.to(self.device, self.dtype).expand(B, Q, M)

    def match(self, query: torch.Tensor, bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """No side effects: (best cosine [B, Q], slot [B, Q]) over occupied slots; (-1.0, -1) if none.

        ``bias`` [B, M] or [B, Q, M]: evidence added to every slot's cosine (e.g. the words a
        question shares with the slot's key text); the read scores take the same bias."""
        q = self._check_query(query)
        return self._match(q, self._check_bias(bias, q))

    def _match(self, q: torch.Tensor, bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        sims = torch.einsum("bqd,bmd->bqm", q, self.keys)
        sims = sims if bias is None else sims + bias
        sims = sims.masked_fill(~self.occupied[:, None, :], -math.inf)
        best, slot = sims.max(dim=-1)  # [B, Q]
        none = ~self.occupied.any(dim=1)[:, None].expand_as(best)
        return best.masked_fill(none, -1.0), slot.masked_fill(none, -1)

    def scores(self, query: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, Q, M] read scores q.k + bias + lambda*c + gamma*u/(1+u) + b(tau); -inf on free slots."""
        q = self._check_query(query)
        return self._scores(q, self._check_bias(bias, q))

    def _scores(self, q: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        s = torch.einsum("bqd,bmd->bqm", q, self.keys) + bias + self.read_bias()[:, None, :]
        return s.masked_fill(~self.occupied[:, None, :], -math.inf)

    def _check_update_usage(self, update_usage: Any) -> torch.Tensor:
        """bool or [B] bool tensor -> [B] bool: the rows whose usage a read credits."""
        if isinstance(update_usage, bool):
            return torch.full((self._batch_size,), update_usage, dtype=torch.bool, device=self.device)
        return _check_side("update_usage", update_usage, (self._batch_size,), "bool", self.device)

    def read(self, query: torch.Tensor, top_k: int, *, update_usage: bool | torch.Tensor = True,
             bias: Optional[torch.Tensor] = None) -> ReadResult:
        """Top-K active set per query, softmax weights over it; usage += weight of each read slot.

        query [B, dk] or [B, Q, dk]; results are [B, Q, K] (Q = 1 for a 2-D query).
        update_usage: bool, or [B] bool to credit usage only in some rows (e.g. those a router
        sends to the memory branch); bias as in :meth:`match`. Raises CapacityError if top_k > num_slots.
        """
        q = self._check_query(query)
        K = self._check_top_k(top_k)
        credit = self._check_update_usage(update_usage)  # [B]
        bias = self._check_bias(bias, q)  # [B, Q, M]
        B, Q = q.shape[0], q.shape[1]
        # a stable sort keeps ties (and the -inf of free slots) in slot order: deterministic active sets
        order = torch.sort(self._scores(q, bias), dim=-1, descending=True, stable=True)
        scores, idx = order.values[..., :K], order.indices[..., :K]  # [B, Q, K]
        valid = torch.isfinite(scores)
        top = scores.masked_fill(~valid, -math.inf).amax(dim=-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        expo = torch.where(valid, torch.exp(scores - top), torch.zeros_like(scores))
        weights = expo / expo.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(self.dtype).tiny)
        idx = idx.masked_fill(~valid, -1)
        gather = idx.clamp(min=0).reshape(B, Q * K)  # [B, Q*K]
        values = self.values.gather(1, gather.unsqueeze(-1).expand(B, Q * K, self._value_dim))
        values = values.reshape(B, Q, K, self._value_dim).masked_fill(~valid.unsqueeze(-1), 0.0)
        best, _ = self._match(q, bias)
        if bool(credit.any()):
            added = (weights * credit[:, None, None]).reshape(B, Q * K)
            self.usage = self.usage.scatter_add(1, gather, added)
        return ReadResult(indices=idx, scores=scores, weights=weights, values=values, valid=valid, match=best)

    # ----------------------------------------------------------------- lifecycle edits
    def _slot_mask(self, slots: Any, name: str = "slots") -> torch.Tensor:
        """bool [B, M] or long [P, 2] of (b, m) pairs -> bool [B, M]."""
        B, M = self._batch_size, self._num_slots
        if not isinstance(slots, torch.Tensor):
            raise DTypeError(f"{name}: expected a bool [B, M] or long [P, 2] tensor, got {type(slots).__name__}")
        if slots.dtype == torch.bool:
            return _check_side(name, slots, (B, M), "bool", self.device)
        if slots.is_floating_point() or slots.is_complex():
            raise DTypeError(f"{name}: expected bool or integer dtype, got {slots.dtype}")
        if slots.dim() != 2 or slots.shape[1] != 2:
            raise ShapeError(f"{name}: pairs must have shape [P, 2], got {tuple(slots.shape)}")
        pairs = slots.long().to(self.device)
        if pairs.numel() and (bool((pairs < 0).any()) or bool((pairs[:, 0] >= B).any()) or bool((pairs[:, 1] >= M).any())):
            raise CapacityError(f"{name}: (b, m) pairs must lie in [0, {B}) x [0, {M})")
        mask = torch.zeros(B, M, dtype=torch.bool, device=self.device)
        mask[pairs[:, 0], pairs[:, 1]] = True
        return mask

    def forget(self, slots: torch.Tensor) -> None:
        """Free the given slots (protected ones too: forgetting is explicit)."""
        self._clear_slots(self._slot_mask(slots) & self.occupied)

    def forget_key(self, key: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
        """Free every occupied slot whose key has cosine >= threshold with ``key`` [B, dk]; returns [B] count."""
        thr = self.match_threshold if threshold is None else check_real("threshold", threshold, low=-1.0, high=1.0)
        if isinstance(key, torch.Tensor) and key.dim() != 2:
            raise ShapeError(f"key: expected shape [B, dk], got {tuple(key.shape)}")
        q = self._check_query(key, "key")[:, 0]  # [B, dk]
        sel = self.occupied & (torch.einsum("bmd,bd->bm", self.keys, q) >= thr)
        self._clear_slots(sel)
        return sel.sum(dim=1)

    def protect(self, slots: torch.Tensor, value: bool = True) -> None:
        """Set (or with value=False clear) protection on the given occupied slots."""
        if not isinstance(value, bool):
            raise DTypeError(f"value: expected a bool, got {type(value).__name__}")
        sel = self._slot_mask(slots) & self.occupied
        self.protected = torch.where(sel, torch.full_like(self.protected, value), self.protected)

    # ----------------------------------------------------------------- inspection and copies
    def snapshot(self) -> dict:
        """A deep copy of the whole state (tensors cloned, texts copied)."""
        snap = {name: getattr(self, name).clone() for name in _STATE_TENSORS}
        snap["key_text"] = copy.deepcopy(self.key_text)
        snap["value_text"] = copy.deepcopy(self.value_text)
        return snap

    def check_snapshot(self, snap: Any, name: str = "snap") -> None:
        """Raise (DTypeError, ShapeError, NonFiniteError naming ``name``) unless ``snap`` is a
        ``snapshot()`` of a memory of these sizes; changes nothing."""
        if not isinstance(snap, dict):
            raise DTypeError(f"{name}: expected a dict from snapshot(), got {type(snap).__name__}")
        missing = [n for n in (*_STATE_TENSORS, "key_text", "value_text") if n not in snap]
        if missing:
            raise ShapeError(f"{name}: missing entries {missing}")
        for field in _STATE_TENSORS:
            mine, theirs = getattr(self, field), snap[field]
            if not isinstance(theirs, torch.Tensor) or theirs.dtype != mine.dtype:
                raise DTypeError(f"{name}[{field!r}]: expected a {mine.dtype} tensor")
            if theirs.shape != mine.shape:
                raise ShapeError(f"{name}[{field!r}]: expected shape {tuple(mine.shape)}, got {tuple(theirs.shape)}")
            if theirs.is_floating_point() and not bool(torch.isfinite(theirs).all()):
                raise NonFiniteError(f"{name}[{field!r}]: contains NaN or infinity")
        for field in ("key_text", "value_text"):
            _check_texts(f"{name}[{field!r}]", snap[field], self._batch_size, self._num_slots, False)

    def restore(self, snap: dict) -> None:
        """Replace the state by a snapshot taken from a memory of the same sizes (checked first)."""
        self.check_snapshot(snap)
        # copy everything first: an allocation failure then leaves the old state whole
        state = {name: snap[name].clone().to(self.device) for name in _STATE_TENSORS}
        state["key_text"] = copy.deepcopy([list(r) for r in snap["key_text"]])
        state["value_text"] = copy.deepcopy([list(r) for r in snap["value_text"]])
        for name, value in state.items():
            setattr(self, name, value)

    def table(self, batch_index: int = 0) -> list[dict]:
        """One row per occupied slot of request ``batch_index``, in slot order, for inspection."""
        if isinstance(batch_index, bool) or not isinstance(batch_index, int):
            raise DTypeError(f"batch_index: expected an int, got {type(batch_index).__name__}")
        if not 0 <= batch_index < self._batch_size:
            raise CapacityError(f"batch_index: {batch_index} outside [0, {self._batch_size})")
        b = batch_index
        rows = []
        for m in self.occupied[b].nonzero().flatten().tolist():
            rows.append({
                "slot": m, "key_text": self.key_text[b][m], "value_text": self.value_text[b][m],
                "version": int(self.version[b, m]), "confidence": float(self.confidence[b, m]),
                "usage": float(self.usage[b, m]), "time": int(self.time[b, m]),
                "protected": bool(self.protected[b, m]), "retracted": bool(self.retracted[b, m]),
                "chunk_id": int(self.chunk_id[b, m]),
                "span": tuple(int(x) for x in self.span[b, m].tolist()),
            })
        return rows

    def __repr__(self) -> str:
        used = self.occupied.sum(dim=1).tolist()
        return (f"SlotMemory(num_slots={self._num_slots}, key_dim={self._key_dim}, value_dim={self._value_dim}, "
                f"batch_size={self._batch_size}, occupied={used})")
