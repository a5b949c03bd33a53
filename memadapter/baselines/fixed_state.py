"""Fixed-state baselines: linear attention, DeltaNet, gated DeltaNet and VLA over every token.

Each wraps a ``memadapter.fast_state`` model. Every token pair (token t, token t+1) is written
as (key, value) = (codebook embeddings), through the model's chunkwise ``update``; a query reads
``S q`` and decodes the nearest value token. The state is fixed-size (active set: 1 state).

Gates: none are learned here. DeltaNet and VLA use their defaults (write strength 1); gated
DeltaNet uses a constant decay ``alpha`` (default 0.999, a half-life of about 700 tokens),
since without a trained gate network there is no data-dependent decay to compute.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..fast_state import VLA, DeltaNet, GatedDeltaNet, LinearAttention
from ..tasks.vocab import Codebook
from .base import Method, decode_or_invalid

_MODELS = {"linear_attention": LinearAttention, "deltanet": DeltaNet, "gated_deltanet": GatedDeltaNet, "vla": VLA}


class FixedState(Method):
    """One fast-state model fed every token pair of the stream.

    Example:
        >>> from memadapter.tasks.vocab import Codebook
        >>> cb = Codebook(dim=16, num_keys=8, num_values=8, num_filler=16)
        >>> m = FixedState(cb, "deltanet"); m.reset(1)
        >>> m.observe(torch.tensor([[cb.key(0), cb.value(6)]]))
        >>> int(m.answer(torch.tensor([[cb.key(0)]]))[0][0, 0]) == cb.value(6)
        True
    """

    unit = "state"

    def __init__(self, codebook: Codebook, model: str, alpha: float = 0.999, chunk_size: int = 64) -> None:
        super().__init__(codebook)
        if model not in _MODELS:
            raise ConfigError(f"model: unknown fast-state model {model!r}; choose from {sorted(_MODELS)}")
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"alpha: must lie in (0, 1], got {alpha}")
        self.name, self.alpha = model, alpha
        self.model = _MODELS[model](codebook.dim, codebook.dim, chunk_size=chunk_size)

    def _reset(self) -> None:
        self.state = self.model.init_state(self.batch_size)
        self._last = None  # last token of the previous chunk: the key of a pair that spans chunks
        self._seen = 0

    def _observe(self, tokens: torch.Tensor) -> None:
        window = tokens if self._last is None else torch.cat([self._last, tokens], dim=1)
        self._last = tokens[:, -1:]
        self._seen += tokens.shape[1]
        if window.shape[1] < 2:
            return
        keys = self.codebook.embed(window[:, :-1])  # [B, T, d]
        values = self.codebook.embed(window[:, 1:])
        gates = {"alpha": torch.full(keys.shape[:2], self.alpha)} if self.name == "gated_deltanet" else {}
        self.state = self.model.update(self.state, keys, values, **gates)

    def _answer(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.read(self.state, self.codebook.embed(queries))  # [B, Q, d]
        ok = torch.full(queries.shape, self._seen >= 2)
        return decode_or_invalid(self.codebook, out, ok), torch.ones_like(queries)
