"""Checking a ChunkIndex snapshot before it is restored (memadapter/chunk_index_snapshot.py)."""

import pytest
import torch

from memadapter.chunk_index import ChunkIndex
from memadapter.chunk_index_snapshot import check_snapshot
from memadapter.errors import ConfigError, DTypeError, ShapeError


def _index() -> ChunkIndex:
    index = ChunkIndex(4)
    index.add(torch.randn(3, 4), ["alice lives in paris", "bob likes rome", None], torch.tensor([[0, 4], [4, 7], [7, 9]]))
    return index


def test_a_snapshot_checks_into_the_state_it_was_taken_from():
    index = _index()
    n, vecs, spans, texts, tokens, next_start, terms = check_snapshot(index, index.snapshot())
    assert n == 3 and torch.allclose(vecs, index.vectors) and torch.equal(spans, index.spans)
    assert texts == [index.text(i) for i in range(3)] and len(tokens) == 2 and next_start == 9 and terms is None


@pytest.mark.parametrize("edit, error, part", [
    (lambda s: [], DTypeError, "expected a dict"),
    (lambda s: {k: v for k, v in s.items() if k != "spans"}, ConfigError, "missing keys"),
    (lambda s: dict(s, dim=5), ShapeError, "dim 5"),
    (lambda s: dict(s, texts=["a"]), ShapeError, "texts"),
    (lambda s: dict(s, tokens=[["a"]]), ShapeError, "tokens"),
    (lambda s: dict(s, terms={"x": 1}), ConfigError, "both texts and terms"),
])
def test_a_malformed_snapshot_names_its_part_and_changes_nothing(edit, error, part):
    index = _index()
    before = index.snapshot()
    with pytest.raises(error, match=part):
        index.restore(edit(index.snapshot()))
    after = index.snapshot()
    assert torch.equal(after["vectors"], before["vectors"]) and after["texts"] == before["texts"]
