"""The vocabulary of the slot memory: event and action codes, aux features, result types, and the
validated candidates and state fields that ``SlotMemory``'s modules pass between them.

Kept apart from ``memadapter.slots`` so the write path, the batched runs and the read path can
share these names without importing the memory itself (``slots`` re-exports every public one).

Example:
    >>> import torch
    >>> from memadapter.slot_types import WriteAction, WriteResult
    >>> res = WriteResult(action=torch.tensor([[int(WriteAction.ALLOCATED), int(WriteAction.SKIPPED)]]),
    ...                   slot=torch.tensor([[0, -1]]))
    >>> res.num_writes.tolist()   # a skipped candidate leaves the memory as it was
    [1]
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

import torch


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


# Every tensor of a memory's state (what a snapshot copies). The clock ``step`` is per row, not per
# slot, and comes last: ``_STATE_TENSORS[:-1]`` are the per-slot fields.
_STATE_TENSORS = (
    "keys", "values", "confidence", "usage", "version", "time", "aux", "importance", "hits",
    "occupied", "protected", "retracted", "chunk_id", "span", "step",
)
