"""Shared pieces of the fast-state models: the protocol, input checks and the chunkwise delta kernel.

Conventions used by every model in this package:

* the matrix state ``S`` is ``[B, dv, dk]`` and a read is ``o = S q``;
* ``update`` never modifies its ``state`` argument in place, so a failed update (bad input raises
  before any arithmetic) leaves the caller's state exactly as it was;
* the chunkwise kernel here serves DeltaNet, gated DeltaNet and VLA (all three are delta rules
  ``S_t = a_t S_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T`` with different ``a``, ``b`` and keys).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .._validate import check_positive_int, check_tensor
from ..errors import ConfigError, DTypeError, ShapeError


@runtime_checkable
class FastStateMemory(Protocol):
    """What the benches code against: LinearAttention, DeltaNet, GatedDeltaNet and VLA all fit it.

    Example:
        >>> import torch
        >>> from memadapter.fast_state import DeltaNet
        >>> model: FastStateMemory = DeltaNet(key_dim=8, value_dim=4)
        >>> state = model.init_state(batch=2)
        >>> state = model.update(state, torch.randn(2, 5, 8), torch.randn(2, 5, 4))
        >>> model.read(state, torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 4])
    """

    key_dim: int
    value_dim: int

    def init_state(self, batch: int, device: Any = None, dtype: torch.dtype = torch.float32) -> Any: ...

    def update(self, state: Any, keys: torch.Tensor, values: torch.Tensor, **gates: torch.Tensor) -> Any: ...

    def read(self, state: Any, queries: torch.Tensor) -> torch.Tensor: ...

    def state_norm(self, state: Any) -> torch.Tensor: ...


def check_dims(key_dim: int, value_dim: int, chunk_size: int) -> None:
    """Validate the constructor arguments shared by every model."""
    check_positive_int("key_dim", key_dim)
    check_positive_int("value_dim", value_dim)
    check_positive_int("chunk_size", chunk_size)


def new_matrix_state(batch: int, value_dim: int, key_dim: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """A zero ``[B, dv, dk]`` state after checking ``batch`` and ``dtype``."""
    check_positive_int("batch", batch)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DTypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    return torch.zeros(batch, value_dim, key_dim, device=device, dtype=dtype)


def check_matrix_state(name: str, state: object, key_dim: int, value_dim: int) -> torch.Tensor:
    """``state`` must be a finite ``[B, value_dim, key_dim]`` tensor."""
    state = check_tensor(name, state, ndim=3, last_dim=key_dim)
    if state.shape[1] != value_dim:
        raise ShapeError(f"{name}: expected shape [B, {value_dim}, {key_dim}], got {tuple(state.shape)}")
    return state


def check_kv(keys: object, values: object, state: torch.Tensor, key_dim: int, value_dim: int) -> None:
    """Keys ``[B, T, dk]`` and values ``[B, T, dv]`` that match each other and the state."""
    keys = check_tensor("keys", keys, ndim=3, last_dim=key_dim)
    values = check_tensor("values", values, ndim=3, last_dim=value_dim)
    if values.shape[:2] != keys.shape[:2]:
        raise ShapeError(f"values: expected [B, T] = {tuple(keys.shape[:2])} like keys, got {tuple(values.shape)}")
    if keys.shape[0] != state.shape[0]:
        raise ShapeError(f"keys: batch {keys.shape[0]} does not match the state's batch {state.shape[0]}")
    for name, x in (("keys", keys), ("values", values)):
        if x.dtype != state.dtype:
            raise DTypeError(f"{name}: dtype {x.dtype} differs from the state's dtype {state.dtype}")


def check_queries(queries: object, state: torch.Tensor, key_dim: int) -> torch.Tensor:
    """Queries ``[B, Q, dk]`` in the state's batch and dtype."""
    queries = check_tensor("queries", queries, ndim=3, last_dim=key_dim)
    if queries.shape[0] != state.shape[0]:
        raise ShapeError(f"queries: batch {queries.shape[0]} does not match the state's batch {state.shape[0]}")
    if queries.dtype != state.dtype:
        raise DTypeError(f"queries: dtype {queries.dtype} differs from the state's dtype {state.dtype}")
    return queries


def check_gate(
    name: str, gate: Optional[object], keys: torch.Tensor, *, low: float, low_open: bool
) -> torch.Tensor:
    """A ``[B, T]`` gate with values in ``[low, 1]`` (``(low, 1]`` when ``low_open``); None -> ones."""
    if gate is None:
        return torch.ones(keys.shape[:2], dtype=keys.dtype, device=keys.device)
    gate = check_tensor(name, gate, ndim=2)
    if tuple(gate.shape) != tuple(keys.shape[:2]):
        raise ShapeError(f"{name}: expected shape [B, T] = {tuple(keys.shape[:2])}, got {tuple(gate.shape)}")
    if gate.dtype != keys.dtype:
        raise DTypeError(f"{name}: dtype {gate.dtype} differs from keys' dtype {keys.dtype}")
    too_low = bool((gate <= low).any()) if low_open else bool((gate < low).any())
    if too_low or bool((gate > 1).any()):
        interval = f"({low}, 1]" if low_open else f"[{low}, 1]"
        raise ConfigError(f"{name}: values must lie in {interval}, got min {gate.min().item():.4g}, "
                          f"max {gate.max().item():.4g}")
    return gate


def reject_unknown_gates(model: str, gates: dict, allowed: tuple[str, ...]) -> None:
    """Typos in gate names must not be silently ignored."""
    unknown = sorted(set(gates) - set(allowed))
    if unknown:
        raise ConfigError(f"{model}: unknown gate argument(s) {unknown}; accepted: {list(allowed)}")


def chunked_delta_rule(
    state: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    beta: torch.Tensor,
    log_alpha: Optional[torch.Tensor],
    chunk_size: int,
) -> torch.Tensor:
    """State after ``S_t = a_t S_{t-1}(I - b_t k_t k_t^T) + b_t v_t k_t^T`` over all T tokens.

    Chunkwise WY/UT form (Yang et al., DeltaNet and Gated DeltaNet). Inside a chunk with cumulative
    decay ``g_j = prod_{i<=j} a_i`` the state is ``S_j = g_j S_0 + sum_{i<=j} (g_j/g_i) u_i k_i^T`` with
    pseudo-values ``u = T diag(b) V - T diag(b g) K S_0^T``, ``T = (I + A)^{-1}`` and
    ``A_ji = b_j (g_j/g_i) k_j.k_i`` for i < j. ``T`` needs no state, so it is solved for every chunk
    at once; only two matmuls per chunk run in the sequential loop. Padding tokens have k = v = b = 0
    and a = 1, which makes them the identity step, so T need not divide by the chunk size.
    """
    batch, length, key_dim = keys.shape
    value_dim = values.shape[-1]
    pad = (-length) % chunk_size
    gated = log_alpha is not None
    if log_alpha is None:
        log_alpha = torch.zeros_like(beta)
    if pad:
        keys, values = F.pad(keys, (0, 0, 0, pad)), F.pad(values, (0, 0, 0, pad))
        beta, log_alpha = F.pad(beta, (0, pad)), F.pad(log_alpha, (0, pad))
    n_chunks = (length + pad) // chunk_size
    k = keys.reshape(batch, n_chunks, chunk_size, key_dim)  # [B, N, C, dk]
    v = values.reshape(batch, n_chunks, chunk_size, value_dim)  # [B, N, C, dv]
    b = beta.reshape(batch, n_chunks, chunk_size)  # [B, N, C]
    g = log_alpha.reshape(batch, n_chunks, chunk_size).cumsum(-1)  # [B, N, C] log of cumulative decay
    strict = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=keys.device).tril(-1)
    if gated:
        # mask before exp: above the diagonal g_j - g_i > 0 and could overflow
        decay = (g[..., :, None] - g[..., None, :]).masked_fill(~strict, float("-inf")).exp()  # [B, N, C, C]
        b_g, k_tail, total = b * g.exp(), (g[..., -1:] - g).exp()[..., None] * k, g[..., -1].exp()
    else:  # DeltaNet / VLA: all decays are 1, skip the exps (a third of the kernel's time)
        decay, b_g, k_tail, total = strict.to(k.dtype), b, k, None
    a_mat = b[..., :, None] * decay * (k @ k.transpose(-1, -2))  # [B, N, C, C], strictly lower
    rhs = torch.cat([b_g[..., None] * k, b[..., None] * v], dim=-1)  # [B, N, C, dk + dv]
    sol = torch.linalg.solve_triangular(a_mat, rhs, upper=False, unitriangular=True)
    w, u_free = sol.split([key_dim, value_dim], dim=-1)  # [B, N, C, dk], [B, N, C, dv]
    # k_tail: keys weighted by g_C / g_i; total: g_C per chunk [B, N]
    s = state
    for n in range(n_chunks):
        u = u_free[:, n] - w[:, n] @ s.transpose(-1, -2)  # [B, C, dv]
        carried = s if total is None else total[:, n, None, None] * s
        s = carried + u.transpose(-1, -2) @ k_tail[:, n]  # [B, dv, dk]
    return s


def recurrent_delta_rule(
    state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, beta: torch.Tensor, alpha: Optional[torch.Tensor]
) -> torch.Tensor:
    """The same recurrence one token at a time (vectorized over batch and dims only)."""
    s = state
    for t in range(keys.shape[1]):
        k, v, b = keys[:, t], values[:, t], beta[:, t, None]  # [B, dk], [B, dv], [B, 1]
        if alpha is not None:
            s = alpha[:, t, None, None] * s
        pred = (s @ k[..., None])[..., 0]  # [B, dv]
        s = s + (b * (v - pred))[..., None] * k[:, None, :]
    return s


def reference_delta_rule(
    state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, beta: torch.Tensor, alpha: Optional[torch.Tensor]
) -> torch.Tensor:
    """Plain per-token, per-element Python loops in float64; the ground truth for the tests."""
    batch, length, key_dim = keys.shape
    value_dim = values.shape[-1]
    out = []
    for bi in range(batch):
        s = [[float(state[bi, i, j]) for j in range(key_dim)] for i in range(value_dim)]
        for t in range(length):
            k = [float(x) for x in keys[bi, t]]
            a = 1.0 if alpha is None else float(alpha[bi, t])
            b = float(beta[bi, t])
            for i in range(value_dim):
                row = [a * x for x in s[i]]
                pred = sum(row[j] * k[j] for j in range(key_dim))
                err = b * (float(values[bi, t, i]) - pred)
                s[i] = [row[j] + err * k[j] for j in range(key_dim)]
        out.append(s)
    return torch.tensor(out, dtype=torch.float64)


class MatrixStateMemory:
    """Construction, ``init_state``, ``read`` and ``state_norm`` for models whose state is a bare ``S``."""

    def __init__(self, key_dim: int, value_dim: int, chunk_size: int = 64) -> None:
        check_dims(key_dim, value_dim, chunk_size)
        self.key_dim, self.value_dim, self.chunk_size = key_dim, value_dim, chunk_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_dim={self.key_dim}, value_dim={self.value_dim})"

    def init_state(self, batch: int, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Zero state ``[B, dv, dk]``."""
        return new_matrix_state(batch, self.value_dim, self.key_dim, device, dtype)

    def _state(self, state: object) -> torch.Tensor:
        return check_matrix_state("state", state, self.key_dim, self.value_dim)

    def read(self, state: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``o = S q`` for every query: ``[B, Q, dk] -> [B, Q, dv]``."""
        state = self._state(state)
        queries = check_queries(queries, state, self.key_dim)
        return queries @ state.transpose(1, 2)

    def state_norm(self, state: torch.Tensor) -> torch.Tensor:
        """Frobenius norm of S per batch row, ``[B]``."""
        return self._state(state).flatten(1).norm(dim=1)
