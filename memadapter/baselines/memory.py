"""Pure explicit memory: ``SlotMemory`` written from the stream's marker tokens, read top-1.

The writer reads each ``[MARKER, key, value]`` event it meets and maps the marker to the slot
memory's event type: ``WRITE`` -> NEW, ``UPDATE`` -> UPDATE, ``PROTECT`` -> NEW with protection
and importance 1, ``ASIDE`` -> IRRELEVANT (never written). Keys and values are the codebook
embeddings of the event's key and value tokens. Facts with no marker are never written: this
is the route that fails no-write-signal recall. The answer is the value of the best slot.
"""

from __future__ import annotations

import torch

from .._validate import check_positive_int
from ..slots import EventType, SlotMemory
from ..tasks.vocab import ASIDE, PROTECT, UPDATE, WRITE, Codebook
from .base import EventReader, Method, decode_or_invalid

_EVENT = {WRITE: EventType.NEW, UPDATE: EventType.UPDATE, PROTECT: EventType.NEW, ASIDE: EventType.IRRELEVANT}


class MarkerWriter:
    """Turns marked events into batched ``SlotMemory.write`` calls, in stream order."""

    def __init__(self, memory: SlotMemory, cb: Codebook) -> None:
        self.memory, self.cb = memory, cb
        self.reader = EventReader(memory.batch_size, cb)

    def observe(self, tokens: torch.Tensor) -> None:
        events = self.reader.read(tokens)
        if not events:
            return
        b_size = self.memory.batch_size
        per_row: list[list] = [[] for _ in range(b_size)]
        for b, marker, key, value in events:
            per_row[b].append((marker, key, value))
        n = max(len(r) for r in per_row)
        ids = torch.zeros(b_size, n, 2, dtype=torch.long)  # [B, N, (key, value)]
        event = torch.zeros(b_size, n, dtype=torch.long)
        protect = torch.zeros(b_size, n, dtype=torch.bool)
        mask = torch.zeros(b_size, n, dtype=torch.bool)
        for b, row in enumerate(per_row):
            for j, (marker, key, value) in enumerate(row):
                ids[b, j] = torch.tensor([key, value])
                event[b, j] = int(_EVENT[marker])
                protect[b, j] = marker == PROTECT
                mask[b, j] = True
        emb = self.cb.embed(ids)  # [B, N, 2, d]
        self.memory.write(emb[:, :, 0], emb[:, :, 1], event=event, protect=protect,
                          importance=protect.float(), mask=mask)


class ExplicitMemory(Method):
    """Slot memory alone: marker-driven writes, top-1 slot read, no fallback.

    Example:
        >>> from memadapter.tasks.vocab import Codebook, UPDATE, WRITE
        >>> cb = Codebook(dim=16, num_keys=8, num_values=8, num_filler=16)
        >>> m = ExplicitMemory(cb, num_slots=4); m.reset(1)
        >>> m.observe(torch.tensor([[WRITE, cb.key(1), cb.value(3), UPDATE, cb.key(1), cb.value(4), 0, 0]]))
        >>> int(m.answer(torch.tensor([[cb.key(1)]]))[0][0, 0]) == cb.value(4)
        True
    """

    name = "memory"
    unit = "slots"

    def __init__(self, codebook: Codebook, num_slots: int = 32, match_threshold: float = 0.8, top_k: int = 1) -> None:
        super().__init__(codebook)
        self.num_slots = check_positive_int("num_slots", num_slots)
        self.top_k = check_positive_int("top_k", top_k)
        self.match_threshold = match_threshold

    def _reset(self) -> None:
        self.memory = SlotMemory(self.num_slots, self.codebook.dim, self.codebook.dim,
                                 batch_size=self.batch_size, match_threshold=self.match_threshold)
        self.writer = MarkerWriter(self.memory, self.codebook)

    def _observe(self, tokens: torch.Tensor) -> None:
        self.writer.observe(tokens)

    def _read(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (decoded value ids [B, Q], match cosine [B, Q], active slots [B, Q])."""
        res = self.memory.read(self.codebook.embed(queries), top_k=self.top_k)
        ok = res.valid.any(-1)
        return decode_or_invalid(self.codebook, res.readout, ok), res.match, res.valid.sum(-1)

    def _answer(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred, _, active = self._read(queries)
        return pred, active
