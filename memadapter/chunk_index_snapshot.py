"""Checking a :class:`~memadapter.chunk_index.ChunkIndex` snapshot before it is restored.

``ChunkIndex.snapshot()`` copies the whole state; ``restore`` installs one only after
:func:`check_snapshot` has validated every part of it (keys, dim, vectors, spans, texts and their
BM25 tokens, the term index), so a malformed snapshot raises a typed error naming the part and
changes nothing. A memory restoring several indexes checks them all first (all or nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

from ._validate import check_positive_int, check_tensor, text_list
from .bm25 import TermIndex, tokenize
from .errors import CapacityError, ConfigError, DTypeError, ShapeError

if TYPE_CHECKING:
    from .chunk_index import ChunkIndex


def check_snapshot(index: "ChunkIndex", snap: Any, name: str = "snap") -> tuple:
    """Validate a ``snapshot()`` of ``index`` (errors name ``name``) and return the arguments of its
    ``_reset``; changes nothing, so a caller restoring several indexes can check them all first."""
    if not isinstance(snap, dict):
        raise DTypeError(f"{name}: expected a dict from snapshot(), got {type(snap).__name__}")
    missing = {"dim", "vectors", "spans", "texts", "next_start"} - set(snap)
    if missing:
        raise ConfigError(f"{name}: missing keys {sorted(missing)}")
    if snap["dim"] != index.dim:
        raise ShapeError(f"{name}: dim {snap['dim']!r} does not match the index dim {index.dim}")
    vecs = check_tensor(f"{name}['vectors']", snap["vectors"], ndim=2, last_dim=index.dim, nonempty=False)
    n = vecs.shape[0]
    if index.capacity is not None and n > index.capacity:
        raise CapacityError(f"{name}: {n} chunks exceed capacity {index.capacity}")
    spans = index._check_spans(snap["spans"], n, f"{name}['spans']") if n else torch.empty(0, 2, dtype=torch.long)
    texts = text_list(f"{name}['texts']", snap["texts"], n)
    n_text = sum(t is not None for t in texts)
    tokens = snap.get("tokens")
    if tokens is None:
        tokens = tokenize([t for t in texts if t is not None])
    elif not isinstance(tokens, (list, tuple)) or len(tokens) != n_text \
            or not all(isinstance(d, (list, tuple)) and all(isinstance(w, str) for w in d) for d in tokens):
        raise ShapeError(f"{name}['tokens']: expected a list of {n_text} lists of str")
    next_start = check_positive_int(f"{name}['next_start']", snap["next_start"], allow_zero=True)
    terms = _restore_terms(index, snap, n, n_text, name)
    return n, vecs, spans, texts, list(tokens), next_start, terms


def _restore_terms(index: "ChunkIndex", snap: dict, n: int, n_text: int,
                   name: str) -> Optional[tuple[TermIndex, list[int]]]:
    """Rebuild the term index of a snapshot (None for a text or dense-only snapshot)."""
    if snap.get("terms") is None:
        return None
    if n_text:
        raise ConfigError(f"{name}: holds both texts and terms; one index holds one kind")
    if not isinstance(snap["terms"], dict):
        raise DTypeError(f"{name}['terms']: expected the dict of arrays from snapshot()")
    terms = TermIndex.from_state(snap["terms"], index._k1, index._b)
    ids = snap.get("term_chunks")
    if not isinstance(ids, (list, tuple)) or len(ids) != len(terms) \
            or any(isinstance(i, bool) or not isinstance(i, int) for i in ids) \
            or list(ids) != sorted(set(ids)) or (ids and not 0 <= ids[0] <= ids[-1] < n):
        raise ShapeError(f"{name}['term_chunks']: expected {len(terms)} increasing chunk ids in [0, {n})")
    return terms, list(ids)
