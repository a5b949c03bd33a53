"""Standard (unnormalised) linear attention as a fixed-size associative memory.

Recurrence (Katharopoulos et al. 2020, without feature map or normaliser; the callers own the
projections and any feature map): ``S_t = S_{t-1} + v_t k_t^T``, read ``o = S q``. Nothing is ever
erased, so with T stored pairs ``||S_T||_F`` grows like ``sqrt(T)`` for random unit keys/values and
like ``T`` when keys share a mean direction (e.g. positive feature maps).
"""

from __future__ import annotations

from typing import Any

import torch

from ._base import MatrixStateMemory, check_kv, reject_unknown_gates


class LinearAttention(MatrixStateMemory):
    """Additive outer-product memory ``S += V^T K``: the baseline every other model improves on.

    Example:
        >>> import torch
        >>> mem = LinearAttention(key_dim=4, value_dim=3)
        >>> s = mem.update(mem.init_state(1), torch.eye(4)[None, :2], torch.ones(1, 2, 3))
        >>> mem.read(s, torch.eye(4)[None, :1]).tolist()
        [[[1.0, 1.0, 1.0]]]
    """

    def _checked(self, state: Any, keys: Any, values: Any, gates: dict) -> torch.Tensor:
        reject_unknown_gates("LinearAttention", gates, ())
        state = self._state(state)
        check_kv(keys, values, state, self.key_dim, self.value_dim)
        return state

    def update(self, state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, **gates: Any) -> torch.Tensor:
        """State after all T tokens: one matmul, since a sum of outer products ignores order."""
        state = self._checked(state, keys, values, gates)
        return state + values.transpose(1, 2) @ keys  # [B, dv, T] @ [B, T, dk] -> [B, dv, dk]

    def recurrent_update(
        self, state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, **gates: Any
    ) -> torch.Tensor:
        """Per-token form of :meth:`update`."""
        s = self._checked(state, keys, values, gates)
        for t in range(keys.shape[1]):
            s = s + values[:, t, :, None] * keys[:, t, None, :]  # [B, dv, 1] * [B, 1, dk]
        return s

    def reference_update(
        self, state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, **gates: Any
    ) -> torch.Tensor:
        """Plain Python loops over batch, tokens and elements, in float64."""
        self._checked(state, keys, values, gates)
        out = []
        for b in range(keys.shape[0]):
            s = [[float(state[b, i, j]) for j in range(self.key_dim)] for i in range(self.value_dim)]
            for t in range(keys.shape[1]):
                for i in range(self.value_dim):
                    for j in range(self.key_dim):
                        s[i][j] += float(values[b, t, i]) * float(keys[b, t, j])
            out.append(s)
        return torch.tensor(out, dtype=torch.float64)
