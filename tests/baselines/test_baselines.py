"""Baselines: vectorised paths against plain loops, chunking invariance, the paper's pattern."""

import pytest
import torch

from memadapter.baselines import METHODS, build_methods
from memadapter.baselines.base import attend_ids, attend_reference
from memadapter.baselines.query_sparse import QuerySparse, select_blocks, select_blocks_reference
from memadapter.errors import ConfigError, ShapeError
from memadapter.tasks.controlled import generate
from memadapter.tasks.runner import run_method
from memadapter.tasks.vocab import WRITE, Codebook

CB = Codebook(dim=64, num_keys=256, num_values=256, num_filler=1024, seed=1)


def test_attend_ids_matches_the_materialised_loop():
    gen = torch.Generator().manual_seed(0)
    keys = torch.randint(0, CB.size, (3, 40), generator=gen)
    vals = torch.randint(0, CB.size, (3, 40), generator=gen)
    queries = torch.randn(3, 2, CB.dim, generator=gen)
    valid = torch.rand(3, 40, generator=gen) > 0.3
    valid[2] = False  # a stream with nothing to attend to returns zeros in both
    fast = attend_ids(CB, keys, vals, queries, valid)
    assert torch.allclose(fast, attend_reference(CB, keys, vals, queries, valid), atol=1e-5)
    assert torch.allclose(attend_ids(CB, keys, vals, queries), attend_reference(CB, keys, vals, queries), atol=1e-5)


def test_block_selection_matches_the_loop():
    scores = torch.randn(4, 37, generator=torch.Generator().manual_seed(2))
    fast = select_blocks(scores, 8, 3).sort(-1).values
    assert torch.equal(fast, select_blocks_reference(scores, 8, 3).sort(-1).values)


def test_query_sparse_answer_matches_its_reference():
    batch = generate("associative_recall", 6, 512, 0, CB, facts=8)
    m = QuerySparse(CB, block=32, top_k=2)
    run_method(m, batch)
    assert torch.equal(m.answer(batch.queries)[0], m.answer_reference(batch.queries))


@pytest.mark.parametrize("name", METHODS)
def test_chunk_size_does_not_change_any_answer(name):
    batch = generate("streaming_qa", 4, 512, 0, CB, events=12, pool=6)
    small = run_method(build_methods(CB, [name], chunk=32)[0], batch, feed=50)
    large = run_method(build_methods(CB, [name], chunk=32)[0], batch, feed=512)
    assert (small.correct, small.max_active) == (large.correct, large.max_active)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_recalls_one_fact_in_a_short_clean_stream(name):
    m = build_methods(CB, [name], chunk=4, window=8)[0]
    m.reset(2)
    stream = torch.tensor([[WRITE, CB.key(k), CB.value(k + 10)] + [CB.filler_base + 1] for k in (3, 4)])
    m.observe(stream)
    pred, active = m.answer(torch.tensor([[CB.key(3)], [CB.key(4)]]))
    assert pred[:, 0].tolist() == [CB.value(13), CB.value(14)]
    assert bool((active >= 1).all())


def _accuracy(task: str, names: list[str]) -> dict[str, float]:
    batch = generate(task, 16, 512, 5, CB)
    out = {}
    for m in build_methods(CB, names):
        s = run_method(m, batch)
        out[m.name] = s.correct / s.total
    return out


@pytest.mark.parametrize("task,losers", [
    ("uniform_recall", ["memory", "fifo"]),
    ("overwrite_facts", ["full_scan", "query_sparse", "chunk_sparse", "fifo", "deltanet", "linear_attention"]),
    ("distractor_pollution", ["full_scan", "query_sparse", "chunk_sparse", "fifo"]),
])
def test_hybrid_beats_each_single_route_method_on_the_task_it_fails(task, losers):
    acc = _accuracy(task, losers + ["hybrid"])
    assert acc["hybrid"] >= 0.99
    for name in losers:
        assert acc[name] <= acc["hybrid"] - 0.2, (name, acc)


def test_active_sets_are_bounded_only_for_memory_and_hybrid():
    batch = generate("associative_recall", 4, 2048, 0, CB)
    active = {m.name: run_method(m, batch).max_active for m in build_methods(CB, ["full_scan", "memory", "hybrid"])}
    assert active["full_scan"] == 2047 and active["memory"] == 1 and 1 <= active["hybrid"] <= 4


def test_bad_inputs_raise_and_leave_state_alone():
    m = build_methods(CB, ["full_scan"])[0]
    m.reset(2)
    m.observe(torch.tensor([[CB.key(1), CB.value(1)], [CB.key(2), CB.value(2)]]))
    before = m.store.ids.clone()
    with pytest.raises(ShapeError, match="tokens"):
        m.observe(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ShapeError, match="tokens"):
        m.observe(torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="tokens"):
        m.observe(torch.full((2, 4), CB.size))
    assert torch.equal(m.store.ids, before)
    with pytest.raises(ConfigError, match="batch_size"):
        m.reset(0)
    with pytest.raises(ConfigError, match="names"):
        build_methods(CB, ["nope"])


def test_chunk_scores_match_the_loop_and_tail_keeps_its_window():
    from memadapter.baselines.chunk_sparse import ChunkStore

    batch = generate("associative_recall", 3, 512, 2, CB, facts=6)
    store = ChunkStore(CB, 3, 48, 0.5)
    for chunk in batch.chunks(0, 512, 100):
        store.append(chunk)
    q = batch.queries[:, 0]
    assert torch.allclose(store.scores(q), store.scores_reference(q), atol=1e-5)
    tail = build_methods(CB, ["tail_window"], window=40)[0]
    tail.reset(3)
    for chunk in batch.chunks(0, 512, 100):
        tail.observe(chunk)
    assert torch.equal(tail.store.ids, batch.materialize()[:, -41:].int())
