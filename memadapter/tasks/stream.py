"""A batch of token streams that is generated lazily, chunk by chunk.

A stream is background filler with a few short events written over it at known positions. Only
the events (a few hundred ids) are stored; filler is regenerated on demand from a seeded
generator per 512-token page, so ``chunk(start, end)`` returns the same ids whatever the chunk
size, and a 2,097,152-token stream never exists in memory as a whole.

Labels (the queried key, its correct value) live beside the stream for scoring only; baselines
receive ``chunk`` outputs and query token ids, never ``answers``.

Example:
    >>> import torch
    >>> b = StreamBatch(length=16, event_pos=torch.tensor([[2, 3]]), event_tok=torch.tensor([[0, 5]]),
    ...                 filler_range=(100, 200), filler_seed=1, queries=torch.tensor([[5]]),
    ...                 answers=torch.tensor([[9]]), query_at=[16], task="demo")
    >>> x = b.chunk(0, 16)
    >>> x.shape, int(x[0, 2]), int(x[0, 3])
    (torch.Size([1, 16]), 0, 5)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError

PAGE = 512  # filler is generated per page so chunking never changes the stream


@dataclass
class StreamBatch:
    """``B`` streams of ``length`` tokens: filler plus events, with queries and answer labels.

    event_pos / event_tok: [B, P] absolute positions and ids of event tokens (pad: pos -1).
    queries / answers: [B, Q] query key ids and the correct value ids (labels).
    query_at: Q stream positions; query q is asked after tokens [0, query_at[q]) were observed.
    """

    length: int
    event_pos: torch.Tensor
    event_tok: torch.Tensor
    filler_range: tuple[int, int]
    filler_seed: int
    queries: torch.Tensor
    answers: torch.Tensor
    query_at: list[int]
    task: str
    meta: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.event_pos.shape[0])

    def _filler_page(self, page: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.filler_seed * 1_000_003 + page)
        lo, hi = self.filler_range
        return torch.randint(lo, hi, (self.batch_size, PAGE), generator=gen, dtype=torch.int32)

    def chunk(self, start: int, end: int) -> torch.Tensor:
        """Token ids of positions [start, end) of every stream -> [B, end - start] int64."""
        if not 0 <= start < end <= self.length:
            raise ConfigError(f"start/end: need 0 <= start < end <= {self.length}, got {start}, {end}")
        first, last = start // PAGE, (end - 1) // PAGE
        pages = torch.cat([self._filler_page(p) for p in range(first, last + 1)], dim=1)  # [B, pages*PAGE]
        out = pages[:, start - first * PAGE : end - first * PAGE].long()
        inside = (self.event_pos >= start) & (self.event_pos < end)
        b, j = inside.nonzero(as_tuple=True)
        out[b, self.event_pos[b, j] - start] = self.event_tok[b, j]
        return out

    def chunks(self, start: int, end: int, size: int = 512):
        """Yield [B, <=size] chunks covering positions [start, end)."""
        for s in range(start, end, size):
            yield self.chunk(s, min(s + size, end))

    def materialize(self) -> torch.Tensor:
        """The whole batch as [B, length] ids (only for short streams: tests, evidence)."""
        return self.chunk(0, self.length)


class StackedBatch:
    """Several ``StreamBatch`` of equal length and question times, seen as one wider batch.

    Lets the stress test run the streams of different seeds side by side while each keeps its
    own seeded filler and events.

    Example:
        >>> import torch
        >>> one = lambda s: StreamBatch(8, torch.tensor([[0]]), torch.tensor([[1]]), (10, 20), s,
        ...                             torch.tensor([[1]]), torch.tensor([[2]]), [8], "demo")
        >>> StackedBatch([one(0), one(1)]).chunk(0, 8).shape
        torch.Size([2, 8])
    """

    def __init__(self, parts: list[StreamBatch]) -> None:
        if not parts or len({(p.length, tuple(p.query_at)) for p in parts}) != 1:
            raise ConfigError("parts: need one or more batches with equal length and query_at")
        self.parts = parts
        self.length, self.query_at, self.task = parts[0].length, parts[0].query_at, parts[0].task
        self.queries = torch.cat([p.queries for p in parts])  # [sum B, Q]
        self.answers = torch.cat([p.answers for p in parts])

    @property
    def batch_size(self) -> int:
        return int(self.queries.shape[0])

    def chunk(self, start: int, end: int) -> torch.Tensor:
        return torch.cat([p.chunk(start, end) for p in self.parts])

    def chunks(self, start: int, end: int, size: int = 512):
        for s in range(start, end, size):
            yield self.chunk(s, min(s + size, end))
