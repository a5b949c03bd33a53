"""Fixed-state (fast-state) associative memories: linear attention, DeltaNet, gated DeltaNet, VLA.

Each model keeps a fixed-size matrix state ``S`` ``[B, dv, dk]`` over given keys/values (the
projections belong to the callers) and has three equal forms of its update: ``update`` (the fast,
chunkwise path), ``recurrent_update`` (one token at a time) and ``reference_update`` (plain Python
loops, float64). See ``docs/BENCHMARKS.md`` for VLA vs linear attention.

    >>> import torch
    >>> from memadapter.fast_state import VLA
    >>> mem = VLA(key_dim=16, value_dim=16)
    >>> state = mem.update(mem.init_state(2), torch.randn(2, 10, 16), torch.randn(2, 10, 16))
    >>> mem.read(state, torch.randn(2, 3, 16)).shape
    torch.Size([2, 3, 16])
"""

from __future__ import annotations

from typing import Any

import torch

from ._base import FastStateMemory
from .deltanet import DeltaNet
from .gated_deltanet import GatedDeltaNet
from .linear import LinearAttention
from .vla import VLA, VLAState, vla_step

__all__ = [
    "FastStateMemory",
    "LinearAttention",
    "DeltaNet",
    "GatedDeltaNet",
    "VLA",
    "VLAState",
    "vla_step",
    "reference_update",
]


def reference_update(model: FastStateMemory, state: Any, keys: torch.Tensor, values: torch.Tensor, **gates: Any) -> Any:
    """The model's plain per-token, per-element loop form (float64 result); slow, for tests only."""
    return model.reference_update(state, keys, values, **gates)  # type: ignore[attr-defined]
