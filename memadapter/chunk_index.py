"""Per-request chunk index: the sparse fallback of the router.

Every chunk the backbone read leaves a dense summary vector (held L2-normalised in a growable
tensor, so an append is amortised O(1)) and, optionally, a BM25 entry (see ``bm25.py``): either
its text (``texts=``, tokenised by bm25s) or its integer term ids (``terms=``, e.g. its token ids,
no strings involved). One index holds one kind; queries then bring ``query_text`` or
``query_terms`` to match.
A search ranks chunks by a hybrid score

    hybrid = dense_weight * cosine + (1 - dense_weight) * bm25 / max_chunks(bm25)

and falls back to the cosine alone for a chunk or a query with no lexical entry (a query has one
when its text yields at least one token, or its terms are non-empty). It returns the top-k
chunks, their +-n neighbours in stream order, and an abstention score computed from the score
distribution alone.

The BM25 side is rebuilt lazily on the first search after new entries (text: bm25s, about 2 s
at 4,096 chunks x 512 tokens; terms: one sort, about 0.3 s), so streaming adds stay cheap.

:func:`memadapter.chunk_index_reference.reference_search` is the plain-loop oracle of
:meth:`ChunkIndex.search`; the tests compare them.
Ties in the hybrid score rank the earlier chunk (lower id) first in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._validate import (MAX_SIZES, check_allocation, check_positive_int, check_real, check_size, check_tensor,
                        text_list)
from .bm25 import DEFAULT_B, DEFAULT_K1, LexicalIndex, TermIndex, check_terms, tokenize
from .chunk_index_snapshot import check_snapshot
from .errors import CapacityError, ConfigError, DTypeError, ShapeError

TextArg = Optional[str | Sequence[Optional[str]]]
TermsArg = Optional[object]  # a 1-D int array/tensor (one row), [Q, L] tensor, or a sequence per row
TEXT, TERMS = "text", "terms"
_MIN_ALLOC = 64  # first buffer size; doubling from here keeps appends amortised O(1)
_EPS = 1e-9


@dataclass
class SearchResult:
    """Top-k chunks per query. ``scores`` is the hybrid score; ``dense`` the raw cosine and
    ``lexical`` the per-query max-normalised BM25 of the same chunks (0 where a side has no text).
    Rows past the index size are padded: id -1, score -inf, dense and lexical 0. Tensors live
    on the index's device; ``expanded`` is plain Python for the caller's loops.

    Example:
        >>> idx = ChunkIndex(4)
        >>> _ = idx.add(torch.eye(4)[:3], texts=["red fox", "blue bird", "green frog"])
        >>> res = idx.search(torch.eye(4)[1], "blue", top_k=1, neighbours=1)
        >>> res.ids.tolist(), res.expanded, res.num_active.tolist()
        ([[1]], [[0, 1, 2]], [3])
    """

    ids: torch.Tensor  # [Q, K] long
    scores: torch.Tensor  # [Q, K]
    dense: torch.Tensor  # [Q, K]
    lexical: torch.Tensor  # [Q, K]
    expanded: list[list[int]]
    abstain: torch.Tensor  # [Q] in [0, 1]

    @property
    def num_active(self) -> torch.Tensor:
        """[Q] long: how many chunks (selected plus neighbours) each query hands on."""
        return torch.tensor([len(e) for e in self.expanded], dtype=torch.long)


def _terms_list(name: str, terms: TermsArg, n: int) -> list[Optional["np.ndarray"]]:
    """Normalise terms to a list of n entries, each an int64 array or None (no lexical entry)."""
    if terms is None:
        return [None] * n
    if isinstance(terms, (torch.Tensor, np.ndarray)):
        if terms.ndim == 1:  # one row's term ids
            if n != 1:
                raise ShapeError(f"{name}: a single 1-D array was given for {n} rows; pass {n} arrays")
            return [check_terms(f"{name}[0]", terms)]
        if terms.ndim != 2:
            raise ShapeError(f"{name}: expected a 1-D array, a [rows, L] array or a list, "
                             f"got shape {tuple(terms.shape)}")
        terms = list(terms)  # [n, L] -> n rows
    if not isinstance(terms, (list, tuple)):
        raise DTypeError(f"{name}: expected a list of integer arrays, got {type(terms).__name__}")
    if len(terms) != n:
        raise ShapeError(f"{name}: expected {n} entries (one per row), got {len(terms)}")
    out = [None if t is None else check_terms(f"{name}[{i}]", t, check_sign=False) for i, t in enumerate(terms)]
    present = [t for t in out if t is not None and t.size]
    if present and int(np.concatenate(present).min()) < 0:  # one pass, then name the first culprit
        bad = next(i for i, t in enumerate(out) if t is not None and t.size and int(t.min()) < 0)
        raise ConfigError(f"{name}[{bad}]: term ids must be >= 0, got {int(out[bad].min())}")
    return out


def abstain_score(scores: torch.Tensor) -> torch.Tensor:
    """[Q, N] hybrid scores -> [Q] in [0, 1]: 1 - (top1 - top2) / (top1 - mean), clamped.

    0 when the best chunk stands clear of the second relative to the spread of all scores,
    1 when the top two tie. A single chunk has no competitor (0); all-equal scores give 1.
    Uses the scores only, never labels. Known blind spot: a fact split across two chunks
    makes two near-equal winners and reads as unsure.
    """
    q, n = scores.shape
    if n == 1:
        return scores.new_zeros(q)
    top2 = scores.topk(2, dim=1).values  # [Q, 2]
    gap = top2[:, 0] - top2[:, 1]
    spread = top2[:, 0] - scores.mean(dim=1)
    ratio = torch.where(spread > _EPS, gap / spread.clamp_min(_EPS), torch.zeros_like(gap))
    return 1.0 - ratio.clamp(0.0, 1.0)


def index_bytes(dim: int, chunks: int = 0, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the buffers of an index of ``chunks`` chunks take (an empty index allocates _MIN_ALLOC
    rows): lets a caller check a batch of new indexes against the available memory first."""
    return max(chunks, _MIN_ALLOC) * (dim * (torch.finfo(dtype).bits // 8) + 2 * 8)


def _check_device(device: object) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as err:
        raise DTypeError(f"device: expected a torch.device or a device string, got {device!r}") from err


def _expand(ids: Sequence[int], neighbours: int, n: int, starts: Sequence[int]) -> list[int]:
    """Selected ids plus id-n..id+n that exist, deduplicated, sorted by (span start, id)."""
    neighbours = min(neighbours, n)  # more than n adds nothing; an absurd value must not loop for ever
    out = {j for i in ids if i >= 0 for j in range(i - neighbours, i + neighbours + 1) if 0 <= j < n}
    return sorted(out, key=lambda j: (starts[j], j))


class ChunkIndex:
    """One request's chunks (a batch of requests holds one ChunkIndex each).

    Args:
        dim: size of the dense summary vectors.
        dense_weight: weight of the cosine in the hybrid score (the rest goes to BM25).
        capacity: most chunks it may hold (None: MAX_SIZES["capacity"]); an add past it raises CapacityError.
        chunk_tokens: span length used for default (consecutive) spans.
        k1, b: BM25 parameters (bm25s' defaults).

    Example:
        >>> idx = ChunkIndex(8)
        >>> ids = idx.add(torch.eye(8)[:3], texts=["alice lives in paris", "bob rows", "carol"])
        >>> res = idx.search(torch.ones(8), "where does alice live", top_k=2)
        >>> res.ids.shape, int(res.ids[0, 0]), idx.span(1)
        (torch.Size([1, 2]), 0, (512, 1024))
    """

    def __init__(self, dim: int, *, dense_weight: float = 0.5, capacity: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 chunk_tokens: int = 512, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> None:
        self.dim = check_size("dim", dim)
        if isinstance(dense_weight, bool) or not isinstance(dense_weight, (int, float)) \
                or not 0.0 <= float(dense_weight) <= 1.0:
            raise ConfigError(f"dense_weight: expected a number in [0, 1], got {dense_weight!r}")
        if capacity is not None:
            check_size("capacity", capacity)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise DTypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
        self.dense_weight = float(dense_weight)
        self.capacity = capacity
        self.chunk_tokens = check_size("chunk_tokens", chunk_tokens)
        self.device = _check_device(device)
        self.dtype = dtype
        self._k1, self._b = check_real("k1", k1, low=0.0), check_real("b", b, low=0.0, high=1.0)
        self._reset(0, torch.empty(0, dim), torch.empty(0, 2, dtype=torch.long), [], [], 0)

    def _reset(self, n: int, vecs: torch.Tensor, spans: torch.Tensor, texts: list[Optional[str]],
               tokens: Sequence[Sequence[str]], next_start: int,
               terms: Optional[tuple[TermIndex, list[int]]] = None) -> None:
        """Install a complete state (used by __init__ and restore); vecs are already normalised.
        ``terms``: (term index, chunk id of each of its documents) for a terms index."""
        alloc = max(_MIN_ALLOC if self.capacity is None else min(_MIN_ALLOC, self.capacity), n)
        self._vecs = torch.zeros(alloc, self.dim, device=self.device, dtype=self.dtype)
        self._vecs[:n] = vecs.to(self.device, self.dtype)
        self._spans = torch.zeros(alloc, 2, dtype=torch.long)
        self._spans[:n] = spans
        self._n = n
        self._texts = list(texts)
        self._lex_ids = [i for i, t in enumerate(texts) if t is not None]  # chunk id per BM25 doc
        self._lexical = LexicalIndex(self._k1, self._b)
        self._lexical.append(tokens)
        self._terms = TermIndex(self._k1, self._b) if terms is None else terms[0]
        if terms is not None:
            self._lex_ids = list(terms[1])
        self._kind = TERMS if len(self._terms) else TEXT if self._lex_ids else None
        self._next_start = next_start

    def __len__(self) -> int:
        return self._n

    def _grow(self, need: int) -> None:
        """Double the buffers until ``need`` rows fit; allocate before swapping so a failure
        (out of memory) leaves the old buffers in place."""
        alloc = self._vecs.shape[0]
        if need <= alloc:
            return
        while alloc < need:
            alloc *= 2
        alloc = min(alloc, self.capacity or MAX_SIZES["capacity"])
        check_allocation(f"vectors: growing the index to {alloc} chunks of dim", index_bytes(self.dim, alloc, self.dtype),
                         self.device)
        vecs = torch.zeros(alloc, self.dim, device=self.device, dtype=self.dtype)
        spans = torch.zeros(alloc, 2, dtype=torch.long)
        vecs[: self._n] = self._vecs[: self._n]
        spans[: self._n] = self._spans[: self._n]
        self._vecs, self._spans = vecs, spans

    def _check_spans(self, spans: object, n: int, name: str = "spans") -> torch.Tensor:
        """-> [n, 2] long; default: consecutive blocks of chunk_tokens after the last chunk."""
        if spans is None:
            starts = self._next_start + self.chunk_tokens * torch.arange(n)
            return torch.stack([starts, starts + self.chunk_tokens], dim=1)  # [n, 2]
        if not isinstance(spans, torch.Tensor):
            try:
                spans = torch.as_tensor(spans)
            except (TypeError, ValueError, RuntimeError) as err:
                raise DTypeError(f"{name}: expected an integer tensor [n, 2], got {spans!r}") from err
        if spans.dtype.is_floating_point or spans.dtype.is_complex or spans.dtype == torch.bool:
            raise DTypeError(f"{name}: expected an integer tensor, got dtype {spans.dtype}")
        spans = spans.reshape(1, -1) if spans.dim() == 1 else spans  # [2] -> [1, 2]
        if spans.dim() != 2 or tuple(spans.shape) != (n, 2):
            raise ShapeError(f"{name}: expected shape ({n}, 2), got {tuple(spans.shape)}")
        spans = spans.to(torch.long).cpu()
        if bool((spans[:, 0] < 0).any()) or bool((spans[:, 1] < spans[:, 0]).any()):
            raise CapacityError(f"{name}: each span needs 0 <= start <= end")
        return spans

    def _check_kind(self, row_texts: list[Optional[str]], term_list: list) -> Optional[str]:
        """The lexical kind these rows bring (None: dense only); one index holds one kind."""
        has_text = any(t is not None for t in row_texts)
        has_terms = any(t is not None for t in term_list)
        if has_text and has_terms:
            raise ConfigError("terms: a chunk has text or terms, not both; got both in one add")
        kind = TEXT if has_text else TERMS if has_terms else None
        if kind is not None and self._kind not in (None, kind):
            arg = "texts" if kind == TEXT else "terms"
            raise ConfigError(f"{arg}: this index already holds {self._kind} entries; one index holds one kind")
        return kind

    def add(self, vectors: torch.Tensor, texts: TextArg = None, spans: object = None, *,
            terms: TermsArg = None) -> torch.Tensor:
        """Append chunks and return their ids [n] (long, consecutive).

        vectors [n, dim] or [dim]; texts: str | list[str | None] | None (None: dense only);
        terms: n 1-D integer arrays/tensors (e.g. token ids) or None entries, instead of texts;
        spans [n, 2] token spans in the stream (default: consecutive). All checks run before
        anything is stored, so a rejected add leaves the index exactly as it was.
        """
        vectors = check_tensor("vectors", vectors, ndim=(1, 2), last_dim=self.dim)
        vectors = vectors.reshape(-1, self.dim)  # [dim] -> [1, dim]
        n = vectors.shape[0]
        row_texts = text_list("texts", texts, n)
        term_list = _terms_list("terms", terms, n)
        kind = self._check_kind(row_texts, term_list)
        span_t = self._check_spans(spans, n)
        limit = self.capacity or MAX_SIZES["capacity"]  # unbounded means up to the table's bound
        if self._n + n > limit:
            raise CapacityError(f"vectors: adding {n} chunks to {self._n} exceeds capacity {limit}")
        normed = F.normalize(vectors.to(self.device, self.dtype), dim=-1)  # zero vector stays 0
        tokens = tokenize([t for t in row_texts if t is not None])
        self._grow(self._n + n)
        start = self._n
        if kind == TERMS:  # first: the term counting is the step that could still fail (memory)
            self._terms.append([t for t in term_list if t is not None])
            self._lex_ids.extend(start + i for i, t in enumerate(term_list) if t is not None)
        else:
            self._lexical.append(tokens)
            self._lex_ids.extend(start + i for i, t in enumerate(row_texts) if t is not None)
        self._vecs[start : start + n] = normed
        self._spans[start : start + n] = span_t
        self._texts.extend(row_texts)
        self._kind = self._kind or kind
        self._n += n
        self._next_start = int(span_t[-1, 1])
        return torch.arange(start, start + n, dtype=torch.long)

    def _check_id(self, chunk_id: int) -> int:
        if isinstance(chunk_id, torch.Tensor) and chunk_id.numel() == 1 and not chunk_id.is_floating_point():
            chunk_id = int(chunk_id)
        if isinstance(chunk_id, bool) or not isinstance(chunk_id, int):
            raise DTypeError(f"chunk_id: expected an int, got {type(chunk_id).__name__}")
        if not 0 <= chunk_id < self._n:
            raise CapacityError(f"chunk_id: {chunk_id} out of range [0, {self._n})")
        return chunk_id

    def text(self, chunk_id: int) -> str | None:
        """The chunk's text, or None for a dense-only chunk."""
        return self._texts[self._check_id(chunk_id)]

    def span(self, chunk_id: int) -> tuple[int, int]:
        """The chunk's (start, end) token span in the stream."""
        s = self._spans[self._check_id(chunk_id)]
        return int(s[0]), int(s[1])

    @property
    def vectors(self) -> torch.Tensor:
        """[N, dim] copy of the L2-normalised summaries."""
        return self._vecs[: self._n].clone()

    @property
    def spans(self) -> torch.Tensor:
        """[N, 2] copy of the token spans."""
        return self._spans[: self._n].clone()

    def _check_query(self, query: torch.Tensor) -> torch.Tensor:
        query = check_tensor("query", query, ndim=(1, 2), last_dim=self.dim)
        return query.reshape(-1, self.dim).to(self.device, self.dtype)  # [dim] -> [1, dim]

    def dense_scores(self, query: torch.Tensor) -> torch.Tensor:
        """[Q, N] cosine of each query with every chunk: one matmul, for many-query benchmarks."""
        q = F.normalize(self._check_query(query), dim=-1)
        return q @ self._vecs[: self._n].T  # [Q, dim] @ [dim, N] -> [Q, N]

    def hybrid_scores(self, query: torch.Tensor, query_text: TextArg = None, *,
                      query_terms: TermsArg = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hybrid, cosine, normalised BM25), each [Q, N], for every chunk."""
        dense = self.dense_scores(query)
        return self._combine(dense, self._query_lexical(query_text, query_terms, dense.shape[0]))

    def _query_lexical(self, query_text: TextArg, query_terms: TermsArg, q: int) -> list:
        """Per query row: a token list (text index), a term array (terms index) or None."""
        texts = text_list("query_text", query_text, q)
        terms = _terms_list("query_terms", query_terms, q)
        if any(t is not None for t in texts) and any(t is not None for t in terms):
            raise ConfigError("query_terms: give query_text or query_terms, not both")
        if self._kind == TEXT and any(t is not None for t in terms):
            raise ConfigError("query_terms: this index holds text; search it with query_text")
        if self._kind == TERMS and any(t is not None for t in texts):
            raise ConfigError("query_text: this index holds term ids; search it with query_terms")
        if any(t is not None for t in terms):
            return terms
        present = [i for i, t in enumerate(texts) if t is not None]
        out: list = [None] * q
        for qi, toks in zip(present, tokenize([texts[i] for i in present])):
            out[qi] = toks
        return out

    def _combine(self, dense: torch.Tensor, queries: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, n = dense.shape
        lex_ids = torch.tensor(self._lex_ids, dtype=torch.long)
        lexical = torch.zeros(q, n, dtype=self.dtype)
        q_has = torch.zeros(q, dtype=torch.bool)
        backend = self._terms if self._kind == TERMS else self._lexical
        for qi, toks in enumerate(queries):
            if toks is None or len(toks) == 0:  # stopwords only / no terms: stay dense-only
                continue
            q_has[qi] = True
            raw = torch.from_numpy(backend.scores(toks))  # [n_lexical]
            if raw.numel() and float(raw.max()) > 0:
                lexical[qi, lex_ids] = (raw / raw.max()).to(self.dtype)
        lexical = lexical.to(self.device)
        chunk_has = torch.zeros(n, dtype=torch.bool)
        chunk_has[lex_ids] = True
        both = (q_has[:, None] & chunk_has[None, :]).to(self.device)  # [Q, N]
        w = self.dense_weight
        hybrid = torch.where(both, w * dense + (1.0 - w) * lexical, dense)
        return hybrid, dense, lexical

    def search(self, query: torch.Tensor, query_text: TextArg = None, top_k: int = 4, *,
               neighbours: int = 0, query_terms: TermsArg = None) -> SearchResult:
        """Top-k chunks per query by hybrid score, with +-neighbours expansion.

        query [dim] or [Q, dim]; query_text str | list[str | None] | None for a text index, or
        query_terms (a 1-D int array for one query, or one per query) for a terms index.
        top_k above the index size pads with -1 (so top_k is bounded by MAX_SIZES["top_k"]: the
        padding is allocated); neighbours above the index size act as the index size.
        An empty index returns all padding, abstain 1.
        """
        query = self._check_query(query)
        top_k = check_size("top_k", top_k)
        neighbours = check_positive_int("neighbours", neighbours, allow_zero=True)
        lex_queries = self._query_lexical(query_text, query_terms, query.shape[0])
        q, n = query.shape[0], self._n
        if n == 0:
            return _empty_result(q, top_k, self.dtype, self.device)
        hybrid, dense, lexical = self._combine(self.dense_scores(query), lex_queries)
        k = min(top_k, n)
        order = torch.sort(hybrid, dim=1, descending=True, stable=True).indices[:, :k]  # [Q, k]
        pad = (0, top_k - k)
        starts = self._spans[:n, 0].tolist()
        return SearchResult(
            ids=F.pad(order, pad, value=-1),
            scores=F.pad(hybrid.gather(1, order), pad, value=-math.inf),
            dense=F.pad(dense.gather(1, order), pad, value=0.0),
            lexical=F.pad(lexical.gather(1, order), pad, value=0.0),
            expanded=[_expand(row, neighbours, n, starts) for row in order.tolist()],
            abstain=abstain_score(hybrid),
        )

    def snapshot(self) -> dict:
        """A copy of the whole state: tensors, texts and tokens (no live reference escapes)."""
        return {
            "dim": self.dim,
            "vectors": self._vecs[: self._n].clone(),
            "spans": self._spans[: self._n].clone(),
            "texts": list(self._texts),
            "tokens": self._lexical.docs,  # immutable tuples: sharing them is safe
            "next_start": self._next_start,
            "terms": self._terms.state() if self._kind == TERMS else None,  # fresh arrays
            "term_chunks": list(self._lex_ids) if self._kind == TERMS else None,
        }

    def restore(self, snap: dict) -> None:
        """Replace the state by a snapshot; a malformed snapshot raises and changes nothing."""
        self._reset(*self.checked_snapshot(snap))

    def restore_checked(self, state: tuple) -> None:
        """Install what :meth:`checked_snapshot` returned: a restore of several indexes checks
        every snapshot first and installs only then (all or nothing)."""
        self._reset(*state)

    def checked_snapshot(self, snap: Any, name: str = "snap") -> tuple:
        """Validate a ``snapshot()`` (errors name ``name``) and return the arguments of ``_reset``;
        changes nothing, so a caller restoring several indexes can check them all first
        (:func:`memadapter.chunk_index_snapshot.check_snapshot`)."""
        return check_snapshot(self, snap, name)


def _empty_result(q: int, top_k: int, dtype: torch.dtype, device: torch.device) -> SearchResult:
    return SearchResult(
        ids=torch.full((q, top_k), -1, dtype=torch.long, device=device),
        scores=torch.full((q, top_k), -math.inf, dtype=dtype, device=device),
        dense=torch.zeros(q, top_k, dtype=dtype, device=device),
        lexical=torch.zeros(q, top_k, dtype=dtype, device=device),
        expanded=[[] for _ in range(q)],
        abstain=torch.ones(q, dtype=dtype, device=device),
    )
