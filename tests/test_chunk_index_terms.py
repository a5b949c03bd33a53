"""ChunkIndex's integer-term lexical path: BM25 over term ids equals the plain-loop reference and
the string path on the same documents, across lazy rebuilds and snapshots; mixing kinds fails."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memadapter.bm25 import TermIndex, bm25_reference, tokenize
from memadapter.chunk_index import ChunkIndex
from memadapter.chunk_index_reference import reference_search
from memadapter.errors import ConfigError, DTypeError, ShapeError


def _docs(rng: random.Random, n: int, vocab: int = 12) -> list:
    """Term lists with repeats, some empty, some None (dense-only chunk)."""
    out = []
    for _ in range(n):
        r = rng.random()
        out.append(None if r < 0.1 else [] if r < 0.15 else
                   [rng.randrange(vocab) for _ in range(rng.randint(1, 15))])
    return out


def _as_text(terms) -> str:
    return " ".join(f"w{t}" for t in terms)  # "w3" survives bm25s' tokeniser unchanged


def _check_against_reference(idx: ChunkIndex, vectors, terms, spans, query, qterms, top_k, neighbours):
    fast = idx.search(query, top_k=top_k, neighbours=neighbours, query_terms=qterms)
    for q in range(query.shape[0]):
        ref = reference_search(vectors.tolist(), [None] * len(terms), spans, query[q].tolist(), None,
                               top_k, neighbours=neighbours, dense_weight=idx.dense_weight,
                               terms=terms, query_terms=qterms[q])
        assert fast.ids[q].tolist() == ref.ids[0].tolist()
        assert fast.expanded[q] == ref.expanded[0]
        for name in ("scores", "dense", "lexical"):
            torch.testing.assert_close(getattr(fast, name)[q].double(), getattr(ref, name)[0], atol=1e-5, rtol=1e-5)
        assert abs(float(fast.abstain[q]) - float(ref.abstain[0])) < 1e-5


def test_term_index_equals_reference_and_rebuilds_lazily_after_more_adds():
    rng = random.Random(0)
    docs = [d for d in _docs(rng, 40) if d is not None]
    idx = TermIndex()
    idx.append([np.array(d, dtype=np.int64) for d in docs[:25]])
    for query in ([3], [3, 3, 7], [99], [5, 1, 11]):
        assert np.allclose(idx.scores(np.array(query)), bm25_reference(docs[:25], query))
    idx.append([np.array(d, dtype=np.int64) for d in docs[25:]])  # the cached postings are now stale
    for query in ([3], [3, 3, 7], [0, 2]):
        assert np.allclose(idx.scores(np.array(query)), bm25_reference(docs, query))
    # the same documents written as strings: term ids and words give the same BM25
    words = tokenize([_as_text(d) for d in docs])
    assert np.allclose(idx.scores(np.array([3, 7])), bm25_reference(words, ["w3", "w7"]))


def test_count_terms_handles_huge_term_ids_without_packing():
    docs = [np.array([2**62, 5, 2**62]), np.array([5])]
    idx = TermIndex()
    idx.append(docs)
    assert np.allclose(idx.scores(np.array([2**62])), bm25_reference([d.tolist() for d in docs], [2**62]))


@pytest.mark.parametrize("top_k,neighbours,dense_weight", [(1, 0, 0.5), (3, 1, 0.3), (50, 2, 0.0)])
def test_terms_search_matches_plain_loop_reference(top_k, neighbours, dense_weight):
    rng = random.Random(top_k)
    n, dim = 30, 6
    vectors = torch.randn(n, dim, generator=torch.Generator().manual_seed(1))
    terms = _docs(rng, n)
    spans = [[7 * i, 7 * i + 7] for i in range(n)]
    idx = ChunkIndex(dim, dense_weight=dense_weight)
    idx.add(vectors[:20], spans=spans[:20], terms=terms[:20])
    query = torch.randn(3, dim, generator=torch.Generator().manual_seed(2))
    qterms = [[3], [4, 4, 9], None]
    _check_against_reference(idx, vectors[:20], terms[:20], spans[:20], query, qterms, top_k, neighbours)
    idx.add(vectors[20:], spans=spans[20:], terms=[None if t is None else torch.tensor(t, dtype=torch.int32)
                                                    for t in terms[20:]])  # tensors work too
    _check_against_reference(idx, vectors, terms, spans, query, qterms, top_k, neighbours)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 25), top_k=st.integers(1, 6), neighbours=st.integers(0, 2))
def test_terms_search_matches_reference_property(seed, n, top_k, neighbours):
    rng = random.Random(seed)
    vectors = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    terms = _docs(rng, n, vocab=6)
    spans = [[s, s + 3] for s in rng.sample(range(0, 10 * n), n)]
    idx = ChunkIndex(4)
    idx.add(vectors, spans=spans, terms=terms)
    query = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed + 1))
    _check_against_reference(idx, vectors, terms, spans, query, [[rng.randrange(6)], []], top_k, neighbours)


def test_terms_path_ranks_like_the_string_path_on_the_same_documents():
    rng = random.Random(3)
    terms = [d if d else [1] for d in _docs(rng, 25)]
    vectors = torch.randn(25, 8, generator=torch.Generator().manual_seed(4))
    by_terms, by_text = ChunkIndex(8), ChunkIndex(8)
    by_terms.add(vectors, terms=[np.array(t) for t in terms])
    by_text.add(vectors, texts=[_as_text(t) for t in terms])
    query = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    a = by_terms.search(query, top_k=5, query_terms=[[3], [2, 8]])
    b = by_text.search(query, ["w3", "w2 w8"], top_k=5)
    assert a.ids.tolist() == b.ids.tolist()
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)  # bm25s works in float32


def test_snapshot_restore_round_trip_for_a_terms_index():
    rng = random.Random(6)
    terms = _docs(rng, 18)
    vectors = torch.randn(18, 4, generator=torch.Generator().manual_seed(6))
    idx = ChunkIndex(4)
    idx.add(vectors[:10], terms=terms[:10])
    query, qterms = torch.randn(2, 4), [[2], [5, 7]]
    before = idx.search(query, top_k=3, query_terms=qterms)
    snap = idx.snapshot()
    idx.add(vectors[10:], terms=terms[10:])
    assert len(snap["term_chunks"]) == sum(t is not None for t in terms[:10])  # snapshot did not move
    idx.restore(snap)
    after = idx.search(query, top_k=3, query_terms=qterms)
    assert after.ids.tolist() == before.ids.tolist()
    torch.testing.assert_close(after.scores, before.scores)
    idx.add(vectors[10:], terms=terms[10:])  # a restored index keeps growing and rebuilds lazily
    spans = [[512 * i, 512 * (i + 1)] for i in range(18)]
    _check_against_reference(idx, vectors, terms, spans, query, qterms, 4, 1)
    fresh = ChunkIndex(4)
    fresh.restore(idx.snapshot())
    _check_against_reference(fresh, vectors, terms, spans, query, qterms, 4, 1)


def _state(idx: ChunkIndex):
    snap = idx.snapshot()
    terms = None if snap["terms"] is None else {k: v.tolist() for k, v in snap["terms"].items()}
    return (snap["vectors"].tolist(), snap["spans"].tolist(), snap["texts"], terms, snap["term_chunks"], len(idx))


@pytest.mark.parametrize("kwargs,error,word", [
    ({"terms": [[1.0, 2.0], [3.0]]}, DTypeError, "terms[0]"),
    ({"terms": [[[1, 2]], [3]]}, ShapeError, "terms[0]"),
    ({"terms": [[1, -2], [3]]}, ConfigError, "terms[0]"),
    ({"terms": [[1]]}, ShapeError, "terms"),
    ({"terms": np.array([1, 2])}, ShapeError, "terms"),
    ({"terms": "12"}, DTypeError, "terms"),
    ({"terms": [[1], [2]], "texts": ["a word", None]}, ConfigError, "terms"),
    ({"texts": ["alice", "bob"]}, ConfigError, "texts"),
])
def test_bad_or_mixed_terms_raise_and_leave_the_index_unchanged(kwargs, error, word):
    idx = ChunkIndex(4)
    idx.add(torch.randn(2, 4), terms=[[1, 2], None])
    before = _state(idx)
    with pytest.raises(error, match=word.replace("[", r"\[").replace("]", r"\]")):
        idx.add(torch.randn(2, 4), **kwargs)
    assert _state(idx) == before


def test_query_kind_must_match_the_index_kind():
    terms_idx, text_idx = ChunkIndex(4), ChunkIndex(4)
    terms_idx.add(torch.randn(2, 4), terms=[[1], [2]])
    text_idx.add(torch.randn(2, 4), ["alice", "bob"])
    with pytest.raises(ConfigError, match="query_text"):
        terms_idx.search(torch.randn(4), "alice")
    with pytest.raises(ConfigError, match="query_terms"):
        text_idx.search(torch.randn(4), query_terms=np.array([1]))
    with pytest.raises(ConfigError, match="query_terms"):
        terms_idx.search(torch.randn(4), "w1", query_terms=np.array([1]))
    with pytest.raises(ConfigError, match="terms"):
        text_idx.add(torch.randn(1, 4), terms=[[1]])
    with pytest.raises(ShapeError, match="query_terms"):
        terms_idx.search(torch.randn(2, 4), query_terms=np.array([1]))


@pytest.mark.parametrize("mutate", [
    lambda s: s["terms"].update(count=s["terms"]["count"][:-1]),
    lambda s: s["terms"].update(lengths=s["terms"]["lengths"] + 1),
    lambda s: s.update(term_chunks=[0]),
    lambda s: s.update(term_chunks=[1, 0, 2]),
    lambda s: s.update(texts=["x", None, None]),
])
def test_bad_terms_snapshot_raises_and_changes_nothing(mutate):
    idx = ChunkIndex(4)
    idx.add(torch.randn(3, 4), terms=[[1, 1], [2], [3, 4]])
    snap = idx.snapshot()
    idx.add(torch.randn(1, 4), terms=[[5]])
    before = _state(idx)
    mutate(snap)
    with pytest.raises((ShapeError, ConfigError)):
        idx.restore(snap)
    assert _state(idx) == before


def test_router_forwards_query_terms_and_checks_them_before_reading():
    from memadapter.router import Router
    from memadapter.slots import SlotMemory

    mem = SlotMemory(num_slots=4, key_dim=4, value_dim=4, batch_size=2)
    mem.write(torch.eye(4)[:2], torch.eye(4)[:2])
    indexes = [ChunkIndex(4), ChunkIndex(4)]
    for idx in indexes:
        idx.add(torch.ones(3, 4), terms=[[1, 2], [7, 7, 3], [2]])  # equal dense: lexical decides
    router = Router(0.8, top_k_chunks=1)
    res = router.route(mem, indexes, torch.eye(4)[[0, 2]], query_terms=[None, np.array([7])])
    assert res.branch == ["memory", "fallback"] and res.chunks[1].ids.tolist() == [[1]]
    usage = mem.usage.clone()
    with pytest.raises(ShapeError, match="query_terms"):
        router.route(mem, indexes, torch.eye(4)[[0, 2]], query_terms=[np.array([7])])
    assert torch.equal(mem.usage, usage)  # rejected before the read that credits usage
