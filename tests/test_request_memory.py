import pytest
import torch

from memadapter.chunk_index import ChunkIndex
from memadapter.errors import CapacityError, DTypeError, EmptyInputError, ShapeError
from memadapter.request_memory import RequestMemory
from memadapter.slots import SlotMemory

DIM = 32
_gen = torch.Generator().manual_seed(0)
_WORD_VECS: dict[str, torch.Tensor] = {}


def bag_of_words(texts, kind):
    """Deterministic toy encoder: sum of fixed random word vectors (lowercased, ' stripped)."""
    out = []
    for t in texts:
        vec = torch.zeros(DIM)
        for w in t.lower().replace("'s", "").split():
            if w not in _WORD_VECS:
                _WORD_VECS[w] = torch.randn(DIM, generator=_gen)
            vec += _WORD_VECS[w]
        out.append(vec)
    return torch.stack(out)


def make(batch=2, slots=4):
    return RequestMemory(SlotMemory(slots, DIM, DIM, batch_size=batch), [ChunkIndex(8) for _ in range(batch)], bag_of_words)


def test_write_then_newer_version_and_table():
    mem = make()
    mem.write("Alice's city", "London")
    mem.write("alice city", "Paris")  # same key in other words: a newer version of the same slot
    rows = mem.table(0)
    assert len(rows) == 1
    assert rows[0]["value_text"] == "Paris" and rows[0]["version"] == 2
    assert set(rows[0]) >= {"key_text", "value_text", "version", "confidence", "span"}
    assert mem.table(1) == []  # row 1 is another request: untouched
    text = mem.pretty(0)
    assert "key_text" in text.splitlines()[0] and "Paris" in text


def test_rows_are_isolated():
    mem = make()
    mem.write("Alice's city", "Paris", row=0)
    mem.write("Bob's city", "Rome", row=1)
    assert [r["value_text"] for r in mem.table(0)] == ["Paris"]
    assert [r["value_text"] for r in mem.table(1)] == ["Rome"]
    assert mem.forget("alice", row=1) == 0  # row 1 never saw Alice
    assert mem.forget("ALICE") == 1 and mem.table(0) == []
    assert [r["value_text"] for r in mem.table(1)] == ["Rome"]


def test_forget_by_key_vector_and_protect():
    mem = make(batch=1)
    mem.write("Alice's city", "Paris", protect=True)
    mem.write("Bob's color", "red")
    assert mem.table()[0]["protected"] is True
    assert mem.forget(key=bag_of_words(["alice city"], "key")[0]) == 1  # explicit forget beats protection
    assert [r["key_text"] for r in mem.table()] == ["Bob's color"]
    assert mem.forget("color", by_key=True) == 1


def test_bad_input_is_typed_and_changes_nothing():
    mem = make()
    mem.write("Alice's city", "Paris")
    before = mem.snapshot()
    with pytest.raises(EmptyInputError, match="key_text"):
        mem.write("  ", "Paris")
    with pytest.raises(DTypeError, match="value_text"):
        mem.write("Alice", 3)
    with pytest.raises(CapacityError, match="row"):
        mem.write("Alice", "Rome", row=5)
    with pytest.raises(EmptyInputError, match="text"):
        mem.forget("")
    with pytest.raises(CapacityError, match="row"):
        mem.table(2)
    after = mem.snapshot()
    for name, t in before["slots"].items():
        if isinstance(t, torch.Tensor):
            assert torch.equal(t, after["slots"][name]), name
    assert before["slots"]["value_text"] == after["slots"]["value_text"]


def test_snapshot_restore_round_trip():
    mem = make()
    mem.indexes[0].add(torch.randn(2, 8), ["alice lives in paris", "bob"])
    snap = mem.snapshot()
    mem.write("Alice's city", "Paris")
    mem.indexes[0].add(torch.randn(1, 8), ["carol"])
    mem.tokens_seen[0] = 99
    mem.restore(snap)
    assert mem.table(0) == [] and len(mem.indexes[0]) == 2 and mem.tokens_seen == [0, 0]


def test_construction_checks():
    with pytest.raises(ShapeError, match="indexes"):
        RequestMemory(SlotMemory(4, DIM, DIM, batch_size=2), [ChunkIndex(8)])
    shared = ChunkIndex(8)
    with pytest.raises(ShapeError, match="share"):
        RequestMemory(SlotMemory(4, DIM, DIM, batch_size=2), [shared, shared])
    no_encoder = RequestMemory(SlotMemory(4, DIM, DIM), [ChunkIndex(8)])
    with pytest.raises(DTypeError, match="encoder"):
        no_encoder.write("a", "b")
