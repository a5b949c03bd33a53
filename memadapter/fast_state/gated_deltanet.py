"""Gated DeltaNet: the delta rule with a data-dependent scalar decay (Yang, Kautz, Hatamizadeh 2025).

Recurrence, with decay ``alpha_t`` in (0, 1] and write strength ``beta_t`` in [0, 1]:

    S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T

``alpha = 1`` everywhere is DeltaNet; ``beta`` fixed with no erase term would be Mamba2-style decay.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ._base import (
    MatrixStateMemory,
    check_gate,
    check_kv,
    chunked_delta_rule,
    recurrent_delta_rule,
    reference_delta_rule,
    reject_unknown_gates,
)


class GatedDeltaNet(MatrixStateMemory):
    """Delta rule plus forgetting: ``alpha`` shrinks the whole state before each write.

    Example:
        >>> import torch
        >>> mem = GatedDeltaNet(key_dim=4, value_dim=2)
        >>> k, v = torch.eye(4)[None, :2], torch.ones(1, 2, 2)
        >>> s = mem.update(mem.init_state(1), k, v, alpha=torch.full((1, 2), 0.5))
        >>> mem.read(s, k[:, :1]).tolist()                      # first write decayed once
        [[[0.5, 0.5]]]
    """

    def _checked(
        self, state: Any, keys: Any, values: Any, alpha: Optional[torch.Tensor],
        beta: Optional[torch.Tensor], gates: dict,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reject_unknown_gates("GatedDeltaNet", gates, ("alpha", "beta"))
        state = self._state(state)
        check_kv(keys, values, state, self.key_dim, self.value_dim)
        alpha = check_gate("alpha", alpha, keys, low=0.0, low_open=True)
        return state, alpha, check_gate("beta", beta, keys, low=0.0, low_open=False)

    def update(
        self, state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        alpha: Optional[torch.Tensor] = None, beta: Optional[torch.Tensor] = None, **gates: Any,
    ) -> torch.Tensor:
        """State after all T tokens, chunkwise WY form with decay (gates ``[B, T]``, default 1)."""
        state, alpha, beta = self._checked(state, keys, values, alpha, beta, gates)
        return chunked_delta_rule(state, keys, values, beta, alpha.log(), self.chunk_size)

    def recurrent_update(
        self, state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        alpha: Optional[torch.Tensor] = None, beta: Optional[torch.Tensor] = None, **gates: Any,
    ) -> torch.Tensor:
        """Per-token form of :meth:`update`."""
        state, alpha, beta = self._checked(state, keys, values, alpha, beta, gates)
        return recurrent_delta_rule(state, keys, values, beta, alpha)

    def reference_update(
        self, state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        alpha: Optional[torch.Tensor] = None, beta: Optional[torch.Tensor] = None, **gates: Any,
    ) -> torch.Tensor:
        """Plain per-element Python loops, float64."""
        state, alpha, beta = self._checked(state, keys, values, alpha, beta, gates)
        return reference_delta_rule(state, keys, values, beta, alpha)
