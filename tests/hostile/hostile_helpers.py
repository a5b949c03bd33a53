"""The hostile-input catalogue (issue 27): bad input to every entry point, each case asserting a
typed ``memadapter.errors`` error that names the argument and that every memory, config and file
is unchanged (:func:`expect_rejected`, below).

437 cases (``pytest tests/hostile --collect-only -q | tail -1``), parametrized and
hypothesis-driven, over SlotMemory, ChunkIndex, RequestMemory, the model's entry points
(new_memory, ingest, generate, forward, select, encode_text) on a tiny model, and
MemAdapterConfig's fields. Each call runs in a fresh temporary working directory holding one
file, so a stray write shows up as a changed directory. Helpers live here, not in a conftest.py:
test folders here import their conftest by the shared name ``conftest``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from memadapter.chunk_index import ChunkIndex
from memadapter.errors import MemAdapterError
from memadapter.request_memory import RequestMemory
from memadapter.slots import SlotMemory

DIM = 16  # key, value and chunk-summary size of the core objects built here
_gen = torch.Generator().manual_seed(0)
_WORD_VECS: dict[str, torch.Tensor] = {}


def bag_of_words(texts: list[str], kind: str) -> torch.Tensor:
    """Deterministic toy encoder for RequestMemory: sum of fixed random word vectors [N, DIM]."""
    out = []
    for t in texts:
        vec = torch.zeros(DIM)
        for w in t.lower().replace("'s", "").split():
            if w not in _WORD_VECS:
                _WORD_VECS[w] = torch.randn(DIM, generator=_gen)
            vec += _WORD_VECS[w]
        out.append(vec)
    return torch.stack(out)


def filled_memory(batch: int = 2, slots: int = 4) -> RequestMemory:
    """A RequestMemory with facts in both rows, a protected slot and chunks in every index."""
    mem = RequestMemory(SlotMemory(slots, DIM, DIM, batch_size=batch),
                        [ChunkIndex(DIM, chunk_tokens=4) for _ in range(batch)], bag_of_words)
    mem.write("alice city", "paris", row=0)
    mem.write("bob color", "red", row=None, protect=True)
    for b, index in enumerate(mem.indexes):
        index.add(torch.randn(2, DIM, generator=torch.Generator().manual_seed(b)), ["alice lives in paris", "bob"])
        mem.tokens_seen[b] = 8
    return mem


def _state(obj: Any) -> Any:
    """A deep, comparable copy of what ``obj`` holds."""
    if isinstance(obj, (RequestMemory, SlotMemory, ChunkIndex)):
        return _copy(obj.snapshot())
    if hasattr(obj, "adapter_state_dict"):  # a MemAdapterForCausalLM: its config and adapter weights
        return {"config": obj.config.to_dict(), "weights": _copy(obj.adapter_state_dict())}
    if hasattr(obj, "to_dict"):  # a MemAdapterConfig
        return obj.to_dict()
    raise TypeError(f"no state rule for {type(obj).__name__}")


def _copy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_copy(v) for v in x)
    return x


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Exact equality of nested tensors / arrays / containers / scalars, naming the first difference."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b), f"{where} changed"
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and np.array_equal(a, b), f"{where} changed"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys changed"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: length changed"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where} changed: {a!r} -> {b!r}"


def expect_rejected(call: Callable[[], Any], error: type, arg: str, *watched: Any) -> MemAdapterError:
    """``call()`` raises ``error`` naming ``arg``; the watched objects and the files of the working
    directory (a fresh temporary one, holding one file) are unchanged."""
    assert issubclass(error, MemAdapterError), f"{error.__name__} is not a memadapter error"
    before = [_state(w) for w in watched]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "keep.json").write_text('{"kept": true}\n')
        files, cwd = _files(root), os.getcwd()
        os.chdir(root)
        try:
            with pytest.raises(MemAdapterError) as info:
                call()
        finally:
            os.chdir(cwd)
        assert_same(files, _files(root), "files")
    err = info.value
    assert isinstance(err, error), f"expected {error.__name__}, got {type(err).__name__}: {err}"
    assert re.search(rf"(?<![\w']){re.escape(arg)}(?!\w)", str(err)), f"message does not name {arg!r}: {err}"
    assert_same(before, [_state(w) for w in watched])
    return err
