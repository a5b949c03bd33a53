"""Input checks shared by the memory core. Each raises a typed error naming the argument."""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import torch

from .errors import CapacityError, ConfigError, DTypeError, EmptyInputError, NonFiniteError, ShapeError


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
    if isinstance(value, bool) or not isinstance(value, int):
        raise DTypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise CapacityError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


# Largest value each size may take. Far above any real use (a 64K-slot memory, 64K-dim keys),
# far below what would ask the allocator for terabytes: a typo such as num_slots=1e8 or
# top_k=10**10 is refused by name instead of failing (or swapping) inside torch.
MAX_SIZES = {
    "num_slots": 1 << 20,
    "key_dim": 1 << 16,
    "value_dim": 1 << 16,
    "aux_dim": 1 << 10,
    "dim": 1 << 16,  # ChunkIndex summary size = the backbone's hidden size
    "hidden_size": 1 << 16,
    "batch_size": 1 << 16,
    "chunk_tokens": 1 << 20,
    "top_k": 1 << 16,
    "capacity": 1 << 24,  # ChunkIndex chunks
    "grounding_hidden_size": 1 << 16,
    "grounding_context_size": 1 << 16,
    "num_event_types": 64,
    "prefix_tokens_per_slot": 1 << 12,
    "value_tokens": 1 << 12,
    "cross_attn_heads": 1 << 10,
    "backbone_num_layers": 1 << 12,
    "name_chunks": 1 << 16,
    "answer_sentences": 1 << 12,
    "fallback_chunks": 1 << 16,
}
# A new allocation may take at most this share of the memory still available.
ALLOCATION_SHARE = 0.5


def check_size(name: str, value: object, *, allow_zero: bool = False, limit: Optional[str] = None) -> int:
    """A count within ``MAX_SIZES[limit or name]``. Raises DTypeError or CapacityError naming ``name``."""
    value = check_positive_int(name, value, allow_zero=allow_zero)
    bound = MAX_SIZES[limit or name]
    if value > bound:
        raise CapacityError(f"{name}: {value} exceeds the maximum {bound} (memadapter._validate.MAX_SIZES)")
    return value


def available_memory_bytes(device: Optional[torch.device] = None) -> Optional[int]:
    """Bytes the allocator can still hand out on ``device`` (host RAM for the CPU); None if unknown."""
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    if device is not None and device.type not in ("cpu", "cuda"):
        return None  # mps, meta, ...: no portable query
    try:  # Linux: MemAvailable counts reclaimable caches, MemFree does not
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return int(os.sysconf(pages)) * int(os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            continue
    return None


def check_allocation(name: str, nbytes: int, device: Optional[torch.device] = None) -> None:
    """Refuse to allocate ``nbytes`` when that exceeds ALLOCATION_SHARE of the available memory.

    ``name`` names the sizes that set ``nbytes`` (e.g. "batch_size x num_slots"); unknown
    availability lets the allocation through (MAX_SIZES still bounds each size)."""
    avail = available_memory_bytes(device)
    if avail is not None and nbytes > ALLOCATION_SHARE * avail:
        raise CapacityError(f"{name}: would allocate {nbytes / 2**30:.2f} GiB ({nbytes} bytes), more than "
                            f"{ALLOCATION_SHARE:.0%} of the {avail / 2**30:.2f} GiB available")


def check_real(name: str, value: object, *, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite real number (not a bool) in [low, high]: DTypeError for another type, NonFiniteError
    for NaN / inf, ConfigError out of range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DTypeError(f"{name}: expected a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise NonFiniteError(f"{name}: must be finite, got {value}")
    if not low <= value <= high:
        raise ConfigError(f"{name}: must lie in [{low}, {high}], got {value}")
    return float(value)


def check_choices(name: str, value: object, choices: Sequence[str]) -> list[str]:
    """A comma-separated str or a sequence of names -> list of distinct names from ``choices``;
    ConfigError naming ``name`` when it is empty, names an unknown choice or repeats one.

        >>> check_choices("methods", "bm25, dense", ("bm25", "dense", "tail"))
        ['bm25', 'dense']
    """
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise DTypeError(f"{name}: expected a comma list or a sequence of names, got {type(value).__name__}")
    names = [str(v).strip() for v in items if str(v).strip()]
    if not names:
        raise ConfigError(f"{name}: expected at least one of {list(choices)}, got none")
    bad = [n for n in names if n not in choices]
    if bad:
        raise ConfigError(f"{name}: unknown name(s) {bad}; expected names from {list(choices)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{name}: {names} names one twice")
    return names


def text_list(name: str, texts: Any, n: int) -> list[Optional[str]]:
    """Normalise ``str | list[str | None] | None`` to a list of n entries."""
    if texts is None:
        return [None] * n
    if isinstance(texts, str):
        if n != 1:
            raise ShapeError(f"{name}: a single string was given for {n} rows; pass a list of {n}")
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise DTypeError(f"{name}: expected str, list of str or None, got {type(texts).__name__}")
    if len(texts) != n:
        raise ShapeError(f"{name}: expected {n} entries (one per row), got {len(texts)}")
    for i, t in enumerate(texts):
        if t is not None and not isinstance(t, str):
            raise DTypeError(f"{name}[{i}]: expected str or None, got {type(t).__name__}")
    return list(texts)
