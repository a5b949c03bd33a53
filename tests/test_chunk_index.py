"""ChunkIndex: fast path against the plain-loop reference, lexical cross-check with bm25s,
neighbour expansion, abstention, growth, snapshots and typed errors that change nothing."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memadapter.bm25 import LexicalIndex, bm25_reference, tokenize
from memadapter.chunk_index import ChunkIndex, SearchResult, abstain_score
from memadapter.chunk_index_reference import reference_search
from memadapter.errors import (CapacityError, ConfigError, DTypeError, EmptyInputError,
                               NonFiniteError, ShapeError)

WORDS = ["alice", "paris", "bob", "rome", "carol", "lima", "dave", "oslo", "river", "stone",
         "lamp", "violet", "copper", "maple", "the", "and", "of"]  # last three are stopwords


def _corpus(rng: random.Random, n: int, dim: int):
    vectors = torch.randn(n, dim, generator=torch.Generator().manual_seed(rng.randrange(10**6)))
    texts = []
    for i in range(n):
        r = rng.random()
        if r < 0.15:
            texts.append(None)  # dense-only chunk
        elif r < 0.2:
            texts.append("the and of")  # text without a single token
        else:
            texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))))
    starts = rng.sample(range(0, 100 * n, 7), n)  # spans out of id order: expansion sorts by start
    spans = [[s, s + rng.randint(0, 6)] for s in starts]
    return vectors, texts, spans


def _assert_matches_reference(idx, vectors, texts, spans, query, qtexts, top_k, neighbours):
    fast = idx.search(query, qtexts, top_k=top_k, neighbours=neighbours)
    for q in range(query.shape[0]):
        ref = reference_search(vectors.tolist(), texts, spans, query[q].tolist(), qtexts[q], top_k,
                               neighbours=neighbours, dense_weight=idx.dense_weight)
        assert fast.ids[q].tolist() == ref.ids[0].tolist()
        assert fast.expanded[q] == ref.expanded[0]
        for name in ("scores", "dense", "lexical"):
            torch.testing.assert_close(getattr(fast, name)[q].double(), getattr(ref, name)[0],
                                       atol=1e-5, rtol=1e-5)
        assert abs(float(fast.abstain[q]) - float(ref.abstain[0])) < 1e-5


@pytest.mark.parametrize("top_k,neighbours,dense_weight", [(1, 0, 0.5), (3, 1, 0.3), (60, 2, 1.0),
                                                            (5, 0, 0.0)])
def test_search_matches_plain_loop_reference(top_k, neighbours, dense_weight):
    rng = random.Random(top_k * 31 + neighbours)
    vectors, texts, spans = _corpus(rng, 40, 16)
    idx = ChunkIndex(16, dense_weight=dense_weight)
    idx.add(vectors[:25], texts[:25], spans[:25])
    idx.add(vectors[25:], texts[25:], spans[25:])  # second add: lexical index must rebuild
    query = torch.randn(5, 16, generator=torch.Generator().manual_seed(top_k))
    qtexts = ["alice paris", None, "the of", "violet violet stone", "unseenword"]
    _assert_matches_reference(idx, vectors, texts, spans, query, qtexts, top_k, neighbours)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 12), top_k=st.integers(1, 14),
       neighbours=st.integers(0, 3))
def test_search_matches_reference_property(seed, n, top_k, neighbours):
    rng = random.Random(seed)
    vectors, texts, spans = _corpus(rng, n, 6)
    idx = ChunkIndex(6)
    idx.add(vectors, texts, spans)
    query = torch.randn(2, 6, generator=torch.Generator().manual_seed(seed))
    qtexts = [" ".join(rng.choice(WORDS) for _ in range(3)), None]
    _assert_matches_reference(idx, vectors, texts, spans, query, qtexts, top_k, neighbours)


def test_bm25s_agrees_with_pure_python_bm25():
    docs = tokenize(["alice lives in paris", "bob lives in rome rome", "", "the of",
                     "paris paris paris alice", "copper maple river"])
    lex = LexicalIndex()
    lex.append(docs[:3])
    lex.append(docs[3:])
    for query in (["paris"], ["paris", "paris", "alice"], ["unseen"], ["rome", "river", "lives"]):
        got = lex.scores(query).tolist()
        want = bm25_reference(docs, query)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert lex.scores([]).tolist() == [0.0] * len(docs)


def test_lexical_finds_the_needle_when_dense_is_noise():
    idx = ChunkIndex(8, dense_weight=0.0)
    texts = [f"filler text number {i} about nothing" for i in range(30)]
    texts[17] = "the secret code of the vault is copper maple"
    idx.add(torch.randn(30, 8, generator=torch.Generator().manual_seed(0)), texts)
    res = idx.search(torch.randn(8), "what is the vault code", top_k=1)
    assert res.ids.tolist() == [[17]]
    assert float(res.lexical[0, 0]) == pytest.approx(1.0)


def test_query_without_tokens_ranks_by_cosine_only():
    idx = ChunkIndex(4, dense_weight=0.2)
    idx.add(torch.eye(4), ["alice", "bob", "carol", "dave"])
    res = idx.search(torch.tensor([0.0, 0.0, 1.0, 0.1]), "the of and", top_k=4)
    assert res.ids[0, 0] == 2
    torch.testing.assert_close(res.scores, res.dense)


def test_batched_queries_equal_single_queries_and_dense_scores_is_one_matmul():
    rng = random.Random(3)
    vectors, texts, spans = _corpus(rng, 30, 12)
    idx = ChunkIndex(12)
    idx.add(vectors, texts, spans)
    query = torch.randn(4, 12, generator=torch.Generator().manual_seed(1))
    qtexts = ["alice rome", None, "lamp", "stone oslo"]
    batch = idx.search(query, qtexts, top_k=3, neighbours=1)
    for q in range(4):
        one = idx.search(query[q], qtexts[q], top_k=3, neighbours=1)
        assert one.ids[0].tolist() == batch.ids[q].tolist()
        assert one.expanded[0] == batch.expanded[q]
        torch.testing.assert_close(one.scores[0], batch.scores[q])
    cos = idx.dense_scores(query)
    want = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(vectors, dim=-1).T
    torch.testing.assert_close(cos, want)


def test_ties_rank_the_earlier_chunk_first():
    idx = ChunkIndex(3)
    idx.add(torch.ones(6, 3))
    res = idx.search(torch.ones(3), top_k=4)
    assert res.ids.tolist() == [[0, 1, 2, 3]]
    assert float(res.abstain[0]) == 1.0  # nothing stands out


def test_neighbour_expansion_dedups_clips_and_sorts_by_position():
    idx = ChunkIndex(4)
    vecs = torch.zeros(6, 4)
    vecs[0, 0] = vecs[4, 1] = 1.0
    vecs[[1, 2, 3, 5], 2] = 1.0
    spans = [[50, 60], [0, 10], [10, 20], [20, 30], [30, 40], [40, 50]]
    idx.add(vecs, spans=spans)
    res = idx.search(torch.tensor([[1.0, 0.9, 0.0, 0.0]]), top_k=2, neighbours=1)
    assert res.ids.tolist() == [[0, 4]]
    # 0 -> {0, 1}; 4 -> {3, 4, 5}; sorted by span start: 1(0) 3(20) 4(30) 5(40) 0(50)
    assert res.expanded == [[1, 3, 4, 5, 0]]
    assert res.num_active.tolist() == [5]


def test_top_k_above_size_pads_and_empty_index_returns_padding():
    idx = ChunkIndex(4)
    empty = idx.search(torch.ones(2, 4), top_k=3)
    assert empty.ids.tolist() == [[-1] * 3] * 2 and empty.expanded == [[], []]
    assert empty.abstain.tolist() == [1.0, 1.0] and empty.num_active.tolist() == [0, 0]
    idx.add(torch.eye(4)[:2], ["a b", "cc dd"])
    res = idx.search(torch.eye(4)[1], "cc", top_k=4, neighbours=3)
    assert res.ids[0, 2:].tolist() == [-1, -1] and math.isinf(float(res.scores[0, 3]))
    assert res.expanded == [[0, 1]]
    assert float(res.abstain[0]) == 0.0  # two chunks with a clear gap


def test_abstain_is_low_for_a_standout_and_high_for_a_flat_distribution():
    base = torch.linspace(0.0, 0.1, 50)
    standout = torch.cat([base, torch.tensor([0.9])])[None]  # [1, 51]
    flat = torch.cat([base, torch.tensor([0.1])])[None]
    assert float(abstain_score(standout)[0]) < 0.05
    assert float(abstain_score(flat)[0]) > 0.95
    assert abstain_score(torch.tensor([[0.3]])).tolist() == [0.0]
    scores = torch.randn(7, 20, generator=torch.Generator().manual_seed(0))
    a = abstain_score(scores)
    assert bool(((a >= 0) & (a <= 1)).all())


def test_default_spans_are_consecutive_and_continue_after_given_spans():
    idx = ChunkIndex(2, chunk_tokens=100)
    idx.add(torch.ones(2, 2))
    idx.add(torch.ones(2), spans=[200, 250])
    idx.add(torch.ones(1, 2))
    assert [idx.span(i) for i in range(4)] == [(0, 100), (100, 200), (200, 250), (250, 350)]
    assert idx.text(0) is None


def test_growth_holds_4096_chunks_and_respects_capacity():
    idx = ChunkIndex(16)
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(4096, 16, generator=gen)
    start = 0
    for size in (1, 63, 1, 700, 3331):
        ids = idx.add(data[start : start + size])
        assert ids.tolist() == list(range(start, start + size))
        start += size
    assert len(idx) == 4096
    torch.testing.assert_close(idx.vectors, torch.nn.functional.normalize(data, dim=-1))
    res = idx.search(data[1234], top_k=1)
    assert res.ids.tolist() == [[1234]]
    capped = ChunkIndex(4, capacity=100)
    capped.add(torch.randn(70, 4))
    capped.add(torch.randn(30, 4))
    assert capped._vecs.shape[0] == 100  # growth never allocates past capacity
    with pytest.raises(CapacityError, match="capacity"):
        capped.add(torch.randn(4))


def test_zero_vectors_give_zero_cosine_not_nan():
    idx = ChunkIndex(3)
    idx.add(torch.zeros(2, 3))
    res = idx.search(torch.zeros(3), top_k=2)
    assert res.dense.tolist() == [[0.0, 0.0]]


def _state(idx: ChunkIndex):
    snap = idx.snapshot()
    return (snap["vectors"].clone(), snap["spans"].clone(), list(snap["texts"]), snap["tokens"],
            snap["next_start"], len(idx))


def _same_state(a, b) -> bool:
    return (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:])


BAD_ADDS = [
    (lambda: (torch.tensor([[1.0, float("nan"), 0.0, 0.0]]),), {}, NonFiniteError, "vectors"),
    (lambda: (torch.ones(2, 4, dtype=torch.long),), {}, DTypeError, "vectors"),
    (lambda: (torch.ones(2, 5),), {}, ShapeError, "vectors"),
    (lambda: (torch.ones(2, 3, 4),), {}, ShapeError, "vectors"),
    (lambda: (torch.ones(0, 4),), {}, EmptyInputError, "vectors"),
    (lambda: ([[1.0, 0.0, 0.0, 0.0]],), {}, DTypeError, "vectors"),
    (lambda: (torch.ones(2, 4),), {"texts": ["only one"]}, ShapeError, "texts"),
    (lambda: (torch.ones(2, 4),), {"texts": "one string"}, ShapeError, "texts"),
    (lambda: (torch.ones(2, 4),), {"texts": ["ok", 3]}, DTypeError, "texts"),
    (lambda: (torch.ones(2, 4),), {"spans": [[0, 1]]}, ShapeError, "spans"),
    (lambda: (torch.ones(2, 4),), {"spans": [[0.0, 1.0], [1.0, 2.0]]}, DTypeError, "spans"),
    (lambda: (torch.ones(2, 4),), {"spans": [[5, 1], [6, 7]]}, CapacityError, "spans"),
    (lambda: (torch.ones(2, 4),), {"spans": [[-1, 1], [6, 7]]}, CapacityError, "spans"),
    (lambda: (torch.ones(3, 4),), {}, CapacityError, "capacity"),
]


@pytest.mark.parametrize("args,kwargs,error,word", BAD_ADDS)
def test_bad_add_raises_typed_error_and_leaves_index_unchanged(args, kwargs, error, word):
    idx = ChunkIndex(4, capacity=4)
    idx.add(torch.eye(4)[:2], ["alice paris", None])
    idx.search(torch.ones(4), "paris")  # build the lexical index so a stale rebuild would show
    before = _state(idx)
    with pytest.raises(error, match=word):
        idx.add(*args(), **kwargs)
    assert _same_state(before, _state(idx))
    assert idx.search(torch.ones(4), "paris", top_k=2).ids.tolist() == [[0, 1]]


@pytest.mark.parametrize("call,error,word", [
    (lambda i: i.search(torch.tensor([float("nan")] * 4)), NonFiniteError, "query"),
    (lambda i: i.search(torch.ones(3)), ShapeError, "query"),
    (lambda i: i.search(torch.ones(4, dtype=torch.int32)), DTypeError, "query"),
    (lambda i: i.search(torch.ones(0, 4)), EmptyInputError, "query"),
    (lambda i: i.search(torch.ones(4), top_k=0), CapacityError, "top_k"),
    (lambda i: i.search(torch.ones(4), top_k=-2), CapacityError, "top_k"),
    (lambda i: i.search(torch.ones(4), top_k=2.0), DTypeError, "top_k"),
    (lambda i: i.search(torch.ones(4), top_k=True), DTypeError, "top_k"),
    (lambda i: i.search(torch.ones(4), neighbours=-1), CapacityError, "neighbours"),
    (lambda i: i.search(torch.ones(2, 4), query_text=["a"]), ShapeError, "query_text"),
    (lambda i: i.search(torch.ones(2, 4), query_text="a"), ShapeError, "query_text"),
    (lambda i: i.text(5), CapacityError, "chunk_id"),
    (lambda i: i.span(-1), CapacityError, "chunk_id"),
    (lambda i: i.span("0"), DTypeError, "chunk_id"),
])
def test_bad_search_and_lookup_raise_typed_errors(call, error, word):
    idx = ChunkIndex(4)
    idx.add(torch.eye(4)[:2], ["alice", "bob"])
    with pytest.raises(error, match=word):
        call(idx)


@pytest.mark.parametrize("kwargs,error", [({"dense_weight": 1.5}, ConfigError),
                                          ({"dense_weight": float("nan")}, ConfigError),
                                          ({"capacity": 0}, CapacityError),
                                          ({"dtype": torch.int64}, DTypeError)])
def test_bad_constructor_arguments(kwargs, error):
    with pytest.raises(error):
        ChunkIndex(4, **kwargs)
    with pytest.raises(CapacityError, match="dim"):
        ChunkIndex(0)


def test_snapshot_restore_round_trip_and_independence():
    rng = random.Random(5)
    vectors, texts, spans = _corpus(rng, 20, 8)
    idx = ChunkIndex(8)
    idx.add(vectors[:12], texts[:12], spans[:12])
    query = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    qtexts = ["alice lima", "stone", None]
    before = idx.search(query, qtexts, top_k=4, neighbours=1)
    snap = idx.snapshot()
    kept = _state(idx)
    idx.add(vectors[12:], texts[12:], spans[12:])
    assert snap["vectors"].shape[0] == 12 and len(snap["texts"]) == 12  # snapshot did not move
    idx.restore(snap)
    assert len(idx) == 12 and _same_state(kept, _state(idx))
    after = idx.search(query, qtexts, top_k=4, neighbours=1)
    assert after.ids.tolist() == before.ids.tolist() and after.expanded == before.expanded
    torch.testing.assert_close(after.scores, before.scores)
    fresh = ChunkIndex(8)
    del snap["tokens"]  # a snapshot saved without tokens re-tokenises its texts
    fresh.restore(snap)
    assert fresh.search(query, qtexts, top_k=4).ids.tolist() == before.ids.tolist()


@pytest.mark.parametrize("mutate,error", [
    (lambda s: s.pop("vectors"), ConfigError),
    (lambda s: s.update(dim=9), ShapeError),
    (lambda s: s.update(vectors=s["vectors"][:, :3]), ShapeError),
    (lambda s: s.update(texts=s["texts"][:1]), ShapeError),
    (lambda s: s.update(tokens=[]), ShapeError),
    (lambda s: s.update(spans=s["spans"].float()), DTypeError),
])
def test_bad_restore_raises_and_changes_nothing(mutate, error):
    idx = ChunkIndex(8)
    idx.add(torch.randn(3, 8), ["alice", "bob", None])
    snap = idx.snapshot()
    idx.add(torch.randn(2, 8), ["carol", "dave"])
    before = _state(idx)
    mutate(snap)
    with pytest.raises(error):
        idx.restore(snap)
    assert _same_state(before, _state(idx))
    with pytest.raises(DTypeError, match="snap"):
        idx.restore([1, 2])


def test_search_result_contract_shapes():
    idx = ChunkIndex(4, dtype=torch.float64)
    idx.add(torch.randn(5, 4, dtype=torch.float16).float(), ["a1 b1"] * 5)
    res = idx.search(torch.randn(3, 4), ["b1", None, "zz"], top_k=2)
    assert isinstance(res, SearchResult)
    assert res.ids.shape == (3, 2) and res.ids.dtype == torch.long
    assert res.scores.shape == res.dense.shape == res.lexical.shape == (3, 2)
    assert res.scores.dtype == torch.float64 and res.abstain.shape == (3,)
    assert len(res.expanded) == 3 and res.num_active.dtype == torch.long


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_index_matches_cpu_index():
    rng = random.Random(9)
    vectors, texts, spans = _corpus(rng, 30, 8)
    query = torch.randn(3, 8, generator=torch.Generator().manual_seed(9))
    qtexts = ["alice rome", None, "stone"]
    results = []
    for device in ("cpu", "cuda"):
        idx = ChunkIndex(8, device=device)
        idx.add(vectors, texts, spans)
        results.append(idx.search(query, qtexts, top_k=3, neighbours=1))
    cpu, gpu = results
    assert gpu.ids.device.type == "cuda" and gpu.ids.cpu().tolist() == cpu.ids.tolist()
    assert gpu.expanded == cpu.expanded
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-5, rtol=1e-5)
