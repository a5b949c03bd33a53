"""The router: read the slot memory when a slot's key matches the query, else search the chunks.

A request takes the memory branch when its best slot cosine reaches ``match_threshold`` and the
read returned at least one valid slot; otherwise it falls back to its own :class:`ChunkIndex`.
Row b only ever touches memory row b and ``indexes[b]``. :meth:`Router.calibrate` picks the
threshold from held-out match scores; :func:`calibrate_reference` is its plain-loop oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from ._validate import check_positive_int, check_tensor, text_list
from .chunk_index import ChunkIndex, SearchResult, TermsArg, TextArg, _terms_list
from .errors import CapacityError, ConfigError, DTypeError, ShapeError

if TYPE_CHECKING:  # duck-typed at run time: anything with batch_size, num_slots, match, read
    from .slots import ReadResult, SlotMemory

MEMORY, FALLBACK = "memory", "fallback"
_TOL = 1e-9  # absorbs float error in max_false_match * n (0.29 * 100 = 28.999...)


@dataclass
class RouteResult:
    """Per-request routing decision and what it selected.

    ``memory`` is the batch-wide SlotMemory.read result (None when no row took the memory
    branch; rows of fallback requests are unused); ``chunks[b]`` is the chunk search of a
    fallback row and None for a memory row; ``active[b]`` counts the slots or chunks handed on.

    Example:
        >>> res = RouteResult(["fallback"], torch.tensor([-1.0]), None, [None], torch.tensor([0]))
        >>> res.branch[0], int(res.active[0])
        ('fallback', 0)
    """

    branch: list[str]
    match: torch.Tensor  # [B]
    memory: Optional["ReadResult"]
    chunks: list[Optional[SearchResult]]
    active: torch.Tensor  # [B] long

    @property
    def uses_memory(self) -> torch.Tensor:
        """[B] bool: which rows took the memory branch."""
        return torch.tensor([b == MEMORY for b in self.branch], dtype=torch.bool)


def _check_number(name: str, value: object, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{name}: expected a finite number in [{low}, {high}], got {value}")
    return float(value)


def _check_scores(name: str, scores: object) -> torch.Tensor:
    """A 1-D sequence or tensor of finite match scores -> float64 tensor [n]."""
    if not isinstance(scores, torch.Tensor):
        try:
            scores = torch.as_tensor(scores, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise DTypeError(f"{name}: expected a 1-D sequence of numbers") from err
    return check_tensor(name, scores, ndim=1).double()


class Router:
    """Memory branch when a slot matches above a calibrated threshold, otherwise sparse fallback.

    Example:
        >>> from memadapter.slots import SlotMemory
        >>> mem = SlotMemory(num_slots=4, key_dim=4, value_dim=4, batch_size=2)
        >>> _ = mem.write(torch.eye(4)[:2], torch.eye(4)[:2])   # one fact per request
        >>> idx = [ChunkIndex(4), ChunkIndex(4)]
        >>> _ = idx[1].add(torch.eye(4), ["a1", "b2", "c3", "d4"])
        >>> res = Router(0.8, top_k_chunks=2).route(mem, idx, torch.eye(4)[[0, 2]])
        >>> res.branch, res.active.tolist(), res.chunks[1].ids.tolist()
        (['memory', 'fallback'], [1, 2], [[2, 0]])
    """

    def __init__(self, match_threshold: float = 0.8, top_k_slots: int = 1, top_k_chunks: int = 4,
                 neighbours: int = 0) -> None:
        self.match_threshold = _check_number("match_threshold", match_threshold)
        self.top_k_slots = check_positive_int("top_k_slots", top_k_slots)
        self.top_k_chunks = check_positive_int("top_k_chunks", top_k_chunks)
        self.neighbours = check_positive_int("neighbours", neighbours, allow_zero=True)

    def _check_inputs(self, memory: "SlotMemory", indexes: Sequence[ChunkIndex], query: torch.Tensor,
                      query_text: TextArg, chunk_query: Optional[torch.Tensor], query_terms: TermsArg):
        """Everything is checked before the read, whose usage update is the only side effect."""
        batch = int(memory.batch_size)
        query = check_tensor("query", query, ndim=2)
        if query.shape[0] != batch:
            raise ShapeError(f"query: expected batch size {batch}, got shape {tuple(query.shape)}")
        if not isinstance(indexes, (list, tuple)) or len(indexes) != batch:
            raise ShapeError(f"indexes: expected a list of {batch} ChunkIndex (one per request)")
        for b, idx in enumerate(indexes):
            if not isinstance(idx, ChunkIndex):
                raise DTypeError(f"indexes[{b}]: expected a ChunkIndex, got {type(idx).__name__}")
        chunk_query = query if chunk_query is None else check_tensor("chunk_query", chunk_query, ndim=2)
        if chunk_query.shape[0] != batch:
            raise ShapeError(f"chunk_query: expected batch size {batch}, got {tuple(chunk_query.shape)}")
        for b, idx in enumerate(indexes):
            if chunk_query.shape[1] != idx.dim:
                raise ShapeError(f"chunk_query: last dim {chunk_query.shape[1]} != indexes[{b}].dim {idx.dim}")
        if self.top_k_slots > int(memory.num_slots):
            raise CapacityError(f"top_k_slots: {self.top_k_slots} exceeds num_slots {memory.num_slots}")
        texts = text_list("query_text", query_text, batch)
        return query, chunk_query, texts, _terms_list("query_terms", query_terms, batch)

    def route(self, memory: "SlotMemory", indexes: Sequence[ChunkIndex], query: torch.Tensor,
              query_text: TextArg = None, chunk_query: Optional[torch.Tensor] = None, *,
              query_terms: TermsArg = None, slot_bias: Optional[torch.Tensor] = None) -> RouteResult:
        """memory: SlotMemory (batch B); indexes: B ChunkIndex; query [B, dk] slot query;
        chunk_query [B, dim] for the indexes (defaults to query); query_text list[str] | None,
        or query_terms (B 1-D integer arrays, or [B, L]) for indexes that hold term ids;
        slot_bias [B, M]: evidence added to each slot's match and read score (SlotMemory ``bias``).

        The read runs only when some row matches, and only matched rows get usage credit, so a
        fallback row's unmatched best slot is not kept alive by a question it did not answer.
        """
        query, chunk_query, texts, terms = self._check_inputs(memory, indexes, query, query_text,
                                                              chunk_query, query_terms)
        batch = query.shape[0]
        extra = {} if slot_bias is None else {"bias": slot_bias}  # duck-typed memories need not take it
        best, _ = memory.match(query, **extra)
        match = best.reshape(batch, -1)[:, 0]  # [B, Q=1] -> [B]
        matched = (match >= self.match_threshold).cpu()
        read, n_valid = None, torch.zeros(batch, dtype=torch.long)
        if bool(matched.any()):
            read = memory.read(query, self.top_k_slots, update_usage=matched.to(query.device), **extra)
            n_valid = read.valid.reshape(batch, -1).sum(dim=1).long().cpu()  # [B, Q, K] -> [B]
        branch, chunks, active = [], [], []
        for b in range(batch):
            if bool(matched[b]) and int(n_valid[b]) > 0:
                branch.append(MEMORY)
                chunks.append(None)
                active.append(int(n_valid[b]))
                continue
            res = indexes[b].search(chunk_query[b], texts[b], self.top_k_chunks,
                                    neighbours=self.neighbours, query_terms=terms[b])
            branch.append(FALLBACK)
            chunks.append(res)
            active.append(int(res.num_active[0]))
        return RouteResult(branch, match, read, chunks, torch.tensor(active, dtype=torch.long))

    @staticmethod
    def calibrate(positive: Any, negative: Any, *, max_false_match: float = 0.01) -> float:
        """Threshold from match scores of queries whose key IS in memory (positive) and is NOT
        (negative): false matches (negatives >= t) stay <= max_false_match, recall is maximal.

        Among thresholds with equal recall it returns the midpoint between the highest excluded
        negative and the next positive, the choice with the most room on both sides.
        """
        pos, neg = _check_scores("positive", positive), _check_scores("negative", negative)
        rate = _check_number("max_false_match", max_false_match, 0.0, 1.0)
        allowed = math.floor(rate * neg.numel() + _TOL)  # false matches we may keep
        if allowed >= neg.numel():
            return float(pos.min())  # every negative may match: take every positive
        bar = float(torch.sort(neg, descending=True).values[allowed])  # must fall below t
        above = pos[pos > bar]
        if above.numel() == 0:
            return math.nextafter(bar, math.inf)  # no positive is reachable: recall 0
        nxt = float(above.min())
        mid = 0.5 * (bar + nxt)
        return mid if mid > bar else nxt


def calibrate_reference(positive: Sequence[float], negative: Sequence[float],
                        max_false_match: float = 0.01) -> tuple[float, float]:
    """Plain loops: try every score (and +inf) as threshold; best (recall, false-match rate)."""
    best = (-1.0, 0.0)
    for t in sorted(set(positive) | set(negative) | {math.inf}):
        false = sum(1 for s in negative if s >= t)
        if false > max_false_match * len(negative) + _TOL:
            continue
        recall = sum(1 for s in positive if s >= t) / len(positive)
        if recall > best[0]:
            best = (recall, false / len(negative))
    return best
