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

The class is split by concept: the vocabulary (``slot_types``), input checks (``slot_inputs``),
the write path one candidate at a time (``slot_writes``), batched runs of non-interacting
candidates (``slot_runs``) and the read path (``slot_reads``) are mixed into ``SlotMemory`` here,
which holds the state, the retention and read-bias scores, the direct edits and the snapshots.
Every public name of those modules imports from here too.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import torch

from ._validate import check_allocation, check_real, check_size
from .errors import CapacityError, ConfigError, DTypeError, NonFiniteError, ShapeError
from .slot_inputs import _check_finite_number, _check_side, _check_texts, _check_unit_interval
from .slot_reads import SlotReadsMixin
from .slot_runs import BatchedRunsMixin
from .slot_writes import SlotWritesMixin
# The vocabulary lives in its own modules; these names are part of this module's API too
# (``_Candidates`` for the plain-loop reference in ``memadapter.slots_reference``).
from .slot_inputs import normalize_keys  # noqa: F401
from .slot_types import (  # noqa: F401
    AUX_BLOCKED, AUX_CONFLICT, AUX_FEATURES, AUX_HITS, AUX_OVERWRITES, NO_EVENT, STATE_CHANGING, EventType,
    ReadResult, WriteAction, WriteResult, _Candidates, _STATE_TENSORS,
)


def saturate(usage: torch.Tensor) -> torch.Tensor:
    """Map usage counts to [0, 1) so scores and retention stay bounded."""
    return usage / (1.0 + usage)


def recency(step: torch.Tensor, time: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, M]: 1 for a slot written at the current step, decaying as 1/(1 + age)."""
    age = (step.unsqueeze(-1) - time).clamp(min=0).to(dtype)
    return 1.0 / (1.0 + age)


def slot_state_bytes(batch_size: int, num_slots: int, key_dim: int, value_dim: int, aux_dim: int = 4,
                     dtype: torch.dtype = torch.float32) -> int:
    """Bytes a SlotMemory of these sizes holds: per slot its key, value and aux vectors, four float,
    five long and three bool fields, and two text references (checked before ``reset`` allocates)."""
    width = torch.finfo(dtype).bits // 8
    per_slot = (key_dim + value_dim + aux_dim + 4) * width + 5 * 8 + 3 + 2 * 8
    return batch_size * (num_slots * per_slot + 8)


class SlotMemory(SlotWritesMixin, BatchedRunsMixin, SlotReadsMixin):
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
