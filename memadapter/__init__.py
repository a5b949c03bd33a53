"""memadapter: editable, request-local slot memory with sparse fallback for frozen LLMs.

Public names are re-exported lazily so that ``import memadapter`` stays cheap and the memory
core never imports the Hugging Face layer (``memadapter.modeling``) by accident.

    >>> from memadapter import SlotMemory
    >>> memory = SlotMemory(num_slots=8, key_dim=16, value_dim=16)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # memory core
    "SlotMemory": "memadapter.slots",
    "WriteAction": "memadapter.slots",
    "EventType": "memadapter.slots",
    "WriteResult": "memadapter.slots",
    "ReadResult": "memadapter.slots",
    "ChunkIndex": "memadapter.chunk_index",
    "SearchResult": "memadapter.chunk_index",
    "Router": "memadapter.router",
    "RouteResult": "memadapter.router",
    "RequestMemory": "memadapter.request_memory",
    "GroundingHead": "memadapter.heads",
    "WriteController": "memadapter.heads",
    "QueryHead": "memadapter.heads",
    # fixed-state memories (baselines, fast state)
    "LinearAttention": "memadapter.fast_state",
    "DeltaNet": "memadapter.fast_state",
    "GatedDeltaNet": "memadapter.fast_state",
    "VLA": "memadapter.fast_state",
    # errors
    "MemAdapterError": "memadapter.errors",
    "ShapeError": "memadapter.errors",
    "DTypeError": "memadapter.errors",
    "EmptyInputError": "memadapter.errors",
    "NonFiniteError": "memadapter.errors",
    "CapacityError": "memadapter.errors",
    "ConfigError": "memadapter.errors",
    "UnsupportedBackboneError": "memadapter.errors",
    "AdapterMismatchError": "memadapter.errors",
    "UnsafeLoadError": "memadapter.errors",
    "MissingDependencyError": "memadapter.errors",
    # Hugging Face layer
    "MemAdapterConfig": "memadapter.modeling",
    "MemAdapterForCausalLM": "memadapter.modeling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'memadapter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
