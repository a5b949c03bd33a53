"""Tail window: full attention restricted to the last ``window`` tokens (sliding-window attention)."""

from __future__ import annotations

import torch

from .._validate import check_positive_int
from ..tasks.vocab import Codebook
from .full_scan import FullScan


class TailWindow(FullScan):
    """Attention over the last ``window`` token pairs; anything older is gone.

    Only the tail is kept, so memory is bounded too (the store is trimmed on every chunk).

    Example:
        >>> from memadapter.tasks.vocab import Codebook
        >>> cb = Codebook(dim=16, num_keys=8, num_values=8, num_filler=16)
        >>> m = TailWindow(cb, window=4); m.reset(1)
        >>> m.observe(torch.tensor([[cb.key(0), cb.value(5)] + [cb.filler_base] * 8]))
        >>> int(m.answer(torch.tensor([[cb.key(0)]]))[1][0, 0])
        4
    """

    name = "tail_window"

    def __init__(self, codebook: Codebook, window: int = 512) -> None:
        super().__init__(codebook)
        self.window = check_positive_int("window", window)

    def _observe(self, tokens: torch.Tensor) -> None:
        self.store.append(tokens)
        self.store.keep_last(self.window + 1)  # window pairs = window + 1 tokens

    def _window(self, ids: torch.Tensor) -> torch.Tensor:
        return ids[:, -(self.window + 1):]
