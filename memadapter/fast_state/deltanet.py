"""DeltaNet: linear attention with the delta (Widrow-Hoff) rule.

Recurrence (Schlag et al. 2021; Yang et al. 2024 for the chunkwise form), with write strength
``beta_t`` in [0, 1]:

    S_t = S_{t-1} + beta_t (v_t - S_{t-1} k_t) k_t^T = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T

Keys are used as given; pass unit-norm keys for the stable regime (``beta ||k||^2 <= 2``).
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


class DeltaNet(MatrixStateMemory):
    """Delta-rule memory: each write first erases what the key currently reads, then stores v.

    Example:
        >>> import torch
        >>> mem = DeltaNet(key_dim=4, value_dim=2)
        >>> k = torch.eye(4)[None, :1].repeat(1, 2, 1)          # the same key twice
        >>> v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])        # the second value overwrites
        >>> mem.read(mem.update(mem.init_state(1), k, v), k[:, :1]).tolist()
        [[[0.0, 1.0]]]
    """

    def _checked(
        self, state: Any, keys: Any, values: Any, beta: Optional[torch.Tensor], gates: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        reject_unknown_gates("DeltaNet", gates, ("beta",))
        state = self._state(state)
        check_kv(keys, values, state, self.key_dim, self.value_dim)
        return state, check_gate("beta", beta, keys, low=0.0, low_open=False)

    def update(
        self, state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        beta: Optional[torch.Tensor] = None, **gates: Any,
    ) -> torch.Tensor:
        """State after all T tokens, chunkwise WY form (``beta`` ``[B, T]``, default 1)."""
        state, beta = self._checked(state, keys, values, beta, gates)
        return chunked_delta_rule(state, keys, values, beta, None, self.chunk_size)

    def recurrent_update(
        self, state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        beta: Optional[torch.Tensor] = None, **gates: Any,
    ) -> torch.Tensor:
        """Per-token form of :meth:`update`."""
        state, beta = self._checked(state, keys, values, beta, gates)
        return recurrent_delta_rule(state, keys, values, beta, None)

    def reference_update(
        self, state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        beta: Optional[torch.Tensor] = None, **gates: Any,
    ) -> torch.Tensor:
        """Plain per-element Python loops, float64."""
        state, beta = self._checked(state, keys, values, beta, gates)
        return reference_delta_rule(state, keys, values, beta, None)
