"""Router: branch decision, active-set sizes, request isolation, usage side effects, typed
errors that leave the memory untouched, and calibration against its plain-loop reference."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memadapter.chunk_index import ChunkIndex
from memadapter.errors import (CapacityError, ConfigError, DTypeError, EmptyInputError,
                               NonFiniteError, ShapeError)
from memadapter.router import Router, calibrate_reference
from memadapter.slots import SlotMemory


class FakeMemory:
    """Preset match scores and valid counts; records every call (the router's view of a memory)."""

    def __init__(self, best, n_valid, num_slots=4):
        self.best = torch.tensor(best, dtype=torch.float32)
        self.n_valid = list(n_valid)
        self.batch_size, self.num_slots = len(best), num_slots
        self.calls = []

    def match(self, query):
        self.calls.append(("match", query.clone()))
        return self.best[:, None], torch.zeros(self.batch_size, 1, dtype=torch.long)

    def read(self, query, top_k, *, update_usage=True):
        self.calls.append(("read", top_k, update_usage))
        valid = torch.zeros(self.batch_size, 1, top_k, dtype=torch.bool)
        for b, n in enumerate(self.n_valid):
            valid[b, 0, :n] = True
        return SimpleNamespace(valid=valid, match=self.best[:, None])


def _indexes(batch, dim=4, n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batch):
        idx = ChunkIndex(dim)
        idx.add(torch.randn(n, dim, generator=gen), [f"req{b} chunk{i} word{i % 3}" for i in range(n)])
        out.append(idx)
    return out


def test_branch_and_active_follow_threshold_and_valid_slots():
    mem = FakeMemory([0.95, 0.5, 0.8, 0.9], n_valid=[2, 2, 1, 0])
    idx = _indexes(4)
    router = Router(match_threshold=0.8, top_k_slots=2, top_k_chunks=3, neighbours=1)
    res = router.route(mem, idx, torch.randn(4, 4))
    # row 3 matches but the read found no valid slot: it falls back
    assert res.branch == ["memory", "fallback", "memory", "fallback"]
    assert res.chunks[0] is None and res.chunks[2] is None
    assert res.active[0] == 2 and res.active[2] == 1
    for b in (1, 3):
        assert res.active[b] == res.chunks[b].num_active[0] and res.chunks[b].ids.shape == (1, 3)
    torch.testing.assert_close(res.match, mem.best)
    assert res.uses_memory.tolist() == [True, False, True, False]


def test_read_is_skipped_when_nothing_matches_and_usage_only_credits_matched_rows():
    idx = _indexes(2)
    none = FakeMemory([0.1, 0.2], [1, 1])
    res = Router().route(none, idx, torch.randn(2, 4))
    assert res.memory is None and [c[0] for c in none.calls] == ["match"]
    mixed = FakeMemory([0.9, 0.2], [1, 1])
    Router(top_k_slots=3).route(mixed, idx, torch.randn(2, 4))
    op, k, usage = mixed.calls[-1]
    assert (op, k) == ("read", 3) and usage.tolist() == [True, False]
    full = FakeMemory([0.9, 0.85], [1, 1])
    Router().route(full, idx, torch.randn(2, 4))
    op, k, usage = full.calls[-1]
    assert (op, k) == ("read", 1) and usage.tolist() == [True, True]


def _real_memory(batch, keys_per_row, dk=8):
    mem = SlotMemory(num_slots=4, key_dim=dk, value_dim=dk, batch_size=batch)
    for keys in zip(*keys_per_row):  # write the j-th key of every row together
        mem.write(torch.stack(keys), torch.stack(keys))
    return mem


def test_real_memory_rows_never_mix():
    eye = torch.eye(8)
    # row 0 holds key e0, row 1 holds e1, row 2 holds e2; every row asks for e1
    mem = _real_memory(3, [[eye[0]], [eye[1]], [eye[2]]])
    idx = _indexes(3, dim=8, seed=1)
    calls = {b: [] for b in range(3)}
    for b, index in enumerate(idx):  # spy on which query reaches which index
        orig = index.search
        index.search = lambda q, *a, _b=b, _o=orig, **k: calls[_b].append(q.clone()) or _o(q, *a, **k)
    chunk_query = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    query = eye[1].expand(3, 8).clone()
    res = Router(0.8).route(mem, idx, query, ["word1", "word2", None], chunk_query)
    assert res.branch == ["fallback", "memory", "fallback"]  # only row 1 holds e1
    assert res.memory.indices[1, 0, 0] == 0
    assert len(calls[1]) == 0
    for b in (0, 2):
        assert len(calls[b]) == 1 and torch.equal(calls[b][0], chunk_query[b])
        alone = idx[b].search(chunk_query[b], ["word1", "word2", None][b], 4)
        assert alone.ids.tolist() == res.chunks[b].ids.tolist()


def test_each_row_routes_as_if_it_were_alone():
    gen = torch.Generator().manual_seed(3)
    keys = torch.nn.functional.normalize(torch.randn(3, 2, 8, generator=gen), dim=-1)
    mem = _real_memory(3, [list(keys[b]) for b in range(3)])
    idx = _indexes(3, dim=8, seed=2)
    query = torch.stack([keys[0, 1], torch.randn(8, generator=gen), keys[2, 0]])
    texts = ["word0", "word1", "chunk2"]
    batched = Router(0.9, top_k_slots=2, top_k_chunks=2).route(mem, idx, query, texts)
    for b in range(3):
        single_mem = _real_memory(1, [list(keys[b])])
        router = Router(0.9, top_k_slots=2, top_k_chunks=2)
        alone = router.route(single_mem, [idx[b]], query[b:b + 1], [texts[b]])
        assert alone.branch[0] == batched.branch[b]
        assert int(alone.active[0]) == int(batched.active[b])
        torch.testing.assert_close(alone.match[0], batched.match[b])
        if alone.chunks[0] is not None:
            assert alone.chunks[0].ids.tolist() == batched.chunks[b].ids.tolist()
    assert batched.branch == ["memory", "fallback", "memory"]


def test_slot_bias_reaches_match_and_read():
    mem = SlotMemory(num_slots=4, key_dim=4, value_dim=4)
    mem.write(torch.eye(4)[None, :2], torch.eye(4)[None, :2])
    idx = [ChunkIndex(4)]
    query = torch.eye(4)[:1]
    assert Router(0.8).route(mem, idx, query).memory.indices.tolist() == [[[0]]]
    res = Router(0.8).route(mem, idx, query, slot_bias=torch.tensor([[0.0, 2.0, 0.0, 0.0]]))
    assert res.branch == ["memory"] and res.memory.indices.tolist() == [[[1]]] and float(res.match) == 2.0
    # evidence can also open the memory branch for a query no key matches
    far = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    assert Router(0.8).route(mem, idx, far).branch == ["fallback"]
    assert Router(0.8).route(mem, idx, far, slot_bias=torch.tensor([[0.9, 0.0, 0.0, 0.0]])).branch == ["memory"]


def test_usage_credited_to_matched_rows_only():
    eye = torch.eye(8)
    mem = _real_memory(2, [[eye[0]], [eye[1]]])
    idx = _indexes(2, dim=8)
    before = mem.usage.clone()
    Router(0.8).route(mem, idx, torch.stack([eye[0], eye[5]]))  # row 0 matches, row 1 falls back
    assert bool((mem.usage[0] > before[0]).any())
    assert torch.equal(mem.usage[1], before[1])
    before = mem.usage.clone()
    Router(0.8).route(mem, idx, torch.stack([eye[0], eye[1]]))
    assert bool((mem.usage > before).any())


@pytest.mark.parametrize("kwargs,error,word", [
    ({"query": torch.randn(3, 8)}, ShapeError, "query"),
    ({"query": torch.full((2, 8), float("nan"))}, NonFiniteError, "query"),
    ({"query": torch.ones(2, 8, dtype=torch.long)}, DTypeError, "query"),
    ({"indexes": "one"}, ShapeError, "indexes"),
    ({"indexes": [None, None]}, DTypeError, "indexes"),
    ({"chunk_query": torch.randn(2, 5)}, ShapeError, "chunk_query"),
    ({"chunk_query": torch.randn(1, 8)}, ShapeError, "chunk_query"),
    ({"query_text": ["only one"]}, ShapeError, "query_text"),
    ({"router": Router(top_k_slots=9)}, CapacityError, "top_k_slots"),
])
def test_bad_route_input_raises_typed_error_and_leaves_memory_unchanged(kwargs, error, word):
    eye = torch.eye(8)
    mem = _real_memory(2, [[eye[0]], [eye[1]]])
    args = {"indexes": _indexes(2, dim=8), "query": torch.stack([eye[0], eye[1]])}
    router = kwargs.pop("router", Router(0.8))
    args.update(kwargs)
    before = mem.snapshot()
    with pytest.raises(error, match=word):
        router.route(mem, **args)
    after = mem.snapshot()
    assert all(torch.equal(before[k], after[k]) for k in before if isinstance(before[k], torch.Tensor))


@pytest.mark.parametrize("kwargs,error", [({"match_threshold": float("nan")}, ConfigError),
                                          ({"match_threshold": "0.8"}, ConfigError),
                                          ({"top_k_slots": 0}, CapacityError),
                                          ({"top_k_chunks": 1.5}, DTypeError),
                                          ({"neighbours": -1}, CapacityError)])
def test_bad_router_config(kwargs, error):
    with pytest.raises(error):
        Router(**kwargs)


def _recall_and_false_rate(pos, neg, t):
    return sum(p >= t for p in pos) / len(pos), sum(n >= t for n in neg) / len(neg)


def test_calibrate_separable_and_edge_cases():
    pos, neg = [0.9, 0.95, 0.85], [0.1, 0.3, 0.5, 0.2]
    t = Router.calibrate(pos, neg, max_false_match=0.0)
    assert 0.5 < t <= 0.85 and t == pytest.approx(0.675)
    assert Router.calibrate(pos, neg, max_false_match=1.0) == 0.85
    # every negative outranks every positive: nothing can be recalled safely
    t = Router.calibrate([0.1, 0.2], [0.5, 0.6], max_false_match=0.0)
    assert t > 0.6 and _recall_and_false_rate([0.1, 0.2], [0.5, 0.6], t) == (0.0, 0.0)
    # one false match in four allowed: the top negative may stay above the threshold
    t = Router.calibrate([0.6, 0.7, 0.95], [0.1, 0.2, 0.3, 0.8], max_false_match=0.25)
    assert _recall_and_false_rate([0.6, 0.7, 0.95], [0.1, 0.2, 0.3, 0.8], t) == (1.0, 0.25)
    # ties at the bar are excluded together
    t = Router.calibrate([0.5, 0.9], [0.5, 0.5, 0.1], max_false_match=0.34)
    assert t > 0.5 and _recall_and_false_rate([0.5, 0.9], [0.5, 0.5, 0.1], t)[1] == 0.0


@settings(max_examples=60, deadline=None)
@given(pos=st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=1, max_size=30),
       neg=st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=1, max_size=30),
       rate=st.sampled_from([0.0, 0.01, 0.1, 0.29, 0.5, 1.0]))
def test_calibrate_matches_plain_loop_reference(pos, neg, rate):
    t = Router.calibrate(pos, neg, max_false_match=rate)
    recall, false = _recall_and_false_rate(pos, neg, t)
    best_recall, _ = calibrate_reference(pos, neg, rate)
    assert false <= rate + 1e-9
    assert recall == best_recall


def test_calibrated_threshold_transfers_to_held_out_queries():
    rng = torch.Generator().manual_seed(0)
    dk, n = 16, 8
    keys = torch.nn.functional.normalize(torch.randn(n, dk, generator=rng), dim=-1)
    mem = _real_memory(1, [list(keys)], dk=dk)  # 8 writes into a 4-slot memory keep the last 4
    stored = torch.nn.functional.normalize(mem.keys[0][mem.occupied[0]], dim=-1)

    def scores(queries):
        return mem.match(queries[None])[0][0]  # [1, Q] -> [Q]

    def noisy(base, count):
        idx = torch.randint(len(base), (count,), generator=rng)
        return torch.nn.functional.normalize(base[idx] + 0.12 * torch.randn(count, dk, generator=rng), dim=-1)

    absent = torch.nn.functional.normalize(torch.randn(400, dk, generator=rng), dim=-1)
    pos_train, pos_test = scores(noisy(stored, 200)), scores(noisy(stored, 200))
    neg_train, neg_test = scores(absent[:200]), scores(absent[200:])
    t = Router.calibrate(pos_train, neg_train, max_false_match=0.01)
    recall, false = _recall_and_false_rate(pos_test.tolist(), neg_test.tolist(), t)
    assert false <= 0.03 and recall >= 0.9


@pytest.mark.parametrize("pos,neg,kw,error", [
    ([], [0.1], {}, EmptyInputError),
    ([0.5], [float("nan")], {}, NonFiniteError),
    ([[0.5]], [0.1], {}, ShapeError),
    (["a"], [0.1], {}, DTypeError),
    ([0.5], [0.1], {"max_false_match": 1.5}, ConfigError),
    ([0.5], [0.1], {"max_false_match": -0.1}, ConfigError),
])
def test_calibrate_rejects_bad_input(pos, neg, kw, error):
    with pytest.raises(error):
        Router.calibrate(pos, neg, **kw)
