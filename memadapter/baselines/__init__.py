"""Every method of the evidence and stress benches behind one streaming interface (``base.Method``).

``build_methods(codebook, **overrides)`` returns them in table order; ``METHODS`` lists names.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import ConfigError
from ..tasks.vocab import Codebook
from .base import Method

METHODS = ("full_scan", "tail_window", "fifo", "linear_attention", "deltanet", "gated_deltanet", "vla",
           "query_sparse", "chunk_sparse", "memory", "hybrid")


def build_methods(codebook: Codebook, names: Optional[Sequence[str]] = None, *, chunk: int = 64,
                  window: int = 512, num_slots: int = 32) -> list[Method]:
    """Instantiate ``names`` (default: all, in ``METHODS`` order) with the shared settings."""
    from .chunk_sparse import ChunkSparse
    from .fifo import FIFOMemory
    from .fixed_state import FixedState
    from .full_scan import FullScan
    from .hybrid import Hybrid
    from .memory import ExplicitMemory
    from .query_sparse import QuerySparse
    from .tail_window import TailWindow

    names = list(METHODS if names is None else names)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"names: unknown methods {unknown}; choose from {list(METHODS)}")
    make = {
        "full_scan": lambda: FullScan(codebook),
        "tail_window": lambda: TailWindow(codebook, window=window),
        "fifo": lambda: FIFOMemory(codebook, capacity=num_slots),
        "query_sparse": lambda: QuerySparse(codebook, block=chunk, top_k=4),
        "chunk_sparse": lambda: ChunkSparse(codebook, chunk=chunk, top_k=4),
        "memory": lambda: ExplicitMemory(codebook, num_slots=num_slots),
        # The hybrid indexes 512-token chunks (ChunkIndex entries), as the product path does.
        "hybrid": lambda: Hybrid(codebook, num_slots=num_slots),
    }
    for model in ("linear_attention", "deltanet", "gated_deltanet", "vla"):
        make[model] = (lambda m: lambda: FixedState(codebook, m))(model)
    return [make[n]() for n in names]
