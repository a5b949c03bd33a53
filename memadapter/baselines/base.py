"""One streaming interface for every method, plus the pieces several methods share.

A method sees a batch of token streams chunk by chunk and answers query tokens:

    method.reset(batch_size)
    method.observe(tokens)            # [B, C] int64 ids, in stream order, any chunk size
    pred, active = method.answer(q)   # q [B, Q] query key ids -> predicted value ids [B, Q],
                                      # and the size of the active set each answer read [B, Q]

``active`` counts items in the method's own unit (``Method.unit``): tokens, blocks, chunks,
events, slots, or 1 for a fixed state. Nothing here receives labels.

Token-level attention methods treat the pair (token t, token t+1) as (key, value), the usual
induction-head reading of a stream: the query key attends to positions holding it and reads the
token that followed. Because every embedding comes from the codebook, attention over stored ids
is computed exactly without materialising embeddings:

    logits[t] = beta * (E q)[id_t]          out = E^T (sum_t softmax(logits)_t * onehot(id_{t+1}))

which is what lets full scan run over 2M tokens in little memory. ``attend_reference`` is the
plain loop over materialised embeddings that the tests compare it with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import torch

from ..errors import ConfigError, ShapeError
from ..tasks.vocab import Codebook


class Method(ABC):
    """A streaming memory method. Subclasses set ``name`` and ``unit``.

    Example:
        >>> from memadapter.baselines.full_scan import FullScan
        >>> from memadapter.tasks.vocab import Codebook
        >>> cb = Codebook(dim=16, num_keys=8, num_values=8, num_filler=16)
        >>> m = FullScan(cb); m.reset(1)
        >>> m.observe(torch.tensor([[cb.key(1), cb.value(2), cb.filler_base]]))
        >>> pred, active = m.answer(torch.tensor([[cb.key(1)]]))
        >>> int(pred[0, 0]) == cb.value(2), int(active[0, 0])
        (True, 2)
    """

    name = "method"
    unit = "item"

    def __init__(self, codebook: Codebook) -> None:
        self.codebook = codebook
        self.batch_size = 0

    def reset(self, batch_size: int) -> None:
        """Forget everything and start ``batch_size`` independent streams."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(f"batch_size: expected a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self._reset()

    def observe(self, tokens: torch.Tensor) -> None:
        """Consume the next chunk [B, C] of every stream."""
        self._observe(self._check_ids("tokens", tokens))

    def answer(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer query key ids [B, Q] -> (predicted value ids [B, Q], active set sizes [B, Q])."""
        return self._answer(self._check_ids("queries", queries))

    def _check_ids(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dim() != 2:
            raise ShapeError(f"{name}: expected an integer tensor [B, n]")
        if ids.shape[0] != self.batch_size:
            raise ShapeError(f"{name}: batch {ids.shape[0]} != reset batch_size {self.batch_size}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook.size):
            raise ConfigError(f"{name}: token ids must lie in [0, {self.codebook.size})")
        return ids.long()

    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def _observe(self, tokens: torch.Tensor) -> None: ...

    @abstractmethod
    def _answer(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def attend_ids(cb: Codebook, key_ids: torch.Tensor, value_ids: torch.Tensor, queries: torch.Tensor,
               valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention of query vectors over (key id, value id) pairs, without embeddings.

    key_ids, value_ids: [B, N] ids; queries: [B, Q, d]; valid: [B, N] bool or None.
    Returns [B, Q, d]; a row with no valid pair returns zeros.
    """
    b, n = key_ids.shape
    q = queries.shape[1]
    vocab_scores = cb.beta * (queries @ cb.embeddings.T)  # [B, Q, V]
    logits = vocab_scores.gather(2, key_ids.unsqueeze(1).expand(b, q, n))  # [B, Q, N]
    if valid is not None:
        logits = logits.masked_fill(~valid.unsqueeze(1), float("-inf"))
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all-masked rows -> 0
    mass = torch.zeros(b, q, cb.size).scatter_add_(2, value_ids.unsqueeze(1).expand(b, q, n), weights)  # [B, Q, V]
    return mass @ cb.embeddings  # [B, Q, d]


def attend_reference(cb: Codebook, key_ids: torch.Tensor, value_ids: torch.Tensor, queries: torch.Tensor,
                     valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain-loop softmax attention over materialised embeddings (the oracle of ``attend_ids``)."""
    b, n = key_ids.shape
    out = torch.zeros(b, queries.shape[1], cb.dim)
    for i in range(b):
        keep = [t for t in range(n) if valid is None or bool(valid[i, t])]
        if not keep:
            continue
        keys = cb.embed(key_ids[i, keep])  # [n', d]
        vals = cb.embed(value_ids[i, keep])  # [n', d]
        for j in range(queries.shape[1]):
            w = torch.softmax(cb.beta * (keys @ queries[i, j]), dim=0)
            out[i, j] = (w[:, None] * vals).sum(0)
    return out


class TokenStore:
    """Append-only per-stream token ids (int32) in a buffer that doubles when full.

    One growing buffer rather than a list of chunk tensors: thousands of small tensors
    interleaved with temporaries fragment the heap (measured: 3x the payload in RSS at 2M tokens).
    The pair view (id_t, id_t+1) is ``ids[:, :-1], ids[:, 1:]``.
    """

    def __init__(self, batch_size: int) -> None:
        self._buf = torch.zeros(batch_size, 1024, dtype=torch.int32)
        self._n = 0

    def append(self, tokens: torch.Tensor) -> None:
        need = self._n + tokens.shape[1]
        if need > self._buf.shape[1]:
            grown = torch.zeros(self._buf.shape[0], max(need, 2 * self._buf.shape[1]), dtype=torch.int32)
            grown[:, : self._n] = self._buf[:, : self._n]
            self._buf = grown
        self._buf[:, self._n : need] = tokens
        self._n = need

    def keep_last(self, n: int) -> None:
        """Drop all but the last ``n`` tokens (a sliding window keeps its memory bounded)."""
        if self._n > n:
            self._buf[:, :n] = self._buf[:, self._n - n : self._n].clone()
            self._n = n

    @property
    def ids(self) -> torch.Tensor:
        """[B, N] int32 view of every token seen so far."""
        return self._buf[:, : self._n]

    def __len__(self) -> int:
        return self._n


def decode_or_invalid(cb: Codebook, vectors: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Decode [B, Q, d] to value ids, -1 where ``ok`` [B, Q] is False (nothing to read)."""
    return torch.where(ok, cb.decode(vectors), torch.full_like(ok, -1, dtype=torch.long))


def parse_events(window: torch.Tensor, cb: Codebook) -> list[tuple[int, int, int, int, int]]:
    """Marked events ``[MARKER, key, value]`` complete inside ``window``.

    window: [B, L] ids (the previous chunk's last two tokens followed by the new chunk).
    Returns (batch, position-in-window, marker, key id, value id) in stream order. A marker in
    the last two positions is left for the next window, so no event is split or counted twice.
    """
    limit = window.shape[1] - 2
    if limit <= 0:
        return []
    marks = cb.is_marker(window[:, :limit]).nonzero().tolist()
    return [(b, i, int(window[b, i]), int(window[b, i + 1]), int(window[b, i + 2])) for b, i in marks]


class EventReader:
    """Carries the last two tokens across chunks and yields complete marked events in order."""

    def __init__(self, batch_size: int, cb: Codebook) -> None:
        self.cb = cb
        self._tail = torch.zeros(batch_size, 0, dtype=torch.long)

    def read(self, tokens: torch.Tensor) -> list[tuple[int, int, int, int]]:
        """-> [(batch, marker, key id, value id)] for every event completed by ``tokens``."""
        window = torch.cat([self._tail, tokens], dim=1)  # [B, carry + C]
        events = parse_events(window, self.cb)
        self._tail = window[:, -2:]
        return [(b, m, k, v) for b, _, m, k, v in events]
