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

:class:`TermIndex` is the same BM25 over integer term ids (e.g. a chunk's token ids), with no
string in sight: an append costs one ``np.unique`` over (document, term) pairs, and the postings
are rebuilt lazily, in CSR form with one sort, on the first score call after an append.
It equals :func:`bm25_reference` on the same documents (the reference counts any hashable token).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Callable, Optional, Sequence

import bm25s
import numpy as np

from .errors import ConfigError, DTypeError, ShapeError

# bm25s' own defaults; the reference below must use the same ones to agree with it.
DEFAULT_K1 = 1.5
DEFAULT_B = 0.75


def content_words(text: str) -> set[str]:
    """The words of ``text`` (as :func:`tokenize` gives them) that are not function words, the
    question words among them ("what", "where", "now", "does"): bm25s' longer English list.

    Example:
        >>> sorted(content_words("Where does Louise work now?"))
        ['louise', 'work']
    """
    return set(tokenize([text])[0]) - _function_words()


@functools.lru_cache(maxsize=1)
def _function_words() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS)


@functools.lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: Sequence[str], stem: bool = False) -> list[list[str]]:
    """Lower-cased word tokens (2+ word characters) without English stopwords, one list per text;
    ``stem``: Snowball English stems (PyStemmer).

    Example:
        >>> tokenize(["The cat sat on the mat."])
        [['cat', 'sat', 'mat']]
    """
    if len(texts) == 0:
        return []
    stemmer = _stemmer().stemWords if stem else None
    out = bm25s.tokenize(list(texts), lower=True, stopwords="english", return_ids=False,
                         show_progress=False, stemmer=stemmer)
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


def check_terms(name: str, terms: object, *, check_sign: bool = True) -> np.ndarray:
    """One document's term ids (1-D integer array, tensor or list, values >= 0) -> integer array.

    ``check_sign=False`` leaves the >= 0 check to the caller (one pass over many documents).
    """
    if hasattr(terms, "detach"):  # a torch tensor: numpy() shares memory, no copy
        terms = terms.detach().cpu().numpy()
    arr = terms if isinstance(terms, np.ndarray) else np.asarray(terms)
    if arr.dtype.kind not in "iu":  # bool, float, object, ...
        if arr.size == 0 and arr.ndim == 1:  # [] has dtype float64: an empty document
            return np.zeros(0, dtype=np.int64)
        raise DTypeError(f"{name}: expected integer term ids, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ShapeError(f"{name}: expected a 1-D array of term ids, got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8:
        arr = arr.astype(np.int64)  # uint64 would not survive the int64 packing
    if check_sign and arr.size and int(arr.min()) < 0:
        raise ConfigError(f"{name}: term ids must be >= 0, got {int(arr.min())}")
    return arr


def _count_terms(docs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(local doc index, term, count) of every distinct (doc, term) pair, sorted by doc then term.

    One np.unique over packed keys doc * (max_term + 1) + term instead of one call per document.
    """
    lengths = np.array([d.size for d in docs], dtype=np.int64)
    flat = np.concatenate(docs).astype(np.int64, copy=False) if len(docs) else np.zeros(0, dtype=np.int64)
    if flat.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty.astype(np.int32), empty, empty.astype(np.int32)
    width = int(flat.max()) + 1
    doc_of = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)  # [total] doc of each token
    if width < 2**62 // len(docs):
        keys, counts = np.unique(doc_of * width + flat, return_counts=True)
        terms = keys % width
        if width <= 2**31:  # halves the memory of a token-id index (2M pairs per 2M-token stream)
            terms = terms.astype(np.int32)
        return (keys // width).astype(np.int32), terms, counts.astype(np.int32)
    order = np.lexsort((flat, doc_of))  # huge term ids: sort the pairs instead of packing them
    d, t = doc_of[order], flat[order]
    new = np.ones(d.size, dtype=bool)
    new[1:] = (d[1:] != d[:-1]) | (t[1:] != t[:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, d.size))
    return d[starts].astype(np.int32), t[starts], counts.astype(np.int32)


class TermIndex:
    """Append-only BM25 (lucene variant) over integer term ids, postings rebuilt lazily.

    Example:
        >>> idx = TermIndex()
        >>> idx.append([np.array([3, 7, 7]), np.array([5])])
        >>> [round(float(s), 3) for s in idx.scores(np.array([7]))]
        [0.341, 0.0]
    """

    def __init__(self, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> None:
        self.k1 = k1
        self.b = b
        # one (first doc, lengths, local doc, term, count) block per append; arrays never mutate,
        # so snapshots may share them
        self._blocks: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_docs = 0
        self._total = 0
        self._csr: tuple[np.ndarray, ...] | None = None  # (terms, indptr, docs, tf, lengths)

    def __len__(self) -> int:
        return self._n_docs

    def append(self, docs: Sequence[np.ndarray]) -> None:
        """Add documents given as 1-D int64 arrays (see :func:`check_terms`)."""
        if len(docs) == 0:
            return
        lengths = np.array([d.size for d in docs], dtype=np.int64)
        local, terms, counts = _count_terms(docs)
        self._blocks.append((self._n_docs, lengths, local, terms, counts))
        self._n_docs += len(docs)
        self._total += int(lengths.sum())
        self._csr = None

    def state(self) -> dict[str, np.ndarray]:
        """Flat copy of the index: lengths [N], and doc [P], term [P], count [P] per distinct pair."""
        if not self._blocks:
            z = np.zeros(0, dtype=np.int64)
            return {"lengths": z, "doc": z.astype(np.int32), "term": z, "count": z.astype(np.int32)}
        return {
            "lengths": np.concatenate([blk[1] for blk in self._blocks]),
            "doc": np.concatenate([blk[2] + blk[0] for blk in self._blocks]).astype(np.int32),
            "term": np.concatenate([blk[3] for blk in self._blocks]),
            "count": np.concatenate([blk[4] for blk in self._blocks]),
        }

    @classmethod
    def from_state(cls, state: dict, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> "TermIndex":
        """Inverse of :meth:`state`; checks that the arrays are consistent."""
        try:
            lengths = np.asarray(state["lengths"], dtype=np.int64)
            doc, term = np.asarray(state["doc"], dtype=np.int64), np.asarray(state["term"], dtype=np.int64)
            count = np.asarray(state["count"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as err:
            raise ShapeError(f"state: expected arrays lengths, doc, term, count ({err})") from err
        n = lengths.size
        ok = lengths.ndim == doc.ndim == term.ndim == count.ndim == 1 and doc.size == term.size == count.size
        ok = ok and (doc.size == 0 or (doc.min() >= 0 and doc.max() < n and term.min() >= 0 and count.min() > 0))
        if ok and n:
            ok = bool((np.bincount(doc, weights=count, minlength=n) == lengths).all())
        if not ok:
            raise ShapeError("state: lengths/doc/term/count are inconsistent")
        idx = cls(k1, b)
        if n:
            idx._blocks.append((0, lengths, doc.astype(np.int32), term, count.astype(np.int32)))
            idx._n_docs, idx._total = n, int(lengths.sum())
        return idx

    def _rebuild(self) -> tuple[np.ndarray, ...]:
        """Postings sorted by (term, doc): distinct terms, indptr, docs, tf, doc lengths.

        (doc, term) pairs are distinct, so one unstable sort of the packed key term * N + doc
        orders them fully; term ids too large to pack fall back to a lexsort.
        """
        st = self.state()
        n, term, doc = self._n_docs, st["term"].astype(np.int64), st["doc"]
        if term.size and int(term.max()) < 2**62 // max(n, 1):
            order = np.argsort(term * n + doc)
        else:
            order = np.lexsort((doc, term))
        t_sorted = term[order]
        new = np.ones(t_sorted.size, dtype=bool)
        new[1:] = t_sorted[1:] != t_sorted[:-1]
        starts = np.flatnonzero(new)
        indptr = np.append(starts, t_sorted.size)
        self._csr = (t_sorted[starts], indptr, doc[order], st["count"][order], st["lengths"])
        return self._csr

    def scores(self, query_terms: np.ndarray) -> np.ndarray:
        """BM25 score of every document for one query (1-D term ids, repeats count): float64 [N]."""
        n = self._n_docs
        out = np.zeros(n, dtype=np.float64)
        if n == 0 or self._total == 0 or len(query_terms) == 0:
            return out
        uniq, indptr, docs, tf, lengths = self._csr if self._csr is not None else self._rebuild()
        norm = self.k1 * (1.0 - self.b + self.b * lengths / (self._total / n))  # [N]
        q_terms, q_reps = np.unique(np.asarray(query_terms, dtype=np.int64), return_counts=True)
        pos = np.searchsorted(uniq, q_terms)
        for t, reps, p in zip(q_terms, q_reps, pos):
            if p >= uniq.size or uniq[p] != t:
                continue
            d, f = docs[indptr[p] : indptr[p + 1]], tf[indptr[p] : indptr[p + 1]].astype(np.float64)
            df = d.size
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            out[d] += reps * idf * f / (f + norm[d])  # each doc once per term: no duplicate index
        return out


def lexical_agreement(query: str, texts: Sequence[Optional[str]], content_only: bool = False) -> list[float]:
    """How well each text's words answer ``query``: BM25 with ``texts`` as the collection, divided
    by the best score, so in [0, 1] (0 for None, an empty text, or no shared word).
    ``content_only``: only the query's :func:`content_words` count, not "now", "where" or "does".

    Learned keys are weakest on names never seen in training ("the Acme kettle" and "the Acme
    bicycle" can sit at key cosine 0.85); the words a question shares with a slot's key text are
    exact evidence for them. IDF over the candidates makes a rare word ("Mini") count most, and
    length normalisation prefers the key that has no words the question lacks.

    Example:
        >>> [round(s, 2) for s in lexical_agreement("What colour is the Acme kettle?",
        ...                                         ["the Acme bicycle", "The Acme kettle", None])]
        [0.32, 1.0, 0.0]
        >>> texts = ["Mia now lives in Rome", "Mia is employed by Acme"]
        >>> [[round(s, 2) for s in lexical_agreement("Where does Mia work now?", texts, c)] for c in (False, True)]
        [[1.0, 0.24], [0.88, 1.0]]
    """
    docs = tokenize([t or "" for t in texts])
    words = tokenize([str(query)])[0]
    if content_only:
        words = [w for w in words if w not in _function_words()]  # the query's content_words, in order
    raw = bm25_reference(docs, words) if docs else []
    top = max(raw, default=0.0)
    return [r / top if top > 0 else 0.0 for r in raw]


def query_coverage(query: str, texts: Sequence[Optional[str]],
                   idf: Optional[Callable[[str], float]] = None) -> list[float]:
    """The share of the question's word weight that each text contains: the sum of the IDF of the
    question's distinct words found in a text, divided by that sum over the question's words found
    in any text, so in [0, 1] (0 for None, an empty text, or no shared word).

    Unlike :func:`lexical_agreement`, which is relative to the best candidate, this is absolute:
    pass the whole collection (e.g. every sentence of a stream) and score a subset of it, and a
    text that shares only a common word scores low even when it is the best of that subset, so it
    can feed a threshold. Words in no text (the question's own phrasing) do not count. Words are
    stemmed (Snowball English), so "live" in a question meets "lives" in a statement. ``idf``
    (stemmed word -> weight, e.g. :func:`background_idf` of a training corpus) replaces the IDF
    over ``texts``: then a word every statement of one kind repeats ("lives") weighs little even
    in a short stream.

    Example:
        >>> [round(s, 2) for s in query_coverage("Which code does Ines Aldo have?",
        ...                                      ["Ines Aldo has the code kilo", "Bex Fisk has the code echo", None])]
        [1.0, 0.19, 0.0]
    """
    toks = tokenize([str(query)] + [t or "" for t in texts], stem=True)
    docs = [set(d) for d in toks[1:]]
    n = len(docs)
    df = {w: sum(w in d for d in docs) for w in set(toks[0])}
    weight = {w: (idf(w) if idf is not None else math.log(1.0 + (n - k + 0.5) / (k + 0.5)))
              for w, k in df.items() if k > 0}
    total = sum(weight.values())
    return [sum(v for w, v in weight.items() if w in d) / total if total > 0 else 0.0 for d in docs]


def background_idf(texts: Sequence[str]) -> Callable[[str], float]:
    """IDF of stemmed words over a background corpus (one document per text): a word the corpus
    never saw gets the largest weight, log(1 + (n + 0.5) / 0.5).

    Example:
        >>> idf = background_idf(["abel lives in paris", "bria lives in rome"])
        >>> round(idf("live"), 2), round(idf("abel"), 2), round(idf("zeno"), 2)
        (0.18, 0.69, 1.79)
    """
    counts: Counter[str] = Counter()
    for doc in tokenize(list(texts), stem=True):
        counts.update(set(doc))
    n = len(texts)
    return lambda w: math.log(1.0 + (n - counts.get(w, 0) + 0.5) / (counts.get(w, 0) + 0.5))


def word_overlap(text: str, others: Sequence[Optional[str]]) -> list[float]:
    """Jaccard overlap of ``text``'s word set (:func:`tokenize`) with each of ``others``' (0 for
    None, or when either side has no word).

    Example:
        >>> word_overlap("Priya Shah", ["Priya Shah", "Priyam Shah", None])
        [1.0, 0.3333333333333333, 0.0]
    """
    toks = [set(t) for t in tokenize([text] + [o or "" for o in others])]
    return [len(toks[0] & t) / len(toks[0] | t) if toks[0] and t else 0.0 for t in toks[1:]]


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
