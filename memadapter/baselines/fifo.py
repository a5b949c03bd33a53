"""FIFO memory: the last ``capacity`` marked events, no lifecycle.

Every ``[MARKER, key, value]`` event (any marker: it does not interpret them) is appended; the
oldest falls out when full. Reading is softmax attention of the query over the stored event
keys, so two versions of one key are averaged and an "aside" counts like a fact. Facts without
a marker never enter.
"""

from __future__ import annotations

from collections import deque

import torch

from .._validate import check_positive_int
from ..tasks.vocab import Codebook
from .base import EventReader, Method, attend_ids, decode_or_invalid


class FIFOMemory(Method):
    """Queue of the most recent ``capacity`` marked events, read by attention.

    Example:
        >>> from memadapter.tasks.vocab import Codebook, WRITE
        >>> cb = Codebook(dim=16, num_keys=8, num_values=8, num_filler=16)
        >>> m = FIFOMemory(cb, capacity=2); m.reset(1)
        >>> m.observe(torch.tensor([[WRITE, cb.key(1), cb.value(3), cb.filler_base]]))
        >>> int(m.answer(torch.tensor([[cb.key(1)]]))[0][0, 0]) == cb.value(3)
        True
    """

    name = "fifo"
    unit = "events"

    def __init__(self, codebook: Codebook, capacity: int = 32) -> None:
        super().__init__(codebook)
        self.capacity = check_positive_int("capacity", capacity)

    def _reset(self) -> None:
        self.reader = EventReader(self.batch_size, self.codebook)
        self.queues = [deque(maxlen=self.capacity) for _ in range(self.batch_size)]

    def _observe(self, tokens: torch.Tensor) -> None:
        for b, _marker, key, value in self.reader.read(tokens):
            self.queues[b].append((key, value))

    def _answer(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, q = queries.shape
        width = max(1, max(len(qu) for qu in self.queues))
        keys = torch.zeros(b, width, dtype=torch.long)
        vals = torch.zeros(b, width, dtype=torch.long)
        valid = torch.zeros(b, width, dtype=torch.bool)
        for i, qu in enumerate(self.queues):
            if qu:
                keys[i, : len(qu)] = torch.tensor([k for k, _ in qu])
                vals[i, : len(qu)] = torch.tensor([v for _, v in qu])
                valid[i, : len(qu)] = True
        out = attend_ids(self.codebook, keys, vals, self.codebook.embed(queries), valid)  # [B, Q, d]
        count = valid.sum(1, keepdim=True).expand(b, q)
        return decode_or_invalid(self.codebook, out, count > 0), count.clone()
