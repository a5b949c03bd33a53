"""Plain-loop reference of :meth:`memadapter.chunk_index.ChunkIndex.search`: one query, every
chunk scored one at a time (cosine, BM25 from :func:`memadapter.bm25.bm25_reference`, the hybrid
mix, the abstain score), so the tests can compare the vectorised search with it. Slow on purpose.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .bm25 import bm25_reference, tokenize
from .chunk_index import _EPS, SearchResult

__all__ = ["reference_search"]


def _cosine_reference(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return 0.0 if na == 0.0 or nb == 0.0 else dot / (na * nb)


def _abstain_reference(scores: Sequence[float]) -> float:
    if len(scores) == 1:
        return 0.0
    ranked = sorted(scores, reverse=True)
    spread = ranked[0] - sum(scores) / len(scores)
    if spread <= _EPS:
        return 1.0
    return 1.0 - min(max((ranked[0] - ranked[1]) / spread, 0.0), 1.0)


def reference_search(vectors: Sequence[Sequence[float]], texts: Sequence[Optional[str]],
                     spans: Sequence[Sequence[int]], query: Sequence[float],
                     query_text: Optional[str], top_k: int, *, neighbours: int = 0,
                     dense_weight: float = 0.5, terms: Optional[Sequence[Optional[Sequence[int]]]] = None,
                     query_terms: Optional[Sequence[int]] = None) -> SearchResult:
    """Plain-loop oracle of ChunkIndex.search for ONE query over raw (unnormalised) chunks.

    A terms index passes ``terms`` (one list of ints or None per chunk) and ``query_terms``."""
    n = len(vectors)
    if terms is not None:
        lex_docs = [i for i in range(n) if terms[i] is not None]
        docs = [[int(t) for t in terms[i]] for i in lex_docs]
        q_tokens = [int(t) for t in query_terms] if query_terms is not None else []
    else:
        lex_docs = [i for i in range(n) if texts[i] is not None]
        docs = tokenize([texts[i] for i in lex_docs])
        q_tokens = tokenize([query_text])[0] if query_text is not None else []
    raw = bm25_reference(docs, q_tokens) if q_tokens else []
    lex_set = set(lex_docs)
    top = max(raw) if raw else 0.0
    lexical = [0.0] * n
    for pos, i in enumerate(lex_docs):
        lexical[i] = raw[pos] / top if top > 0 else 0.0
    rows = []
    for i in range(n):
        cos = _cosine_reference(query, vectors[i])
        both = bool(q_tokens) and i in lex_set
        hybrid = dense_weight * cos + (1 - dense_weight) * lexical[i] if both else cos
        rows.append((hybrid, cos, lexical[i], i))
    ranked = sorted(rows, key=lambda r: (-r[0], r[3]))[:top_k]
    pad = [(-math.inf, 0.0, 0.0, -1)] * (top_k - len(ranked))
    chosen = ranked + pad
    ids = [r[3] for r in chosen]
    expanded = set()
    for i in ids:
        for j in range(i - neighbours, i + neighbours + 1):
            if i >= 0 and 0 <= j < n:
                expanded.add(j)
    return SearchResult(
        ids=torch.tensor([ids], dtype=torch.long),
        scores=torch.tensor([[r[0] for r in chosen]], dtype=torch.float64),
        dense=torch.tensor([[r[1] for r in chosen]], dtype=torch.float64),
        lexical=torch.tensor([[r[2] for r in chosen]], dtype=torch.float64),
        expanded=[sorted(expanded, key=lambda j: (spans[j][0], j))],
        abstain=torch.tensor([_abstain_reference([r[0] for r in rows])] if n else [1.0],
                             dtype=torch.float64),
    )
