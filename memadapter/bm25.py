"""The lexical half of the chunk index: BM25 through bm25s, plus a pure-Python reference.

bm25s builds a static index, so :class:`LexicalIndex` keeps every document's tokens and rebuilds
the bm25s index lazily, on the first score call after an append. Streaming appends therefore cost
only tokenisation; the rebuild (about 1.7-2 s for 4,096 chunks of 512 tokens on one CPU core) is paid
once per search that follows new text. The usual ingest-then-ask pattern pays it once; a loop that
alternates one append with one search on a large index pays it every time (the trade-off).

The scoring is bm25s' "lucene" variant, which :func:`bm25_reference` re-implements with plain loops:

    idf(t)      = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(d, q) = sum over query tokens t (repeats count) of
                  idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

N and avgdl count every document that has text, including ones whose text yields no token.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import bm25s
import numpy as np

# bm25s' own defaults; the reference below must use the same ones to agree with it.
DEFAULT_K1 = 1.5
DEFAULT_B = 0.75


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased word tokens (2+ word characters) without English stopwords, one list per text.

    Example:
        >>> tokenize(["The cat sat on the mat."])
        [['cat', 'sat', 'mat']]
    """
    if len(texts) == 0:
        return []
    out = bm25s.tokenize(list(texts), lower=True, stopwords="english", return_ids=False,
                         show_progress=False)
    return [list(doc) for doc in out]


class LexicalIndex:
    """Append-only BM25 over token lists, rebuilt lazily with bm25s when scored after an append.

    Example:
        >>> lex = LexicalIndex()
        >>> lex.append(tokenize(["alice lives in paris", "bob lives in rome"]))
        >>> [round(float(s), 3) for s in lex.scores(["paris"])]
        [0.277, 0.0]
    """

    def __init__(self, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> None:
        self.k1 = k1
        self.b = b
        self._docs: list[tuple[str, ...]] = []  # tuples: snapshots can share them safely
        self._total_tokens = 0
        self._retriever: bm25s.BM25 | None = None
        self._dirty = False

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def docs(self) -> list[tuple[str, ...]]:
        """A shallow copy of the stored (immutable) token tuples."""
        return list(self._docs)

    def append(self, docs: Sequence[Sequence[str]]) -> None:
        """Add documents (already tokenised). Costs nothing beyond a list append."""
        docs = [tuple(d) for d in docs]
        self._docs.extend(docs)
        self._total_tokens += sum(len(d) for d in docs)
        self._dirty = True

    def _rebuild(self) -> None:
        retriever = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        retriever.index(self._docs, show_progress=False)
        self._retriever = retriever
        self._dirty = False

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every document for one tokenised query: float64 array [len(self)]."""
        n = len(self._docs)
        # bm25s cannot index a corpus with no token at all, and rejects an empty query.
        if n == 0 or self._total_tokens == 0 or len(query_tokens) == 0:
            return np.zeros(n, dtype=np.float64)
        if self._dirty or self._retriever is None:
            self._rebuild()
        assert self._retriever is not None
        return self._retriever.get_scores(list(query_tokens)).astype(np.float64)


def bm25_reference(docs: Sequence[Sequence[str]], query_tokens: Sequence[str],
                   k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> list[float]:
    """Plain-loop BM25 (lucene variant) of every document for one query; the test oracle."""
    n = len(docs)
    if n == 0:
        return []
    total = sum(len(d) for d in docs)
    if total == 0:
        return [0.0] * n
    avgdl = total / n
    df: Counter[str] = Counter()
    for doc in docs:
        for tok in set(doc):
            df[tok] += 1
    out = []
    for doc in docs:
        tf = Counter(doc)
        score = 0.0
        for tok in query_tokens:
            if tf[tok] == 0:
                continue
            idf = math.log(1.0 + (n - df[tok] + 0.5) / (df[tok] + 0.5))
            score += idf * tf[tok] / (tf[tok] + k1 * (1.0 - b + b * len(doc) / avgdl))
        out.append(score)
    return out
