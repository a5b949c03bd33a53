"""Hostile input to RequestMemory: construction, text edits, select / forget / protect, table, restore."""

from __future__ import annotations

import pytest
import torch
from hostile_helpers import DIM, expect_rejected, filled_memory
from hypothesis import given, settings
from hypothesis import strategies as st

from memadapter.chunk_index import ChunkIndex
from memadapter.errors import CapacityError, ConfigError, DTypeError, EmptyInputError, NonFiniteError, ShapeError
from memadapter.request_memory import RequestMemory
from memadapter.slots import SlotMemory

NAN, INF = float("nan"), float("inf")


def _slots(batch=2):
    return SlotMemory(4, DIM, DIM, batch_size=batch)


INIT = [  # (case id, constructor call, error, argument)
    ("slots not SlotMemory", lambda: RequestMemory("slots", [ChunkIndex(DIM)]), DTypeError, "slots"),
    ("indexes count", lambda: RequestMemory(_slots(), [ChunkIndex(DIM)]), ShapeError, "indexes"),
    ("indexes shared", lambda: RequestMemory(_slots(), [ChunkIndex(DIM)] * 2), ShapeError, "indexes"),
    ("indexes entry", lambda: RequestMemory(_slots(), [ChunkIndex(DIM), "index"]), DTypeError, "indexes"),
    ("encode not callable", lambda: RequestMemory(_slots(1), [ChunkIndex(DIM)], encode="bow"), DTypeError, "encode"),
]


@pytest.mark.parametrize("call,error,arg", [c[1:] for c in INIT], ids=[c[0] for c in INIT])
def test_request_memory_init_rejects(call, error, arg):
    expect_rejected(call, error, arg)


CALLS = [  # (case id, call on filled_memory() (2 rows, facts, chunks), error, argument)
    ("write key_text empty", lambda m: m.write("  ", "paris"), EmptyInputError, "key_text"),
    ("write key_text int", lambda m: m.write(3, "paris"), DTypeError, "key_text"),
    ("write value_text None", lambda m: m.write("alice", None), DTypeError, "value_text"),
    ("write value_text blank", lambda m: m.write("alice", "\n\t"), EmptyInputError, "value_text"),
    ("write protect int", lambda m: m.write("alice", "rome", protect=1), DTypeError, "protect"),
    ("write importance str", lambda m: m.write("alice", "rome", importance="high"), DTypeError, "importance"),
    ("write importance nan", lambda m: m.write("alice", "rome", importance=NAN), NonFiniteError, "importance"),
    ("write importance 2", lambda m: m.write("alice", "rome", importance=2.0), ConfigError, "importance"),
    ("write row 5", lambda m: m.write("alice", "rome", row=5), CapacityError, "row"),
    ("write row -1", lambda m: m.write("alice", "rome", row=-1), CapacityError, "row"),
    ("write row []", lambda m: m.write("alice", "rome", row=[]), EmptyInputError, "row"),
    ("write row str", lambda m: m.write("alice", "rome", row="0"), DTypeError, "row"),
    ("write row bool", lambda m: m.write("alice", "rome", row=True), DTypeError, "row"),
    ("write row list out", lambda m: m.write("alice", "rome", row=[0, 7]), CapacityError, "row"),
    ("write row float", lambda m: m.write("alice", "rome", row=1.0), DTypeError, "row"),
    ("write row tensor", lambda m: m.write("alice", "rome", row=torch.tensor([0])), DTypeError, "row"),
    ("select nothing", lambda m: m.select(), EmptyInputError, "text"),
    ("select text empty", lambda m: m.select(""), EmptyInputError, "text"),
    ("select text int", lambda m: m.select(5), DTypeError, "text"),
    ("select key dim", lambda m: m.select(key=torch.ones(DIM + 2)), ShapeError, "key"),
    ("select key 2 rows", lambda m: m.select(key=torch.ones(2, DIM)), ShapeError, "key"),
    ("select key 3-D", lambda m: m.select(key=torch.ones(1, 1, DIM)), ShapeError, "key"),
    ("select key int", lambda m: m.select(key=torch.ones(DIM, dtype=torch.long)), DTypeError, "key"),
    ("select key list", lambda m: m.select(key=[1.0] * DIM), DTypeError, "key"),
    ("select key empty", lambda m: m.select(key=torch.ones(0)), EmptyInputError, "key"),
    ("select threshold str", lambda m: m.select("alice", by_key=True, threshold="high"), DTypeError, "threshold"),
    ("select by_key str", lambda m: m.select("alice", by_key="yes"), DTypeError, "by_key"),
    ("select row range", lambda m: m.select("alice", row=9), CapacityError, "row"),
    ("forget key dim", lambda m: m.forget(key=torch.ones(5)), ShapeError, "key"),
    ("forget key nan", lambda m: m.forget(key=torch.full((DIM,), NAN)), NonFiniteError, "key"),
    ("forget key inf", lambda m: m.forget(key=torch.full((DIM,), INF)), NonFiniteError, "key"),
    ("forget key zero", lambda m: m.forget(key=torch.zeros(DIM)), NonFiniteError, "key"),
    ("forget threshold str", lambda m: m.forget("alice", threshold="high"), DTypeError, "threshold"),
    ("forget threshold nan", lambda m: m.forget(key=torch.ones(DIM), threshold=NAN), NonFiniteError, "threshold"),
    ("forget threshold 1.5", lambda m: m.forget(key=torch.ones(DIM), threshold=1.5), ConfigError, "threshold"),
    ("forget threshold -2", lambda m: m.forget(key=torch.ones(DIM), threshold=-2), ConfigError, "threshold"),
    ("forget threshold bool", lambda m: m.forget(key=torch.ones(DIM), threshold=True), DTypeError, "threshold"),
    ("forget threshold tensor", lambda m: m.forget(key=torch.ones(DIM), threshold=torch.tensor(0.5)), DTypeError,
     "threshold"),
    ("forget text empty", lambda m: m.forget(""), EmptyInputError, "text"),
    ("forget row list str", lambda m: m.forget("alice", row=["0"]), DTypeError, "row"),
    ("protect text None", lambda m: m.protect(None), EmptyInputError, "text"),
    ("protect value str", lambda m: m.protect("alice", value="yes"), DTypeError, "value"),
    ("protect row range", lambda m: m.protect("alice", row=3), CapacityError, "row"),
    ("table row range", lambda m: m.table(5), CapacityError, "row"),
    ("table row list", lambda m: m.table([0]), DTypeError, "row"),
    ("table row str", lambda m: m.table("a"), DTypeError, "row"),
    ("pretty row range", lambda m: m.pretty(7), CapacityError, "row"),
]


@pytest.mark.parametrize("call,error,arg", [c[1:] for c in CALLS], ids=[c[0] for c in CALLS])
def test_request_memory_rejects(call, error, arg):
    mem = filled_memory()
    expect_rejected(lambda: call(mem), error, arg, mem)


ENCODERS = [  # (case id, encoder, error): what a text edit does with a broken encoder's output
    ("wrong dim", lambda texts, kind: torch.ones(len(texts), DIM + 1), ShapeError),
    ("nan", lambda texts, kind: torch.full((len(texts), DIM), NAN), NonFiniteError),
    ("a list", lambda texts, kind: [[1.0] * DIM for _ in texts], DTypeError),
    ("too many rows", lambda texts, kind: torch.ones(len(texts) + 1, DIM), ShapeError),
    ("int dtype", lambda texts, kind: torch.ones(len(texts), DIM, dtype=torch.long), DTypeError),
]


@pytest.mark.parametrize("encoder,error", [c[1:] for c in ENCODERS], ids=[c[0] for c in ENCODERS])
def test_request_memory_checks_the_encoders_output(encoder, error):
    mem = filled_memory()
    mem.encode = encoder
    expect_rejected(lambda: mem.write("carol city", "rome"), error, "encode", mem)


def test_request_memory_without_encoder_rejects_text_edits():
    mem = RequestMemory(_slots(1), [ChunkIndex(DIM)])
    expect_rejected(lambda: mem.write("alice", "paris"), DTypeError, "memory", mem)


def _other_index(dim=DIM):
    index = ChunkIndex(dim)
    index.add(torch.ones(1, dim), ["other"])
    return index.snapshot()


SNAPSHOTS = [  # (case id, edit of a good RequestMemory snapshot, error, the part it names)
    ("not a dict", lambda s: [s], DTypeError, "snap"),
    ("missing tokens_seen", lambda s: {k: v for k, v in s.items() if k != "tokens_seen"}, ConfigError, "snap"),
    ("missing slots", lambda s: {k: v for k, v in s.items() if k != "slots"}, ConfigError, "snap"),
    ("tokens_seen None", lambda s: {**s, "tokens_seen": None}, ShapeError, "snap['tokens_seen']"),
    ("tokens_seen negative", lambda s: {**s, "tokens_seen": [0, -4]}, ShapeError, "snap['tokens_seen']"),
    ("tokens_seen short", lambda s: {**s, "tokens_seen": [0]}, ShapeError, "snap['tokens_seen']"),
    ("tokens_seen bool", lambda s: {**s, "tokens_seen": [True, 0]}, ShapeError, "snap['tokens_seen']"),
    ("tokens_seen float", lambda s: {**s, "tokens_seen": [0.0, 1.0]}, ShapeError, "snap['tokens_seen']"),
    ("indexes count", lambda s: {**s, "indexes": s["indexes"][:1]}, ShapeError, "snap['indexes']"),
    ("indexes not a list", lambda s: {**s, "indexes": None}, ShapeError, "snap['indexes']"),
    ("second index bad", lambda s: {**s, "indexes": [s["indexes"][0], {"dim": DIM}]}, ConfigError,
     "snap['indexes'][1]"),
    ("second index other dim", lambda s: {**s, "indexes": [s["indexes"][0], _other_index(DIM + 1)]}, ShapeError,
     "snap['indexes'][1]"),
    ("first index vectors nan", lambda s: {**s, "indexes": [{**s["indexes"][0], "vectors": torch.full((2, DIM), NAN)},
                                                            s["indexes"][1]]}, NonFiniteError, "snap['indexes'][0]"),
    ("slots keys shape", lambda s: {**s, "slots": {**s["slots"], "keys": torch.zeros(2, 4, DIM + 1)}}, ShapeError,
     "snap['slots']"),
    ("slots not a dict", lambda s: {**s, "slots": None}, DTypeError, "snap['slots']"),
]


@pytest.mark.parametrize("edit,error,arg", [c[1:] for c in SNAPSHOTS], ids=[c[0] for c in SNAPSHOTS])
def test_request_memory_restore_is_all_or_nothing(edit, error, arg):
    """A bad part anywhere (even the last one checked) leaves the slots, every index and the
    offsets exactly as they were: the memory has moved on since the snapshot, and stays there."""
    mem = filled_memory()
    snap = mem.snapshot()
    mem.write("carol city", "rome", row=None)
    mem.indexes[0].add(torch.ones(1, DIM), ["carol lives in rome"])
    mem.tokens_seen = [12, 9]
    expect_rejected(lambda: mem.restore(edit(snap)), error, arg, mem)


@settings(max_examples=25, deadline=None)
@given(part=st.sampled_from(["slots", "index0", "index1", "tokens_seen"]), seed=st.integers(0, 2**16))
def test_request_memory_restore_rejects_a_broken_part_whichever_it_is(part, seed):
    mem = filled_memory()
    snap = mem.snapshot()
    mem.forget("alice")
    g = torch.Generator().manual_seed(seed)
    if part == "slots":
        field = ("keys", "values", "confidence")[int(torch.randint(3, (1,), generator=g))]
        snap["slots"][field] = snap["slots"][field][:1]  # one row short
        error, arg = ShapeError, "snap['slots']"
    elif part == "tokens_seen":
        snap["tokens_seen"] = [int(torch.randint(-100, 0, (1,), generator=g)), 0]
        error, arg = ShapeError, "snap['tokens_seen']"
    else:
        b = int(part[-1])
        n = int(torch.randint(0, 5, (1,), generator=g))  # any chunk count but the right one
        snap["indexes"][b]["vectors"] = torch.ones(n if n != 2 else 3, DIM)
        error, arg = ShapeError, f"snap['indexes'][{b}]"
    expect_rejected(lambda: mem.restore(snap), error, arg, mem)


def test_request_memory_restore_of_a_good_snapshot_still_works():
    mem = filled_memory()
    snap = mem.snapshot()
    mem.forget("bob")
    mem.tokens_seen = [99, 99]
    mem.restore(snap)
    assert [r["key_text"] for r in mem.table(1)] == ["bob color"] and mem.tokens_seen == [8, 8]
