"""The vectorised SlotMemory against the plain-loop ReferenceSlotMemory on random operation sequences.

Keys and values are drawn near orthogonal prototypes so that every decision (match, agreement,
eviction order) sits far from a threshold; float rounding can then never flip a branch, and any
disagreement is a real difference in semantics.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from memadapter.slots import SlotMemory, _STATE_TENSORS
from memadapter.slots_reference import ReferenceSlotMemory

B, M, D = 2, 4, 8
PROTOS = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))[0]  # rows orthonormal

write_op = st.tuples(
    st.just("write"),
    st.integers(1, 3),                       # N candidates
    st.integers(0, 2**31 - 1),               # seed for the draws below
)
read_op = st.tuples(st.just("read"), st.integers(1, M), st.integers(0, 2**31 - 1))
edit_op = st.tuples(st.sampled_from(["forget", "protect", "unprotect", "forget_key"]), st.integers(0, 2**31 - 1))
ops = st.lists(st.one_of(write_op, write_op, read_op, edit_op), min_size=1, max_size=10)


def _write_args(n: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    ki = torch.randint(0, 6, (B, n), generator=g)
    vi = torch.randint(0, 3, (B, n), generator=g)
    keys = PROTOS[ki] + 0.02 * torch.randn(B, n, D, generator=g)
    values = PROTOS[vi] + 0.02 * torch.randn(B, n, D, generator=g)
    kw = dict(
        p_write=torch.tensor([0.3, 0.7, 1.0])[torch.randint(0, 3, (B, n), generator=g)],
        event=torch.randint(-1, 4, (B, n), generator=g),
        importance=torch.tensor([0.0, 0.5, 1.0])[torch.randint(0, 3, (B, n), generator=g)],
        protect=torch.rand(B, n, generator=g) < 0.2,
        mask=torch.rand(B, n, generator=g) < 0.9,
        chunk_id=torch.randint(0, 50, (B, n), generator=g),
        span=torch.randint(0, 500, (B, n, 2), generator=g),
        key_text=[[f"k{int(i)} w{int(j)}" for i, j in zip(row, words)] for row, words in
                  zip(ki, torch.randint(0, 3, (B, n), generator=g))],  # shared words, for update_name_weight
        value_text=[[f"v{int(i)}" if int(i) % 2 else None for i in row] for row in vi],
    )
    return keys, values, kw


def _apply(mem: SlotMemory, op: tuple):
    kind, seed = op[0], op[-1]
    g = torch.Generator().manual_seed(seed)
    if kind == "write":
        keys, values, kw = _write_args(op[1], seed)
        return mem.write(keys, values, **kw)
    if kind == "read":
        q = PROTOS[torch.randint(0, 6, (B, 2), generator=g)] + 0.02 * torch.randn(B, 2, D, generator=g)
        bias = 0.5 * torch.randn(B, M, generator=g) if seed % 2 else None
        return mem.read(q, top_k=op[1], update_usage=torch.rand(B, generator=g) < 0.7, bias=bias)
    sel = torch.rand(B, M, generator=g) < 0.3
    if kind == "forget":
        return mem.forget(sel)
    if kind in ("protect", "unprotect"):
        return mem.protect(sel, value=kind == "protect")
    return mem.forget_key(PROTOS[torch.randint(0, 6, (B,), generator=g)])


def _assert_results_equal(a, r) -> None:
    if a is None:
        assert r is None
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, r)
    elif hasattr(a, "action"):
        assert torch.equal(a.action, r.action) and torch.equal(a.slot, r.slot)
    else:
        assert torch.equal(a.indices, r.indices) and torch.equal(a.valid, r.valid)
        for name in ("scores", "weights", "values", "match"):
            assert torch.allclose(getattr(a, name), getattr(r, name), atol=1e-5), name


def _assert_states_equal(a: SlotMemory, r: SlotMemory) -> None:
    for name in _STATE_TENSORS:
        x, y = getattr(a, name), getattr(r, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.is_floating_point():
            assert torch.allclose(x, y, atol=1e-5), name
        else:
            assert torch.equal(x, y), name
    assert a.key_text == r.key_text and a.value_text == r.value_text


@settings(max_examples=40, deadline=None)
@given(ops=ops, alpha=st.sampled_from([None, 0.3]), aux_dim=st.sampled_from([0, 2, 4, 6]),
       tombstones=st.booleans(), update_bar=st.sampled_from([None, 0.5]), name_weight=st.sampled_from([0.0, 0.3]))
def test_vectorised_matches_reference(ops: list, alpha, aux_dim: int, tombstones: bool, update_bar,
                                      name_weight: float) -> None:
    kw = dict(batch_size=B, alpha=alpha, aux_dim=aux_dim, tombstones=tombstones, update_match_threshold=update_bar,
              update_name_weight=name_weight)
    fast, ref = SlotMemory(M, D, D, **kw), ReferenceSlotMemory(M, D, D, **kw)
    for op in ops:
        _assert_results_equal(_apply(fast, op), _apply(ref, op))
        _assert_states_equal(fast, ref)
        assert torch.allclose(fast.retention(), ref.retention(), atol=1e-6)


def test_sequences_cover_every_action() -> None:
    """The random sequences above do reach all lifecycle branches (else the comparison proves little)."""
    mem = SlotMemory(M, D, D, batch_size=B, tombstones=True)
    seen, withdrawn = set(), 0
    for seed in range(60):
        res = _apply(mem, ("write", 3, seed))
        seen |= set(res.action.flatten().tolist())
        withdrawn += int(mem.retracted.sum())
        if seed % 7 == 0:
            _apply(mem, ("protect", seed))
    assert seen == set(range(7)), seen
    assert withdrawn > 0
