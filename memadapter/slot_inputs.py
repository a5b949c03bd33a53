"""Input checks of the slot memory: constructor numbers, per-candidate side inputs, texts, and the
whole argument list of ``SlotMemory.write`` turned into one validated ``_Candidates``.

Every check raises a typed error from ``memadapter.errors`` naming the argument, and runs before
the memory changes, so a bad call leaves the state as it was.

Example:
    >>> import torch
    >>> from memadapter.slot_inputs import normalize_keys
    >>> normalize_keys(torch.tensor([[3.0, 4.0]]), "keys").tolist()
    [[0.6000000238418579, 0.800000011920929]]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch

from ._validate import check_tensor
from .errors import ConfigError, DTypeError, NonFiniteError, ShapeError
from .slot_types import NO_EVENT, EventType, _Candidates

if TYPE_CHECKING:
    from .slots import SlotMemory


def _check_unit_interval(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{name}: must lie in [{low}, {high}], got {value}")
    return float(value)


def _check_finite_number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def normalize_keys(x: torch.Tensor, name: str) -> torch.Tensor:
    """L2-normalise the last dim; a zero vector has no direction and is rejected."""
    norms = x.norm(dim=-1, keepdim=True)
    if bool((norms <= 1e-12).any()):
        raise NonFiniteError(f"{name}: a vector has zero norm and cannot be normalised")
    return x / norms


def _check_side(name: str, x: Any, shape: tuple, kind: str, device: torch.device) -> torch.Tensor:
    """Validate a per-candidate input of ``shape``; kind is 'float', 'long' or 'bool'."""
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    is_int = not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
    ok = {"float": x.is_floating_point(), "long": is_int, "bool": x.dtype == torch.bool}[kind]
    if not ok:
        raise DTypeError(f"{name}: expected a {kind} tensor, got dtype {x.dtype}")
    if len(shape) >= 2 and x.dim() == len(shape) - 1 and shape[1] == 1:
        x = x.unsqueeze(1)  # keys came as [B, dk]: accept [B] / [B, 2] side inputs too
    if tuple(x.shape) != tuple(shape):
        raise ShapeError(f"{name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")
    if kind == "float" and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name}: contains NaN or infinity")
    return x.to(device)


def _check_range(name: str, x: torch.Tensor, low: float, high: float) -> None:
    if x.numel() and (bool((x < low).any()) or bool((x > high).any())):
        raise ConfigError(f"{name}: values must lie in [{low}, {high}], got min {x.min().item()} max {x.max().item()}")


def _check_texts(name: str, texts: Any, batch: int, n: int, two_d: bool) -> Optional[list]:
    """texts: B lists of N (str | None); with [B, dk] keys a flat list of B entries is accepted."""
    if texts is None:
        return None
    if not isinstance(texts, (list, tuple)) or len(texts) != batch:
        raise ShapeError(f"{name}: expected a list of {batch} rows")
    rows = [[row] if two_d and not isinstance(row, (list, tuple)) else row for row in texts]
    for row in rows:
        if not isinstance(row, (list, tuple)) or len(row) != n:
            raise ShapeError(f"{name}: every row must hold {n} entries")
        if any(t is not None and not isinstance(t, str) for t in row):
            raise DTypeError(f"{name}: entries must be str or None")
    return [list(row) for row in rows]


def prepare_candidates(mem: SlotMemory, keys, values, p_write=None, event=None, importance=None, protect=None,
                       chunk_id=None, span=None, key_text=None, value_text=None, mask=None) -> _Candidates:
    """``SlotMemory.write``'s arguments (see there) checked against ``mem``'s sizes, defaults filled,
    moved to its device and dtype: [B, N, ...], N = 1 for [B, dk] keys."""
    B, dev = mem.batch_size, mem.device
    keys = check_tensor("keys", keys, ndim=(2, 3), last_dim=mem.key_dim)
    values = check_tensor("values", values, ndim=keys.dim(), last_dim=mem.value_dim)
    if keys.shape[0] != B:
        raise ShapeError(f"keys: expected batch size {B}, got shape {tuple(keys.shape)}")
    if values.shape[:-1] != keys.shape[:-1]:
        raise ShapeError(f"values: shape {tuple(values.shape)} does not match keys {tuple(keys.shape)}")
    two_d = keys.dim() == 2
    if two_d:
        keys, values = keys.unsqueeze(1), values.unsqueeze(1)  # [B, 1, dk], [B, 1, dv]
    N = keys.shape[1]
    keys = normalize_keys(keys.to(dev, mem.dtype), "keys")
    side = {"p_write": (p_write, (B, N), "float", 1.0), "event": (event, (B, N), "long", NO_EVENT),
            "importance": (importance, (B, N), "float", 0.0), "protect": (protect, (B, N), "bool", False),
            "chunk_id": (chunk_id, (B, N), "long", -1), "span": (span, (B, N, 2), "long", -1),
            "mask": (mask, (B, N), "bool", True)}
    out = {}
    for name, (x, shape, kind, default) in side.items():
        if x is None:
            dtype = {"float": mem.dtype, "long": torch.long, "bool": torch.bool}[kind]
            out[name] = torch.full(shape, default, dtype=dtype, device=dev)
        else:
            out[name] = _check_side(name, x, shape, kind, dev)
    _check_range("p_write", out["p_write"], 0.0, 1.0)
    _check_range("importance", out["importance"], 0.0, 1.0)
    _check_range("event", out["event"], NO_EVENT, int(EventType.IRRELEVANT))
    out["p_write"] = out["p_write"].to(mem.dtype)
    out["importance"] = out["importance"].to(mem.dtype)
    out["event"], out["chunk_id"], out["span"] = (out[k].long() for k in ("event", "chunk_id", "span"))
    return _Candidates(keys=keys, values=values.to(dev, mem.dtype),
                       key_text=_check_texts("key_text", key_text, B, N, two_d),
                       value_text=_check_texts("value_text", value_text, B, N, two_d), **out)
