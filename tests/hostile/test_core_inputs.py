"""Hostile input to the memory core: SlotMemory and ChunkIndex (construction, edits, reads, restore)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hostile_helpers import DIM, expect_rejected, filled_memory
from hypothesis import given, settings
from hypothesis import strategies as st

from memadapter._validate import MAX_SIZES
from memadapter.chunk_index import ChunkIndex
from memadapter.errors import CapacityError, ConfigError, DTypeError, EmptyInputError, NonFiniteError, ShapeError
from memadapter.slots import _STATE_TENSORS, SlotMemory

NAN, INF = float("nan"), float("inf")
B, M = 2, 4  # filled_memory(): 2 rows of 4 slots, DIM-sized keys and values


def _t(*shape, fill=1.0, dtype=torch.float32):
    return torch.full(shape, fill, dtype=dtype)


def _keys():
    return torch.randn(B, 1, DIM, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------ SlotMemory()
SLOT_INIT = [  # keyword overrides of SlotMemory(4, DIM, DIM), error, the argument it names
    (dict(num_slots=0), CapacityError, "num_slots"),
    (dict(num_slots=-3), CapacityError, "num_slots"),
    (dict(num_slots=2.5), DTypeError, "num_slots"),
    (dict(num_slots=1e8), DTypeError, "num_slots"),
    (dict(num_slots=True), DTypeError, "num_slots"),
    (dict(num_slots=10**8), CapacityError, "num_slots"),
    (dict(num_slots=10**12), CapacityError, "num_slots"),
    (dict(key_dim=0), CapacityError, "key_dim"),
    (dict(key_dim=10**9), CapacityError, "key_dim"),
    (dict(value_dim="16"), DTypeError, "value_dim"),
    (dict(value_dim=10**7), CapacityError, "value_dim"),
    (dict(batch_size=None), DTypeError, "batch_size"),
    (dict(batch_size=10**7), CapacityError, "batch_size"),
    (dict(aux_dim=-1), CapacityError, "aux_dim"),
    (dict(aux_dim=10**6), CapacityError, "aux_dim"),
    # every size within its bound, the product far beyond any machine: refused before allocating
    (dict(num_slots=MAX_SIZES["num_slots"], key_dim=MAX_SIZES["key_dim"], value_dim=MAX_SIZES["value_dim"],
          batch_size=MAX_SIZES["batch_size"]), CapacityError, "num_slots"),
    (dict(match_threshold=NAN), ConfigError, "match_threshold"),
    (dict(match_threshold=1.5), ConfigError, "match_threshold"),
    (dict(update_match_threshold="x"), ConfigError, "update_match_threshold"),
    (dict(tombstones=1), DTypeError, "tombstones"),
    (dict(update_name_weight=-1.0), ConfigError, "update_name_weight"),
    (dict(value_threshold=INF), ConfigError, "value_threshold"),
    (dict(write_threshold=-0.1), ConfigError, "write_threshold"),
    (dict(alpha=0.0), ConfigError, "alpha"),
    (dict(read_lambda=NAN), ConfigError, "read_lambda"),
    (dict(retention_weights=(1.0, 2.0)), ConfigError, "retention_weights"),
    (dict(dtype=torch.int64), DTypeError, "dtype"),
]


@pytest.mark.parametrize("kwargs,error,arg", SLOT_INIT, ids=[f"{c[2]}={str(c[0][c[2]])[:12]}" for c in SLOT_INIT])
def test_slot_memory_init_rejects(kwargs, error, arg):
    expect_rejected(lambda: SlotMemory(**{"num_slots": 4, "key_dim": DIM, "value_dim": DIM, **kwargs}), error, arg)


# ------------------------------------------------------------------------------ SlotMemory methods
SLOT_CALLS = [  # (case id, call on a filled SlotMemory, error, argument)
    ("write keys list", lambda m: m.write([[0.0] * DIM] * B, _t(B, DIM)), DTypeError, "keys"),
    ("write keys int", lambda m: m.write(_t(B, DIM, dtype=torch.long), _t(B, DIM)), DTypeError, "keys"),
    ("write keys last dim", lambda m: m.write(_t(B, 1, DIM + 1), _t(B, 1, DIM)), ShapeError, "keys"),
    ("write keys 4-D", lambda m: m.write(_t(B, 1, 1, DIM), _t(B, 1, 1, DIM)), ShapeError, "keys"),
    ("write keys batch", lambda m: m.write(_t(B + 1, DIM), _t(B + 1, DIM)), ShapeError, "keys"),
    ("write keys nan", lambda m: m.write(_t(B, DIM, fill=NAN), _t(B, DIM)), NonFiniteError, "keys"),
    ("write keys inf", lambda m: m.write(_t(B, DIM, fill=INF), _t(B, DIM)), NonFiniteError, "keys"),
    ("write keys zero", lambda m: m.write(_t(B, DIM, fill=0.0), _t(B, DIM)), NonFiniteError, "keys"),
    ("write keys empty", lambda m: m.write(_t(B, 0, DIM), _t(B, 0, DIM)), EmptyInputError, "keys"),
    ("write values shape", lambda m: m.write(_keys(), _t(B, 2, DIM)), ShapeError, "values"),
    ("write values nan", lambda m: m.write(_keys(), _t(B, 1, DIM, fill=NAN)), NonFiniteError, "values"),
    ("write p_write > 1", lambda m: m.write(_keys(), _t(B, 1, DIM), _t(B, 1, fill=1.5)), ConfigError, "p_write"),
    ("write p_write nan", lambda m: m.write(_keys(), _t(B, 1, DIM), _t(B, 1, fill=NAN)), NonFiniteError, "p_write"),
    ("write p_write long", lambda m: m.write(_keys(), _t(B, 1, DIM), _t(B, 1, dtype=torch.long)), DTypeError,
     "p_write"),
    ("write event 7", lambda m: m.write(_keys(), _t(B, 1, DIM), event=_t(B, 1, fill=7, dtype=torch.long)),
     ConfigError, "event"),
    ("write event float", lambda m: m.write(_keys(), _t(B, 1, DIM), event=_t(B, 1)), DTypeError, "event"),
    ("write importance < 0", lambda m: m.write(_keys(), _t(B, 1, DIM), importance=_t(B, 1, fill=-0.5)),
     ConfigError, "importance"),
    ("write protect float", lambda m: m.write(_keys(), _t(B, 1, DIM), protect=_t(B, 1)), DTypeError, "protect"),
    ("write protect shape", lambda m: m.write(_keys(), _t(B, 1, DIM), protect=_t(B, 3, dtype=torch.bool)),
     ShapeError, "protect"),
    ("write chunk_id float", lambda m: m.write(_keys(), _t(B, 1, DIM), chunk_id=_t(B, 1)), DTypeError, "chunk_id"),
    ("write span shape", lambda m: m.write(_keys(), _t(B, 1, DIM), span=_t(B, 1, 3, dtype=torch.long)),
     ShapeError, "span"),
    ("write mask long", lambda m: m.write(_keys(), _t(B, 1, DIM), mask=_t(B, 1, dtype=torch.long)), DTypeError,
     "mask"),
    ("write key_text rows", lambda m: m.write(_keys(), _t(B, 1, DIM), key_text=[["a"]]), ShapeError, "key_text"),
    ("write key_text int", lambda m: m.write(_keys(), _t(B, 1, DIM), key_text=[[1], [2]]), DTypeError, "key_text"),
    ("write value_text row", lambda m: m.write(_keys(), _t(B, 1, DIM), value_text=[["a", "b"], ["c"]]), ShapeError,
     "value_text"),
    ("read top_k 0", lambda m: m.read(_t(B, DIM), 0), CapacityError, "top_k"),
    ("read top_k > slots", lambda m: m.read(_t(B, DIM), M + 1), CapacityError, "top_k"),
    ("read top_k 1e10", lambda m: m.read(_t(B, DIM), 10**10), CapacityError, "top_k"),
    ("read top_k float", lambda m: m.read(_t(B, DIM), 1.0), DTypeError, "top_k"),
    ("read query batch", lambda m: m.read(_t(B + 1, DIM), 1), ShapeError, "query"),
    ("read query nan", lambda m: m.read(_t(B, DIM, fill=NAN), 1), NonFiniteError, "query"),
    ("read query zero", lambda m: m.read(_t(B, DIM, fill=0.0), 1), NonFiniteError, "query"),
    ("read query 1-D", lambda m: m.read(_t(DIM), 1), ShapeError, "query"),
    ("read update_usage int", lambda m: m.read(_t(B, DIM), 1, update_usage=1), DTypeError, "update_usage"),
    ("read bias shape", lambda m: m.read(_t(B, DIM), 1, bias=_t(B, M + 1)), ShapeError, "bias"),
    ("read bias nan", lambda m: m.read(_t(B, DIM), 1, bias=_t(B, M, fill=NAN)), NonFiniteError, "bias"),
    ("match query last dim", lambda m: m.match(_t(B, DIM - 1)), ShapeError, "query"),
    ("scores bias inf", lambda m: m.scores(_t(B, DIM), _t(B, M, fill=INF)), NonFiniteError, "bias"),
    ("forget list", lambda m: m.forget([[0, 0]]), DTypeError, "slots"),
    ("forget float", lambda m: m.forget(_t(B, M)), DTypeError, "slots"),
    ("forget pairs range", lambda m: m.forget(torch.tensor([[0, M]])), CapacityError, "slots"),
    ("forget pairs negative", lambda m: m.forget(torch.tensor([[-1, 0]])), CapacityError, "slots"),
    ("forget pairs shape", lambda m: m.forget(torch.tensor([[0, 0, 0]])), ShapeError, "slots"),
    ("forget bool shape", lambda m: m.forget(_t(B, M + 1, dtype=torch.bool)), ShapeError, "slots"),
    ("forget_key threshold str", lambda m: m.forget_key(_t(B, DIM), threshold="high"), DTypeError, "threshold"),
    ("forget_key threshold 2", lambda m: m.forget_key(_t(B, DIM), threshold=2.0), ConfigError, "threshold"),
    ("forget_key threshold nan", lambda m: m.forget_key(_t(B, DIM), threshold=NAN), NonFiniteError, "threshold"),
    ("forget_key threshold bool", lambda m: m.forget_key(_t(B, DIM), threshold=True), DTypeError, "threshold"),
    ("forget_key key dim", lambda m: m.forget_key(_t(B, DIM + 3)), ShapeError, "key"),
    ("forget_key key nan", lambda m: m.forget_key(_t(B, DIM, fill=NAN)), NonFiniteError, "key"),
    ("forget_key key 1-D", lambda m: m.forget_key(_t(DIM)), ShapeError, "key"),
    ("forget_key key list", lambda m: m.forget_key([1.0] * DIM), DTypeError, "key"),
    ("protect value int", lambda m: m.protect(_t(B, M, dtype=torch.bool), 1), DTypeError, "value"),
    ("protect slots shape", lambda m: m.protect(_t(1, M, dtype=torch.bool)), ShapeError, "slots"),
    ("reset mask long", lambda m: m.reset(_t(B, dtype=torch.long)), DTypeError, "batch_mask"),
    ("reset mask shape", lambda m: m.reset(_t(B + 1, dtype=torch.bool)), ShapeError, "batch_mask"),
    ("table row range", lambda m: m.table(5), CapacityError, "batch_index"),
    ("table row str", lambda m: m.table("0"), DTypeError, "batch_index"),
]


@pytest.mark.parametrize("call,error,arg", [c[1:] for c in SLOT_CALLS], ids=[c[0] for c in SLOT_CALLS])
def test_slot_memory_rejects(call, error, arg):
    mem = filled_memory().slots
    expect_rejected(lambda: call(mem), error, arg, mem)


def _bad_slot_snapshots():
    """(case id, snapshot edit, error): each edit breaks one part of a good snapshot."""
    return [
        ("not a dict", lambda s: [s], DTypeError),
        ("missing entry", lambda s: {k: v for k, v in s.items() if k != "usage"}, ShapeError),
        ("keys shape", lambda s: {**s, "keys": torch.zeros(B, M, DIM + 1)}, ShapeError),
        ("keys dtype", lambda s: {**s, "keys": s["keys"].double()}, DTypeError),
        ("values nan", lambda s: {**s, "values": torch.full_like(s["values"], NAN)}, NonFiniteError),
        ("occupied list", lambda s: {**s, "occupied": s["occupied"].tolist()}, DTypeError),
        ("step shape", lambda s: {**s, "step": torch.zeros(B + 1, dtype=torch.long)}, ShapeError),
        ("key_text rows", lambda s: {**s, "key_text": s["key_text"][:1]}, ShapeError),
        ("value_text int", lambda s: {**s, "value_text": [[1] * M for _ in range(B)]}, DTypeError),
    ]


@pytest.mark.parametrize("edit,error", [c[1:] for c in _bad_slot_snapshots()], ids=[c[0] for c in _bad_slot_snapshots()])
def test_slot_memory_restore_rejects(edit, error):
    mem = filled_memory().slots
    snap = mem.snapshot()
    mem.write(_keys(), torch.randn(B, 1, DIM))  # the memory moves on; a bad snapshot must not undo that
    expect_rejected(lambda: mem.restore(edit(snap)), error, "snap", mem)


@settings(max_examples=25, deadline=None)
@given(field=st.sampled_from(_STATE_TENSORS), how=st.sampled_from(["shape", "dtype", "nonfinite", "missing"]))
def test_slot_memory_restore_rejects_any_broken_field(field, how):
    mem = filled_memory().slots
    snap = mem.snapshot()
    t = snap[field]
    if how == "nonfinite" and not t.is_floating_point():
        how = "missing"  # an integer or bool field has no NaN to hold
    if how == "shape":
        snap[field] = torch.cat([t, t[:1]])  # one row too many
    elif how == "dtype":
        snap[field] = t.to(torch.int32 if t.is_floating_point() else torch.float64)
    elif how == "nonfinite":
        snap[field] = t.clone().reshape(-1).index_fill(0, torch.tensor([0]), NAN).reshape(t.shape)
    else:
        del snap[field]
    error = {"shape": ShapeError, "dtype": DTypeError, "missing": ShapeError, "nonfinite": NonFiniteError}[how]
    mem.reset()
    expect_rejected(lambda: mem.restore(snap), error, "snap", mem)


# ------------------------------------------------------------------------------------ ChunkIndex()
INDEX_INIT = [
    (dict(dim=0), CapacityError, "dim"),
    (dict(dim=10**9), CapacityError, "dim"),
    (dict(dim=2.0), DTypeError, "dim"),
    (dict(dense_weight=1.5), ConfigError, "dense_weight"),
    (dict(dense_weight=NAN), ConfigError, "dense_weight"),
    (dict(dense_weight=True), ConfigError, "dense_weight"),
    (dict(capacity=0), CapacityError, "capacity"),
    (dict(capacity=10**12), CapacityError, "capacity"),
    (dict(chunk_tokens=-1), CapacityError, "chunk_tokens"),
    (dict(chunk_tokens=10**9), CapacityError, "chunk_tokens"),
    (dict(dtype=torch.int32), DTypeError, "dtype"),
    (dict(device="nonsense"), DTypeError, "device"),
    (dict(k1=-1.0), ConfigError, "k1"),
    (dict(k1="x"), DTypeError, "k1"),
    (dict(b=2.0), ConfigError, "b"),
    (dict(b=NAN), NonFiniteError, "b"),
]


@pytest.mark.parametrize("kwargs,error,arg", INDEX_INIT, ids=[f"{c[2]}={str(next(iter(c[0].values())))[:12]}" for c in INDEX_INIT])
def test_chunk_index_init_rejects(kwargs, error, arg):
    expect_rejected(lambda: ChunkIndex(**{"dim": DIM, **kwargs}), error, arg)


# ------------------------------------------------------------------------------ ChunkIndex methods
def _v(n=1, fill=1.0):
    return torch.full((n, DIM), fill)


INDEX_CALLS = [  # (case id, call on an index of 2 text chunks, error, argument)
    ("add vectors list", lambda i: i.add([[1.0] * DIM]), DTypeError, "vectors"),
    ("add vectors dim", lambda i: i.add(torch.ones(1, DIM + 1)), ShapeError, "vectors"),
    ("add vectors 3-D", lambda i: i.add(torch.ones(1, 1, DIM)), ShapeError, "vectors"),
    ("add vectors nan", lambda i: i.add(_v(fill=NAN), ["x"]), NonFiniteError, "vectors"),
    ("add vectors empty", lambda i: i.add(torch.ones(0, DIM)), EmptyInputError, "vectors"),
    ("add texts count", lambda i: i.add(_v(2), ["only one"]), ShapeError, "texts"),
    ("add texts int", lambda i: i.add(_v(2), ["a", 3]), DTypeError, "texts"),
    ("add texts one str for 2", lambda i: i.add(_v(2), "a b"), ShapeError, "texts"),
    ("add texts dict", lambda i: i.add(_v(1), {"a": 1}), DTypeError, "texts"),
    ("add spans float", lambda i: i.add(_v(), ["a"], torch.tensor([[0.0, 4.0]])), DTypeError, "spans"),
    ("add spans shape", lambda i: i.add(_v(), ["a"], torch.tensor([[0, 4, 8]])), ShapeError, "spans"),
    ("add spans negative", lambda i: i.add(_v(), ["a"], torch.tensor([[-4, 0]])), CapacityError, "spans"),
    ("add spans reversed", lambda i: i.add(_v(), ["a"], torch.tensor([[8, 4]])), CapacityError, "spans"),
    ("add spans str", lambda i: i.add(_v(), ["a"], "0-4"), DTypeError, "spans"),
    ("add terms on text index", lambda i: i.add(_v(), terms=[np.array([1, 2])]), ConfigError, "terms"),
    ("add texts and terms", lambda i: i.add(_v(2), ["a", None], terms=[None, np.array([1])]), ConfigError, "terms"),
    ("add terms float", lambda i: i.add(_v(), terms=[np.array([1.5])]), DTypeError, "terms"),
    ("search query dim", lambda i: i.search(torch.ones(DIM + 1)), ShapeError, "query"),
    ("search query nan", lambda i: i.search(_v(fill=NAN)), NonFiniteError, "query"),
    ("search query empty", lambda i: i.search(torch.ones(0, DIM)), EmptyInputError, "query"),
    ("search query int", lambda i: i.search(torch.ones(DIM, dtype=torch.long)), DTypeError, "query"),
    ("search top_k 0", lambda i: i.search(_v(), top_k=0), CapacityError, "top_k"),
    ("search top_k 1e10", lambda i: i.search(_v(), top_k=10**10), CapacityError, "top_k"),
    ("search top_k float", lambda i: i.search(_v(), top_k=2.5), DTypeError, "top_k"),
    ("search neighbours -1", lambda i: i.search(_v(), neighbours=-1), CapacityError, "neighbours"),
    ("search neighbours str", lambda i: i.search(_v(), neighbours="1"), DTypeError, "neighbours"),
    ("search query_text count", lambda i: i.search(_v(2), ["a"]), ShapeError, "query_text"),
    ("search query_text int", lambda i: i.search(_v(), [5]), DTypeError, "query_text"),
    ("search query_terms on text", lambda i: i.search(_v(), query_terms=np.array([1])), ConfigError, "query_terms"),
    ("text id range", lambda i: i.text(99), CapacityError, "chunk_id"),
    ("text id negative", lambda i: i.text(-1), CapacityError, "chunk_id"),
    ("span id str", lambda i: i.span("0"), DTypeError, "chunk_id"),
    ("span id float", lambda i: i.span(1.0), DTypeError, "chunk_id"),
]


def _index(capacity=None):
    index = ChunkIndex(DIM, capacity=capacity, chunk_tokens=4)
    index.add(torch.randn(2, DIM, generator=torch.Generator().manual_seed(3)), ["alice lives in paris", "bob"])
    return index


@pytest.mark.parametrize("call,error,arg", [c[1:] for c in INDEX_CALLS], ids=[c[0] for c in INDEX_CALLS])
def test_chunk_index_rejects(call, error, arg):
    index = _index()
    expect_rejected(lambda: call(index), error, arg, index)


def test_chunk_index_full_rejects_the_add():
    index = _index(capacity=2)
    expect_rejected(lambda: index.add(_v(), ["one too many"]), CapacityError, "vectors", index)


def test_chunk_index_growth_is_checked_against_the_available_memory():
    """Past its first 64 rows the index doubles its buffers; with (pretend) 10 KB free the
    doubling to 128 rows is refused before it allocates, and the index keeps its chunks."""
    index = _index()
    with mock.patch("memadapter._validate.available_memory_bytes", return_value=10_000):
        expect_rejected(lambda: index.add(torch.ones(63, DIM)), CapacityError, "vectors", index)
    assert len(index.add(torch.ones(62, DIM))) == 62  # fits the first buffer: no allocation, no check


def test_slot_memory_is_checked_against_the_available_memory():
    with mock.patch("memadapter._validate.available_memory_bytes", return_value=10_000):
        expect_rejected(lambda: SlotMemory(1024, DIM, DIM), CapacityError, "num_slots")
        assert SlotMemory(8, DIM, DIM).num_slots == 8  # a small one still fits


def test_chunk_index_absurd_neighbours_act_as_the_index_size():
    """neighbours is clamped (documented): 10**12 expands to every chunk at once, no loop over it."""
    index = _index()
    res = index.search(_v(), top_k=1, neighbours=10**12)
    assert res.expanded == [[0, 1]]
    assert index.search(_v(), top_k=5).ids.shape == (1, 5)  # top_k within bounds still pads


INDEX_SNAPSHOTS = [  # (case id, edit of a good snapshot, error)
    ("not a dict", lambda s: list(s), DTypeError),
    ("missing keys", lambda s: {"dim": DIM}, ConfigError),
    ("dim", lambda s: {**s, "dim": DIM + 1}, ShapeError),
    ("vectors dim", lambda s: {**s, "vectors": torch.zeros(2, DIM + 1)}, ShapeError),
    ("vectors nan", lambda s: {**s, "vectors": torch.full((2, DIM), NAN)}, NonFiniteError),
    ("vectors list", lambda s: {**s, "vectors": s["vectors"].tolist()}, DTypeError),
    ("spans shape", lambda s: {**s, "spans": torch.zeros(3, 2, dtype=torch.long)}, ShapeError),
    ("spans float", lambda s: {**s, "spans": s["spans"].float()}, DTypeError),
    ("texts count", lambda s: {**s, "texts": ["a"]}, ShapeError),
    ("texts int", lambda s: {**s, "texts": [1, 2]}, DTypeError),
    ("tokens count", lambda s: {**s, "tokens": [["a"]]}, ShapeError),
    ("tokens not str", lambda s: {**s, "tokens": [[1], [2]]}, ShapeError),
    ("next_start negative", lambda s: {**s, "next_start": -1}, CapacityError),
    ("next_start float", lambda s: {**s, "next_start": 1.5}, DTypeError),
    ("terms not a dict", lambda s: {**s, "texts": [None, None], "tokens": [], "terms": [1]}, DTypeError),
    ("terms with texts", lambda s: {**s, "terms": {"lengths": [1]}}, ConfigError),
]


@pytest.mark.parametrize("edit,error", [c[1:] for c in INDEX_SNAPSHOTS], ids=[c[0] for c in INDEX_SNAPSHOTS])
def test_chunk_index_restore_rejects(edit, error):
    index = _index()
    snap = index.snapshot()
    index.add(_v(), ["carol"])  # the index moves on; a bad snapshot must not undo that
    expect_rejected(lambda: index.restore(edit(snap)), error, "snap", index)


def test_chunk_index_restore_rejects_too_many_chunks_for_the_capacity():
    big = _index()
    small = ChunkIndex(DIM, capacity=1, chunk_tokens=4)
    small.add(_v(), ["one"])
    expect_rejected(lambda: small.restore(big.snapshot()), CapacityError, "snap", small)


@settings(max_examples=20, deadline=None)
@given(ids=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=6).filter(lambda v: min(v) < 0))
def test_chunk_index_rejects_negative_term_ids(ids):
    index = ChunkIndex(DIM)
    index.add(_v(), terms=[np.array([1, 2])])
    expect_rejected(lambda: index.add(_v(), terms=[np.array(ids)]), ConfigError, "terms", index)
    expect_rejected(lambda: index.search(_v(), query_terms=np.array(ids)), ConfigError, "query_terms", index)


@settings(max_examples=20, deadline=None)
@given(values=st.lists(st.sampled_from([NAN, INF, -INF]), min_size=1, max_size=3), at=st.integers(0, DIM - 1))
def test_chunk_index_rejects_non_finite_vectors_and_queries(values, at):
    index = _index()
    bad = torch.ones(len(values), DIM)
    bad[:, at] = torch.tensor(values)
    expect_rejected(lambda: index.add(bad), NonFiniteError, "vectors", index)
    expect_rejected(lambda: index.search(bad), NonFiniteError, "query", index)
