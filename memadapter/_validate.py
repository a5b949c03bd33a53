"""Input checks shared by the memory core. Each raises a typed error naming the argument."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .errors import DTypeError, EmptyInputError, NonFiniteError, ShapeError


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: Optional[int | Sequence[int]] = None,
    last_dim: Optional[int] = None,
    floating: bool = True,
    finite: bool = True,
    nonempty: bool = True,
) -> torch.Tensor:
    """Validate ``x`` and return it. Raises DTypeError, ShapeError, EmptyInputError, NonFiniteError."""
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise DTypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            raise ShapeError(f"{name}: expected {' or '.join(map(str, allowed))} dims, got shape {tuple(x.shape)}")
    if nonempty and x.numel() == 0:
        raise EmptyInputError(f"{name}: tensor is empty (shape {tuple(x.shape)})")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ShapeError(f"{name}: expected last dim {last_dim}, got shape {tuple(x.shape)}")
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name}: contains NaN or infinity")
    return x


def check_positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    """Validate a count. Raises DTypeError for non-ints, ValueError subclasses for range."""
    from .errors import CapacityError

    if isinstance(value, bool) or not isinstance(value, int):
        raise DTypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise CapacityError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value
