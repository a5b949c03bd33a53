"""The user-facing memory of a batch of requests: slots + chunk indexes + the text they came from.

``RequestMemory`` bundles one ``SlotMemory`` (batch B: row b is request b) with B ``ChunkIndex``
objects, the token offset each request's stream has reached, and an ``encode`` callable supplied
by the model that turns text into key or value vectors. That callable is what lets a user edit
memory in words: ``memory.write("Alice's city", "Paris")``, ``memory.forget("Alice")``.

Rows are independent requests: every edit names the rows it touches, and nothing reads across.
This module is memory core: it imports no Hugging Face code (the encoder is injected).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch

from ._validate import check_real, check_tensor
from .chunk_index import ChunkIndex
from .errors import CapacityError, ConfigError, DTypeError, EmptyInputError, ShapeError
from .slots import EventType, SlotMemory, WriteResult, normalize_keys

# encode(texts, kind) -> [N, key_dim] for kind "key", [N, value_dim] for kind "value".
Encoder = Callable[[list[str], str], torch.Tensor]
Rows = Union[None, int, Sequence[int]]

TABLE_COLUMNS = ("slot", "key_text", "value_text", "version", "confidence", "span", "chunk_id", "protected",
                 "retracted")


class RequestMemory:
    """Per-request slot memory plus sparse chunk index, editable in text.

    Example:
        >>> import torch
        >>> from memadapter.slots import SlotMemory
        >>> from memadapter.chunk_index import ChunkIndex
        >>> enc = lambda texts, kind: torch.stack([torch.tensor([float(len(t)), 1.0, 0.0, 0.0]) for t in texts])
        >>> mem = RequestMemory(SlotMemory(4, 4, 4), [ChunkIndex(8)], enc)
        >>> _ = mem.write("Alice's city", "Paris")
        >>> mem.table()[0]["value_text"], mem.forget("alice")
        ('Paris', 1)
    """

    def __init__(self, slots: SlotMemory, indexes: Sequence[ChunkIndex], encode: Optional[Encoder] = None):
        if not isinstance(slots, SlotMemory):
            raise DTypeError(f"slots: expected a SlotMemory, got {type(slots).__name__}")
        indexes = list(indexes)
        if len(indexes) != slots.batch_size:
            raise ShapeError(f"indexes: expected {slots.batch_size} ChunkIndex objects (one per row), got {len(indexes)}")
        if not all(isinstance(i, ChunkIndex) for i in indexes):
            raise DTypeError("indexes: every entry must be a ChunkIndex")
        if len({id(i) for i in indexes}) != len(indexes):
            raise ShapeError("indexes: rows must not share a ChunkIndex (requests are isolated)")
        if encode is not None and not callable(encode):
            raise DTypeError(f"encode: expected a callable (texts, kind) -> tensor or None, got {type(encode).__name__}")
        self.slots = slots
        self.indexes = indexes
        self.encode = encode
        self.tokens_seen = [0] * slots.batch_size  # stream offset per row: spans are absolute
        # Fingerprint of the adapter whose new_memory() made it (None: built by hand); the model
        # refuses a memory another adapter made.
        self.adapter_id: Optional[str] = None
        # The read path's request-local cache (modeling/read_candidates.py): what a model found in
        # chunk i of row b, keyed by (b, i, chunk text), so appends, edits and restore() leave every
        # entry true; read_cache_owner names the model state it was filled by (the reader empties it
        # for any other).
        self.read_cache: dict[tuple[int, int, str], Any] = {}
        self.read_cache_owner: Any = None

    @property
    def batch_size(self) -> int:
        return self.slots.batch_size

    def _rows(self, rows: Rows) -> list[int]:
        if rows is None:
            return list(range(self.batch_size))
        items = [rows] if isinstance(rows, int) and not isinstance(rows, bool) else rows
        if not isinstance(items, (list, tuple)):
            raise DTypeError(f"row: expected an int, a list of ints or None, got {type(rows).__name__}")
        for r in items:
            if isinstance(r, bool) or not isinstance(r, int):
                raise DTypeError(f"row: expected ints, got {type(r).__name__}")
            if not 0 <= r < self.batch_size:
                raise CapacityError(f"row: {r} outside [0, {self.batch_size})")
        if not items:  # an edit of no row would silently do nothing
            raise EmptyInputError("row: an empty list names no row; pass None for every row")
        return list(items)

    def _row(self, row: object) -> int:
        """One row index (table and pretty show one request)."""
        if isinstance(row, bool) or not isinstance(row, int):
            raise DTypeError(f"row: expected an int, got {type(row).__name__}")
        return self._rows(row)[0]

    def _encode(self, texts: list[str], kind: str) -> torch.Tensor:
        """[N, key_dim] or [N, value_dim]; the encoder's output is checked like any other input."""
        if self.encode is None:
            raise DTypeError("memory: no encoder attached; create it with model.new_memory() to edit in text")
        dim = self.slots.key_dim if kind == "key" else self.slots.value_dim
        out = check_tensor(f"encode (the {kind} encoder's output)", self.encode(texts, kind), ndim=(1, 2), last_dim=dim)
        out = out.reshape(-1, dim)  # [dim] -> [1, dim]
        if out.shape[0] != len(texts):
            raise ShapeError(f"encode: expected {len(texts)} {kind} vectors, got shape {tuple(out.shape)}")
        return out

    def _check_key(self, key: object) -> torch.Tensor:
        """An explicit key [dk] or [1, dk]: finite, non-zero -> [dk]."""
        key = check_tensor("key", key, ndim=(1, 2), last_dim=self.slots.key_dim)
        if key.dim() == 2 and key.shape[0] != 1:
            raise ShapeError(f"key: expected one key [{self.slots.key_dim}] (or [1, {self.slots.key_dim}]), "
                             f"got shape {tuple(key.shape)}")
        return normalize_keys(key.reshape(-1).float(), "key")

    def write(self, key_text: str, value_text: str, *, row: Rows = 0, protect: bool = False,
              importance: float = 1.0) -> WriteResult:
        """Write one fact, explicitly, into the given row(s) as a newer version of any matching key.

        An explicit write is an UPDATE: it replaces a matched slot even if protected, otherwise it
        takes a free (or the least retained) slot. Returns the SlotMemory's WriteResult [B, 1].
        """
        for name, text in (("key_text", key_text), ("value_text", value_text)):
            if not isinstance(text, str):
                raise DTypeError(f"{name}: expected a str, got {type(text).__name__}")
            if not text.strip():
                raise EmptyInputError(f"{name}: empty text")
        if not isinstance(protect, bool):
            raise DTypeError(f"protect: expected a bool, got {type(protect).__name__}")
        importance = check_real("importance", importance, low=0.0, high=1.0)
        rows = self._rows(row)
        B = self.batch_size
        key = self._encode([key_text], "key").reshape(1, -1).expand(B, -1)  # [B, dk]
        value = self._encode([value_text], "value").reshape(1, -1).expand(B, -1)  # [B, dv]
        mask = torch.zeros(B, 1, dtype=torch.bool)
        mask[rows] = True
        return self.slots.write(
            key, value, torch.ones(B, 1), event=torch.full((B, 1), int(EventType.UPDATE)),
            importance=torch.full((B, 1), float(importance)), protect=torch.full((B, 1), protect),
            key_text=[[key_text]] * B, value_text=[[value_text]] * B, mask=mask,
        )

    def select(self, text: Optional[str] = None, *, key: Optional[torch.Tensor] = None, row: Rows = None,
               threshold: Optional[float] = None, by_key: bool = False) -> torch.Tensor:
        """bool [B, M]: occupied slots whose key text contains ``text`` (case-insensitive), and,
        with ``by_key=True`` or an explicit ``key`` [dk], whose key has cosine >= threshold with it."""
        if text is None and key is None:
            raise EmptyInputError("text: give a text or a key to select slots")
        if text is not None and not isinstance(text, str):
            raise DTypeError(f"text: expected a str, got {type(text).__name__}")
        if text is not None and not text.strip():
            raise EmptyInputError(f"text: expected a non-empty str, got {text!r}")
        if not isinstance(by_key, bool):
            raise DTypeError(f"by_key: expected a bool, got {type(by_key).__name__}")
        thr = self.slots.match_threshold if threshold is None else check_real("threshold", threshold, low=-1.0, high=1.0)
        key = None if key is None else self._check_key(key)
        rows = self._rows(row)
        sel = torch.zeros_like(self.slots.occupied)
        if text is not None:
            needle = text.strip().lower()
            for b in rows:
                for m, kt in enumerate(self.slots.key_text[b]):
                    sel[b, m] = kt is not None and needle in kt.lower()
        if key is None and by_key and text is not None:
            key = self._encode([text], "key").reshape(-1)  # [dk]
        if key is not None:
            q = torch.nn.functional.normalize(key.reshape(1, 1, -1).expand(self.batch_size, 1, -1), dim=-1)
            best = torch.einsum("bqd,bmd->bm", q.to(self.slots.keys.dtype), self.slots.keys)  # [B, M]
            in_rows = torch.zeros(self.batch_size, 1, dtype=torch.bool)
            in_rows[rows] = True
            sel |= (best >= thr) & in_rows
        return sel & self.slots.occupied

    def forget(self, text: Optional[str] = None, *, key: Optional[torch.Tensor] = None, row: Rows = None,
               threshold: Optional[float] = None, by_key: bool = False) -> int:
        """Free the slots ``select`` picks (protected ones too); returns how many were freed."""
        sel = self.select(text, key=key, row=row, threshold=threshold, by_key=by_key)
        count = int(sel.sum())
        if count:
            self.slots.forget(sel)
        return count

    def protect(self, text: str, *, row: Rows = None, value: bool = True) -> int:
        """Protect (or unprotect) the slots whose key text contains ``text``; returns the count."""
        if not isinstance(value, bool):
            raise DTypeError(f"value: expected a bool, got {type(value).__name__}")
        if text is None:
            raise EmptyInputError("text: give the key text of the slots to protect")
        sel = self.select(text, row=row)
        self.slots.protect(sel, value)
        return int(sel.sum())

    def table(self, row: int = 0) -> list[dict]:
        """Occupied slots of request ``row``: key text, value text, version, confidence, source span."""
        return [{c: r[c] for c in TABLE_COLUMNS} for r in self.slots.table(self._row(row))]

    def pretty(self, row: int = 0) -> str:
        """``table(row)`` as aligned text, for notebooks and the CLI."""
        rows = self.table(row)
        cells = [[str(c) for c in TABLE_COLUMNS]] + [
            [str(r["slot"]), str(r["key_text"]), str(r["value_text"]), str(r["version"]),
             f"{r['confidence']:.2f}", f"{r['span'][0]}-{r['span'][1]}", str(r["chunk_id"]), str(r["protected"]),
             str(r["retracted"])]
            for r in rows
        ]
        widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)

    def snapshot(self) -> dict:
        """A deep copy of slots, indexes and stream offsets."""
        return {"slots": self.slots.snapshot(), "indexes": [i.snapshot() for i in self.indexes],
                "tokens_seen": list(self.tokens_seen)}

    def restore(self, snap: dict) -> None:
        """Put back a ``snapshot()`` (used to undo a failed ingest). All or nothing: the slots, every
        index and the offsets are checked before any of them is installed."""
        if not isinstance(snap, dict):
            raise DTypeError(f"snap: expected a dict from snapshot(), got {type(snap).__name__}")
        missing = {"slots", "indexes", "tokens_seen"} - set(snap)
        if missing:
            raise ConfigError(f"snap: missing keys {sorted(missing)}")
        self.slots.check_snapshot(snap["slots"], "snap['slots']")
        if not isinstance(snap["indexes"], (list, tuple)) or len(snap["indexes"]) != self.batch_size:
            raise ShapeError(f"snap['indexes']: expected a list of {self.batch_size} index snapshots (one per row)")
        states = [index.checked_snapshot(s, f"snap['indexes'][{b}]")
                  for b, (index, s) in enumerate(zip(self.indexes, snap["indexes"]))]
        seen = snap["tokens_seen"]
        if not isinstance(seen, (list, tuple)) or len(seen) != self.batch_size \
                or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in seen):
            raise ShapeError(f"snap['tokens_seen']: expected {self.batch_size} ints >= 0 (one per row), got {str(seen)[:80]}")
        self.slots.restore(snap["slots"])
        for index, state in zip(self.indexes, states):
            index.restore_checked(state)
        self.tokens_seen = list(seen)
        self._prune_read_cache()

    def _prune_read_cache(self) -> None:
        """Drop the read cache's entries of chunks the indexes no longer hold (the id is gone or
        holds other text): they could not be hit again, only kept alive."""
        def held(b: int, i: int, text: str) -> bool:
            return i < len(self.indexes[b]) and self.indexes[b].text(i) == text
        self.read_cache = {k: v for k, v in self.read_cache.items() if held(*k)}

    def __repr__(self) -> str:
        used = self.slots.occupied.sum(dim=1).tolist()
        return f"RequestMemory(batch_size={self.batch_size}, occupied={used}, chunks={[len(i) for i in self.indexes]})"
