"""Hybrid on the product path: it routes through Router.route, falls back through
ChunkIndex.search over token-id terms, and its vectorised fallback read equals a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memadapter.baselines.hybrid import Hybrid
from memadapter.chunk_index import ChunkIndex
from memadapter.errors import CapacityError, ConfigError
from memadapter.router import Router
from memadapter.tasks.controlled import generate
from memadapter.tasks.runner import run_method
from memadapter.tasks.vocab import Codebook

CB = Codebook(dim=64, num_keys=256, num_values=256, num_filler=1024, seed=1)


def _spy(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(cls, name, wrapper)
    return calls


@pytest.mark.parametrize("task,branch", [("uniform_recall", "fallback"), ("overwrite_facts", "memory")])
def test_hybrid_answers_through_router_route_and_chunk_index_search(monkeypatch, task, branch):
    routes = _spy(monkeypatch, Router, "route")
    searches = _spy(monkeypatch, ChunkIndex, "search")
    batch = generate(task, 4, 2048, 3, CB)
    score = run_method(Hybrid(CB, chunk=128), batch)
    assert score.correct == score.total == 4
    assert len(routes) == 1  # one question column
    assert routes[0][2].branch == [branch] * 4
    if branch == "fallback":
        assert len(searches) == 4  # one per fallback request, each with the query token as terms
        keys = batch.queries[:, 0].tolist()
        assert [int(s[1]["query_terms"][0]) for s in searches] == keys
    else:
        assert searches == []  # a matching slot answers: no chunk search at all
    assert score.max_active == int(routes[0][2].active.max())


def test_vectorised_fallback_equals_the_plain_loop_and_reads_only_selected_chunks():
    batch = generate("uniform_recall", 5, 1000, 4, CB, facts=12)  # 1000 % 96 != 0: a short last chunk
    m = Hybrid(CB, chunk=96, top_k_chunks=2, neighbours=1)
    m.reset(5)
    for chunk in batch.chunks(0, 1000, 300):
        m.observe(chunk)
    m._index(len(m.tokens))
    key = batch.queries[:, 0]
    qvec = CB.embed(key)
    route = m.router.route(m.memory, m.indexes, qvec, query_terms=key[:, None])
    assert torch.equal(m._fallback(route, qvec), m.fallback_reference(route, qvec))
    for b, pairs in enumerate(m._pairs(route)):
        allowed = {t for c in route.chunks[b].expanded[0] for t in range(*m.indexes[b].span(c))}
        assert set(pairs) <= allowed and len(route.chunks[b].expanded[0]) == int(route.active[b]) <= 6


def test_index_holds_mean_embeddings_and_token_ids_of_each_chunk():
    ids = torch.randint(0, CB.size, (2, 150), generator=torch.Generator().manual_seed(0))
    m = Hybrid(CB, chunk=64, index_batch=1)
    m.reset(2)
    m.observe(ids[:, :100])
    assert len(m.indexes[0]) == 1  # the second chunk is not complete yet
    m.observe(ids[:, 100:])
    m.answer(ids[:, :1])  # a question closes the 22-token tail as a chunk
    for b in range(2):
        idx = m.indexes[b]
        assert idx.spans.tolist() == [[0, 64], [64, 128], [128, 150]]
        for c, (s, e) in enumerate(idx.spans.tolist()):
            mean = CB.embed(ids[b, s:e]).mean(0)
            torch.testing.assert_close(idx.vectors[c], mean / mean.norm(), atol=1e-5, rtol=1e-5)
        state = idx.snapshot()["terms"]
        for c, (s, e) in enumerate(idx.spans.tolist()):
            terms, counts = np.unique(ids[b, s:e].numpy(), return_counts=True)
            mine = state["doc"] == c
            assert state["term"][mine].tolist() == terms.tolist()
            assert state["count"][mine].tolist() == counts.tolist()


def test_empty_stream_answers_nothing_and_bad_config_raises():
    m = Hybrid(CB)
    m.reset(2)
    pred, active = m.answer(torch.tensor([[CB.key(1)], [CB.key(2)]]))
    assert pred.tolist() == [[-1], [-1]] and active.tolist() == [[0], [0]]
    with pytest.raises(ConfigError, match="dense_weight"):
        Hybrid(CB, dense_weight=1.5)
    with pytest.raises(ConfigError, match="dense_weight"):
        Hybrid(CB, dense_weight="high")
    with pytest.raises(CapacityError, match="top_k_chunks"):
        Hybrid(CB, top_k_chunks=0)
