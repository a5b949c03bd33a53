"""Variational Linear Attention (VLA), as we read ``seeds/vla_abstract.txt`` (Pandey & Singh 2026).

The abstract fixes three things: (a) the memory update is online regularised least squares with an
adaptive penalty matrix kept by the Sherman-Morrison rank-1 formula, (b) the write direction is
normalised to unit length, (c) that normalisation makes the recurrence Jacobian's spectral norm
exactly 1 (Proposition 2) and the state norm self-limiting under bounded inputs (Proposition 1).
The paper's full method section was not available to us, so the exact recurrence below is ours;
every line of it is pinned by (a)-(c):

    R_t = gamma R_{t-1} + k_t k_t^T,   R_0 = ridge * I          (regularised, forgetting key Gram)
    P_t = R_t^{-1} = (P_{t-1} - P_{t-1} k_t k_t^T P_{t-1} / (gamma + k_t^T P_{t-1} k_t)) / gamma
                                                                  (Sherman-Morrison, never inverted)
    u_t = P_{t-1} k_t / ||P_{t-1} k_t||                           (unit write direction)
    S_t = S_{t-1} + (v_t - S_{t-1} u_t) u_t^T = S_{t-1} (I - u_t u_t^T) + v_t u_t^T
    read: o = S q

Why this is the abstract's algorithm:

* ``P_{t-1} k_t`` is, up to a positive scale, the gain of recursive least squares for
  ``min_S sum_i gamma^{t-i} ||S k_i - v_i||^2 + ridge * gamma^t ||S||_F^2``: the RLS update is
  ``S_t = S_{t-1} + (v_t - S_{t-1} k_t) g_t^T`` with ``g_t = P_t k_t``, a vector parallel to
  ``P_{t-1} k_t``. The adaptive penalty ``R_t`` makes directions already used by past keys costly,
  so ``u_t`` points where writing disturbs the fewest stored associations (for fewer than ``dk``
  keys and a small ridge, ``u_t`` is the Gram-Schmidt direction of ``k_t`` against the earlier keys,
  and earlier pairs are untouched: ``u_t . k_i ~ 0`` for i < t).
* Normalising the gain to unit length and using the same ``u_t`` for the read-out of the residual
  turns the oblique RLS step ``I - k_t g_t^T`` (spectral norm ``1/cos(k_t, g_t) >= 1``) into the
  orthogonal projector ``I - u_t u_t^T``. With ``vec`` stacking S row by row,
  ``d vec(S_t) / d vec(S_{t-1}) = I_dv (x) (I - u_t u_t^T)``; its singular values are 1 (multiplicity
  ``dv (dk - 1)``) and 0, so the spectral norm is exactly 1 for every t and every ``dk >= 2``
  (Proposition 2). ``u_t`` depends on keys and ``P`` only, never on ``S``, so this is the full
  Jacobian, not a frozen-coefficient approximation; ``tests/fast_state/test_vla.py`` checks it
  with autograd.
* Energy balance: ``||S_t||_F^2 = ||S_{t-1}||_F^2 - ||S_{t-1} u_t||^2 + ||v_t||^2`` and
  ``S_t u_t = v_t``. The state grows only while it holds less than ``||v_t||`` along the direction
  being written and shrinks otherwise, so for bounded values and spread-out directions it settles
  near ``sqrt(dk) * ||v||`` instead of growing with T (Proposition 1, checked numerically). It is
  not a worst-case bound: directions chosen adversarially orthogonal to the state's rows can still
  grow ``||S||_F`` like ``sqrt(t)``.

Cost of this reading: recall of the newest key is ``S_t k_t = S_{t-1}(I - u u^T) k_t + v_t (u.k_t)``,
so it is exact only when ``u_t`` is parallel to ``k_t``; near the capacity ``dk`` the factor
``u_t . k_t`` shrinks and recall degrades, which is the "effective per-head regime" of the abstract.

Fast path: the ``P`` recurrence does not depend on ``S``, so directions are computed first, one
chunk of ``c`` keys at a time with Woodbury (a ``c x c`` Cholesky, whose leading blocks give every
``P_{t-1} k_t`` inside the chunk), and ``S`` then follows the chunkwise delta kernel with keys
``u_t`` and ``beta = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .._validate import check_positive_int, check_tensor
from ..errors import ConfigError, ShapeError
from ._base import (
    check_dims,
    check_kv,
    check_matrix_state,
    check_queries,
    chunked_delta_rule,
    new_matrix_state,
    reject_unknown_gates,
)


@dataclass(frozen=True)
class VLAState:
    """Memory ``S`` ``[B, dv, dk]`` and inverse penalty ``P`` ``[B, dk, dk]`` (symmetric, positive)."""

    S: torch.Tensor
    P: torch.Tensor


def vla_step(
    s: torch.Tensor, p: torch.Tensor, k: torch.Tensor, v: torch.Tensor, forget: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: ``s`` [B, dv, dk], ``p`` [B, dk, dk], ``k`` [B, dk], ``v`` [B, dv] -> (S_t, P_t)."""
    pk = (p @ k[..., None])[..., 0]  # [B, dk]
    # a zero key gives u = 0: no write (and P only forgets), instead of 0/0
    u = pk / pk.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(pk.dtype).tiny)
    s_u = (s @ u[..., None])[..., 0]  # [B, dv]
    s = s + (v - s_u)[..., None] * u[:, None, :]
    denom = forget + (k * pk).sum(-1)  # [B], > 0 because P is positive definite
    p = (p - pk[:, :, None] * pk[:, None, :] / denom[:, None, None]) / forget
    return s, p


class VLA:
    """VLA memory: RLS-chosen unit write directions, delta-rule writes along them.

    ``ridge`` sets the initial penalty ``R_0 = ridge * I`` (small: early keys are written along
    their Gram-Schmidt directions); ``forget`` in (0, 1] is the RLS forgetting factor (1 = none).
    ``chunk_size`` is the delta kernel's chunk and ``penalty_chunk`` the Woodbury block of the
    direction pass (only speed depends on them).

    Example:
        >>> import torch
        >>> mem = VLA(key_dim=8, value_dim=8)
        >>> keys = torch.nn.functional.normalize(torch.randn(1, 4, 8), dim=-1)
        >>> values = torch.randn(1, 4, 8)
        >>> state = mem.update(mem.init_state(1), keys, values)
        >>> mem.read(state, keys).shape
        torch.Size([1, 4, 8])
        >>> bool(mem.state_norm(state)[0] <= values.norm(dim=-1).square().sum().sqrt() + 1e-5)
        True
    """

    def __init__(
        self, key_dim: int, value_dim: int, ridge: float = 1e-3, forget: float = 1.0,
        chunk_size: int = 64, penalty_chunk: int = 64,
    ) -> None:
        check_dims(key_dim, value_dim, chunk_size)
        check_positive_int("penalty_chunk", penalty_chunk)
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge > 0 or math.isinf(ridge):
            raise ConfigError(f"ridge: expected a finite number > 0, got {ridge!r}")
        if isinstance(forget, bool) or not isinstance(forget, (int, float)) or not 0 < forget <= 1:
            raise ConfigError(f"forget: expected a number in (0, 1], got {forget!r}")
        self.key_dim, self.value_dim, self.chunk_size = key_dim, value_dim, chunk_size
        self.ridge, self.forget = float(ridge), float(forget)
        # forgetting weights inside one Woodbury block span forget**c; keep them >= 1e-3 so the
        # c x c Cholesky stays well conditioned (forget = 1 leaves the full chunk)
        span = penalty_chunk if forget == 1 else int(math.log(1e-3) / math.log(forget))
        self.penalty_chunk = max(1, min(penalty_chunk, span))

    def __repr__(self) -> str:
        return (f"VLA(key_dim={self.key_dim}, value_dim={self.value_dim}, ridge={self.ridge}, "
                f"forget={self.forget})")

    def init_state(self, batch: int, device: Any = None, dtype: torch.dtype = torch.float32) -> VLAState:
        """``S = 0`` and ``P = I / ridge``."""
        s = new_matrix_state(batch, self.value_dim, self.key_dim, device, dtype)
        p = torch.eye(self.key_dim, device=device, dtype=dtype).expand(batch, -1, -1) / self.ridge
        return VLAState(S=s, P=p.clone())

    def _state(self, state: object) -> VLAState:
        if not isinstance(state, VLAState):
            raise ConfigError(f"state: expected a VLAState from VLA.init_state, got {type(state).__name__}")
        s = check_matrix_state("state.S", state.S, self.key_dim, self.value_dim)
        p = check_tensor("state.P", state.P, ndim=3, last_dim=self.key_dim)
        if tuple(p.shape) != (s.shape[0], self.key_dim, self.key_dim) or p.dtype != s.dtype:
            raise ShapeError(f"state.P: expected [{s.shape[0]}, {self.key_dim}, {self.key_dim}] in {s.dtype}, "
                             f"got {tuple(p.shape)} in {p.dtype}")
        return state

    def _checked(self, state: Any, keys: Any, values: Any, gates: dict) -> VLAState:
        reject_unknown_gates("VLA (set ridge/forget in __init__)", gates, ())
        state = self._state(state)
        check_kv(keys, values, state.S, self.key_dim, self.value_dim)
        return state

    def write_directions(self, p: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit directions ``u_t`` ``[B, T, dk]`` and the final ``P``, one Woodbury block at a time.

        In a block starting from ``P0 = R0^{-1}``, ``R_{j-1} ~ R0 + sum_{i<j} forget^{-i} k_i k_i^T``
        (dropping the positive factor ``forget^{j-1}``), so with ``G = diag(forget^i) + K P0 K^T = L L^T``
        Woodbury gives ``P_{j-1} k_j ~ P0 k_j - P0 K^T z_j`` where ``z_j = L_{<j}^{-T} L[j, <j]^T``. The
        leading blocks of ``L`` are the Cholesky factors of the leading blocks of ``G``, so all ``z_j``
        come from one triangular solve ``L^T Z = strict_lower(L)^T``.
        """
        directions = []
        for start in range(0, keys.shape[1], self.penalty_chunk):
            k = keys[:, start:start + self.penalty_chunk]  # [B, c, dk]
            c = k.shape[1]
            kp = k @ p  # [B, c, dk]; rows are (P0 k_j)^T because P0 is symmetric
            weights = self.forget ** torch.arange(1, c + 1, device=k.device, dtype=k.dtype)  # [c]
            g = kp @ k.transpose(1, 2) + torch.diag_embed(weights).expand(k.shape[0], -1, -1)  # [B, c, c]
            chol = torch.linalg.cholesky(g)
            z = torch.linalg.solve_triangular(chol.transpose(1, 2), chol.tril(-1).transpose(1, 2), upper=True)
            w = kp - z.transpose(1, 2) @ kp  # [B, c, dk], row j parallel to (P_{j-1} k_j)^T
            directions.append(F.normalize(w, dim=-1, eps=torch.finfo(w.dtype).tiny))
            p = (p - kp.transpose(1, 2) @ torch.cholesky_solve(kp, chol)) / self.forget ** c
            p = 0.5 * (p + p.transpose(1, 2))  # symmetric in exact arithmetic; keep it so
        return torch.cat(directions, dim=1), p

    def update(self, state: VLAState, keys: torch.Tensor, values: torch.Tensor, **gates: Any) -> VLAState:
        """State after all T tokens: directions by blocked Sherman-Morrison/Woodbury, then delta kernel."""
        state = self._checked(state, keys, values, gates)
        u, p = self.write_directions(state.P, keys)
        ones = torch.ones(keys.shape[:2], dtype=keys.dtype, device=keys.device)
        return VLAState(S=chunked_delta_rule(state.S, u, values, ones, None, self.chunk_size), P=p)

    def recurrent_update(self, state: VLAState, keys: torch.Tensor, values: torch.Tensor, **gates: Any) -> VLAState:
        """Per-token form: :func:`vla_step` for every token."""
        state = self._checked(state, keys, values, gates)
        s, p = state.S, state.P
        for t in range(keys.shape[1]):
            s, p = vla_step(s, p, keys[:, t], values[:, t], self.forget)
        return VLAState(S=s, P=p)

    def reference_update(self, state: VLAState, keys: torch.Tensor, values: torch.Tensor, **gates: Any) -> VLAState:
        """Plain per-token, per-element Python loops in float64 (the ground truth for the tests)."""
        state = self._checked(state, keys, values, gates)
        dk, dv, out_s, out_p = self.key_dim, self.value_dim, [], []
        for b in range(keys.shape[0]):
            s = [[float(state.S[b, i, j]) for j in range(dk)] for i in range(dv)]
            p = [[float(state.P[b, i, j]) for j in range(dk)] for i in range(dk)]
            for t in range(keys.shape[1]):
                k = [float(x) for x in keys[b, t]]
                pk = [sum(p[i][j] * k[j] for j in range(dk)) for i in range(dk)]
                norm = math.sqrt(sum(x * x for x in pk))
                u = [x / norm for x in pk] if norm > 0 else [0.0] * dk
                for i in range(dv):
                    err = float(values[b, t, i]) - sum(s[i][j] * u[j] for j in range(dk))
                    s[i] = [s[i][j] + err * u[j] for j in range(dk)]
                denom = self.forget + sum(k[j] * pk[j] for j in range(dk))
                p = [[(p[i][j] - pk[i] * pk[j] / denom) / self.forget for j in range(dk)] for i in range(dk)]
            out_s.append(s)
            out_p.append(p)
        return VLAState(S=torch.tensor(out_s, dtype=torch.float64), P=torch.tensor(out_p, dtype=torch.float64))

    def read(self, state: VLAState, queries: torch.Tensor) -> torch.Tensor:
        """``o = S q``: ``[B, Q, dk] -> [B, Q, dv]``."""
        s = self._state(state).S
        return check_queries(queries, s, self.key_dim) @ s.transpose(1, 2)

    def state_norm(self, state: VLAState) -> torch.Tensor:
        """Frobenius norm of S per batch row, ``[B]``."""
        return self._state(state).S.flatten(1).norm(dim=1)
