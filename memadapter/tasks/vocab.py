"""The token codebook shared by the controlled tasks, the stress test and every baseline.

A stream is a sequence of integer token ids. The codebook plays the role of a frozen embedding
layer: each id maps to a fixed random unit vector of ``dim`` floats, drawn once from a seeded
generator. Ids are laid out in five contiguous ranges:

    markers     WRITE ("note:"), UPDATE ("update:"), PROTECT ("remember:"), ASIDE ("aside:")
    keys        entity-key tokens
    lookalikes  one per key: a distinct token whose embedding has cosine ``lookalike_cos`` with
                its key (below the slot memory's match threshold, so a faithful matcher can
                tell them apart, but close enough to draw attention mass)
    values      value tokens; every answer is one of them
    filler      background tokens

Markers are the explicit write signal the paper's labelled needles and "update:" sentences carry.
Baselines see ids and embeddings only; which range an id belongs to is not hidden (a tokenizer
knows its own vocabulary), but no method ever sees which event is the answer.

Example:
    >>> cb = Codebook(dim=16, num_keys=8, num_values=8, num_filler=32, seed=0)
    >>> cb.embed(torch.tensor([cb.key(0)])).shape
    torch.Size([1, 16])
    >>> int(cb.decode(cb.embed(torch.tensor([cb.value(3)])))[0]) == cb.value(3)
    True
"""

from __future__ import annotations

import math

import torch

from .._validate import check_positive_int, check_tensor
from ..errors import ConfigError, DTypeError

MARKERS = ("WRITE", "UPDATE", "PROTECT", "ASIDE")
WRITE, UPDATE, PROTECT, ASIDE = range(4)


class Codebook:
    """Seeded random unit embeddings for markers, keys, look-alike keys, values and filler.

    ``beta`` is the attention inverse temperature every attention-style baseline uses: a unit
    vector scaled to norm sqrt(dim) gives the usual q.k/sqrt(d) logit, i.e. sqrt(dim) * cosine.

    Example:
        >>> cb = Codebook(dim=16, num_keys=4, num_values=4, num_filler=8)
        >>> round(float(cb.embed(torch.tensor([cb.key(1)])) @ cb.embed(torch.tensor([cb.lookalike(1)])).T), 2)
        0.7
    """

    def __init__(
        self,
        dim: int = 64,
        num_keys: int = 1024,
        num_values: int = 1024,
        num_filler: int = 4096,
        *,
        lookalike_cos: float = 0.7,
        seed: int = 0,
    ) -> None:
        for name, value in (("dim", dim), ("num_keys", num_keys), ("num_values", num_values), ("num_filler", num_filler)):
            check_positive_int(name, value)
        if not 0.0 < lookalike_cos < 1.0:
            raise ConfigError(f"lookalike_cos: must lie in (0, 1), got {lookalike_cos}")
        self.dim, self.num_keys, self.num_values, self.num_filler = dim, num_keys, num_values, num_filler
        self.lookalike_cos = lookalike_cos
        self.key_base = len(MARKERS)
        self.lookalike_base = self.key_base + num_keys
        self.value_base = self.lookalike_base + num_keys
        self.filler_base = self.value_base + num_values
        self.size = self.filler_base + num_filler
        self.beta = math.sqrt(dim)
        self.embeddings = self._build(seed)  # [V, dim], unit rows

    def _build(self, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        table = torch.randn(self.size, self.dim, generator=gen)
        table = table / table.norm(dim=-1, keepdim=True)
        keys = table[self.key_base : self.lookalike_base]
        noise = table[self.lookalike_base : self.value_base]
        # Gram-Schmidt the noise against its key so the cosine is exactly lookalike_cos.
        noise = noise - (noise * keys).sum(-1, keepdim=True) * keys
        noise = noise / noise.norm(dim=-1, keepdim=True)
        c = self.lookalike_cos
        table[self.lookalike_base : self.value_base] = c * keys + math.sqrt(1.0 - c * c) * noise
        return table

    # id helpers -------------------------------------------------------------------------------
    def key(self, i: int) -> int:
        """Token id of entity key ``i``."""
        return self.key_base + i

    def lookalike(self, i: int) -> int:
        """Token id of the look-alike of key ``i``."""
        return self.lookalike_base + i

    def value(self, i: int) -> int:
        """Token id of value ``i``."""
        return self.value_base + i

    def is_marker(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of marker tokens (the explicit write signals)."""
        return (ids >= 0) & (ids < self.key_base)

    # vectors ----------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``ids`` (any shape of valid ids) -> [..., dim]."""
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point():
            raise DTypeError("ids: expected an integer torch.Tensor")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.size):
            raise ConfigError(f"ids: token ids must lie in [0, {self.size}), got [{int(ids.min())}, {int(ids.max())}]")
        return self.embeddings[ids.long()]

    def decode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Nearest value token (by dot product) for each vector: [..., dim] -> [...] ids."""
        check_tensor("vectors", vectors, last_dim=self.dim)
        values = self.embeddings[self.value_base : self.filler_base]  # [Vv, dim]
        return (vectors @ values.T).argmax(-1) + self.value_base
