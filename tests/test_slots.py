"""SlotMemory: lifecycle semantics, read scoring, bad input, per-request isolation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from memadapter.errors import (
    CapacityError, ConfigError, DTypeError, EmptyInputError, MemAdapterError, NonFiniteError, ShapeError,
)
from memadapter.slots import (
    AUX_BLOCKED, AUX_CONFLICT, AUX_HITS, AUX_OVERWRITES, EventType, SlotMemory, WriteAction,
)

E = torch.eye(8)


def one(mem: SlotMemory, k: torch.Tensor, v: torch.Tensor, **kw) -> tuple[str, int]:
    """Write a single candidate into a B=1 memory; return (action name, slot)."""
    res = mem.write(k.view(1, 1, -1), v.view(1, 1, -1), **kw)
    return WriteAction(int(res.action[0, 0])).name, int(res.slot[0, 0])


def assert_same_state(a: dict, b: dict) -> None:
    for name, x in a.items():
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, b[name]), name
        else:
            assert x == b[name], name


def test_allocate_then_reinforce_uses_running_mean() -> None:
    mem = SlotMemory(4, 8, 8)
    assert one(mem, E[0], E[1]) == ("ALLOCATED", 0)
    v2 = E[1] + 0.2 * E[2]  # agrees with E[1] (cos ~0.98 >= 0.9)
    assert one(mem, E[0], v2, p_write=torch.tensor([[0.6]])) == ("REINFORCED", 0)
    # alpha = 1/(hits+1) = 1/2 after one hit: v is the mean of the two observations
    assert torch.allclose(mem.values[0, 0], (E[1] + v2) / 2)
    assert mem.version[0, 0] == 1 and mem.hits[0, 0] == 2 and mem.aux[0, 0, AUX_HITS] == 2
    assert math.isclose(float(mem.confidence[0, 0]), 1 - (1 - 1.0) * (1 - 0.5 * 0.6))
    assert int(mem.step[0]) == 2 and int(mem.time[0, 0]) == 2


def test_conflicting_value_overwrites_and_bumps_version_instead_of_averaging() -> None:
    mem = SlotMemory(4, 8, 8)
    one(mem, E[0], E[1], chunk_id=torch.tensor([[3]]), value_text=[["Berlin"]], key_text=[["Alice city"]])
    act = one(mem, E[0] * 2.0, E[5], chunk_id=torch.tensor([[7]]), span=torch.tensor([[[4, 9]]]),
              value_text=[["Paris"]])
    assert act == ("OVERWRITTEN", 0)
    assert torch.equal(mem.values[0, 0], E[5])  # replaced, not averaged
    assert int(mem.version[0, 0]) == 2 and int(mem.aux[0, 0, AUX_OVERWRITES]) == 1
    assert math.isclose(float(mem.aux[0, 0, AUX_CONFLICT]), 1.0)  # orthogonal values
    row = mem.table(0)[0]
    assert row["value_text"] == "Paris" and row["key_text"] == "Alice city"
    assert row["chunk_id"] == 7 and row["span"] == (4, 9) and row["version"] == 2


def test_explicit_events() -> None:
    mem = SlotMemory(4, 8, 8)
    one(mem, E[0], E[1])
    # explicit UPDATE overwrites even with an agreeing value
    assert one(mem, E[0], E[1], event=torch.tensor([[EventType.UPDATE]])) == ("OVERWRITTEN", 0)
    assert one(mem, E[0], E[2], event=torch.tensor([[EventType.IRRELEVANT]])) == ("SKIPPED", -1)
    assert one(mem, E[3], E[2], event=torch.tensor([[EventType.RETRACT]])) == ("SKIPPED", -1)
    assert one(mem, E[0], E[2], event=torch.tensor([[EventType.RETRACT]])) == ("RETRACTED", 0)
    assert not mem.occupied.any() and int(mem.version[0, 0]) == 0
    # UPDATE of an unknown key is a new fact
    assert one(mem, E[4], E[2], event=torch.tensor([[EventType.UPDATE]])) == ("ALLOCATED", 0)


def test_update_match_threshold_lets_updates_and_retractions_match_on_weaker_keys() -> None:
    near = F.normalize(E[0] + E[1], dim=0)  # cosine 0.71 with E[0]
    for bar, expected in ((None, "ALLOCATED"), (0.6, "OVERWRITTEN")):
        mem = SlotMemory(4, 8, 8, match_threshold=0.8, update_match_threshold=bar)
        one(mem, E[0], E[1])
        assert one(mem, near, E[2], event=torch.tensor([[EventType.UPDATE]]))[0] == expected
    # a NEW fact keeps the strict bar: at 0.71 it is another fact
    mem = SlotMemory(4, 8, 8, match_threshold=0.8, update_match_threshold=0.6)
    one(mem, E[0], E[1])
    assert one(mem, near, E[3], event=torch.tensor([[EventType.NEW]])) == ("ALLOCATED", 1)
    assert one(mem, E[0], E[2], event=torch.tensor([[EventType.RETRACT]])) == ("RETRACTED", 0)


def test_update_name_weight_sends_a_revision_to_the_slot_it_names() -> None:
    priyam, priya = E[0], F.normalize(E[0] + 0.8 * E[1], dim=0)  # look-alike keys: cosine 0.78
    update_key = F.normalize(E[0] + 0.3 * E[1], dim=0)  # nearer Priyam's key (0.96) than Priya's (0.92)
    for weight, expected in ((0.0, 0), (0.2, 1)):
        mem = SlotMemory(4, 8, 8, update_match_threshold=0.6, update_name_weight=weight)
        mem.write(torch.stack([priyam, priya])[None], E[2:4][None], key_text=[["Priyam Shah", "Priya Rao"]])
        res = mem.write(update_key[None], E[4][None], event=torch.tensor([[EventType.UPDATE]]),
                        key_text=[["Priya"]])
        assert (WriteAction(int(res.action[0, 0])).name, int(res.slot[0, 0])) == ("OVERWRITTEN", expected)
    # a NEW fact never takes the name evidence: same key, same text, its own slot only by the key
    mem = SlotMemory(4, 8, 8, update_name_weight=0.2)
    mem.write(torch.stack([priyam, priya])[None], E[2:4][None], key_text=[["Priyam Shah", "Priya Rao"]])
    res = mem.write(update_key[None], E[4][None], event=torch.tensor([[EventType.NEW]]), key_text=[["Priya"]])
    assert int(res.slot[0, 0]) == 0


def test_bias_adds_evidence_to_match_and_read_scores() -> None:
    mem = SlotMemory(4, 8, 8)
    mem.write(torch.stack([E[0], F.normalize(E[0] + 2.0 * E[1], dim=0)])[None], E[2:4][None])
    q = E[0][None]
    assert mem.match(q)[1].tolist() == [[0]]
    bias = torch.tensor([[0.0, 0.7, 0.0, 0.0]])
    best, slot = mem.match(q, bias)
    assert slot.tolist() == [[1]] and math.isclose(float(best), float(mem.keys[0, 1] @ E[0]) + 0.7, rel_tol=1e-6)
    assert torch.allclose(mem.scores(q, bias), mem.scores(q) + bias[:, None, :])
    read = mem.read(q, 1, bias=bias)
    assert read.indices.tolist() == [[[1]]] and math.isclose(float(read.match), float(best), rel_tol=1e-6)
    before = mem.snapshot()
    for bad, err in ((torch.zeros(1, 3), ShapeError), (torch.tensor([[0.0, math.nan, 0.0, 0.0]]), NonFiniteError),
                     ("x", DTypeError)):
        with pytest.raises(err, match="bias"):
            mem.read(q, 1, bias=bad)
    assert_same_state(mem.snapshot(), before)


def test_tombstones_keep_a_withdrawn_record() -> None:
    mem = SlotMemory(4, 8, 8, tombstones=True)
    one(mem, E[0], E[1], key_text=[["Alice city"]], value_text=[["Berlin"]])
    assert one(mem, E[0], E[6], event=torch.tensor([[EventType.RETRACT]]), key_text=[["Alice"]]) == ("RETRACTED", 0)
    row = mem.table(0)[0]
    assert row["retracted"] and row["value_text"] is None and row["version"] == 2 and row["key_text"] == "Alice city"
    assert torch.equal(mem.values[0, 0], E[6])  # the retraction's value is what a read now returns
    # a repeated fact after the withdrawal is a newer version, not a reinforcement of the tombstone
    assert one(mem, E[0], E[6], value_text=[["Paris"]]) == ("OVERWRITTEN", 0)
    assert not mem.table(0)[0]["retracted"] and mem.table(0)[0]["value_text"] == "Paris"
    # an unmatched retraction is placed as a tombstone of its own
    assert one(mem, E[3], E[5], event=torch.tensor([[EventType.RETRACT]])) == ("ALLOCATED", 1)
    assert bool(mem.retracted[0, 1]) and mem.table(0)[1]["value_text"] is None
    mem.forget(torch.tensor([[0, 1]]))
    assert not mem.retracted[0, 1]


def test_low_p_write_and_mask_skip_and_mask_does_not_tick_clock() -> None:
    mem = SlotMemory(4, 8, 8)
    assert one(mem, E[0], E[1], p_write=torch.tensor([[0.49]])) == ("SKIPPED", -1)
    assert int(mem.step[0]) == 1
    assert one(mem, E[0], E[1], mask=torch.tensor([[False]])) == ("SKIPPED", -1)
    assert int(mem.step[0]) == 1 and not mem.occupied.any()


def test_eviction_picks_lowest_retention_and_never_protected() -> None:
    mem = SlotMemory(3, 8, 8)
    one(mem, E[0], E[0], p_write=torch.tensor([[1.0]]), importance=torch.tensor([[1.0]]))
    one(mem, E[1], E[1], p_write=torch.tensor([[0.6]]))  # low confidence, no importance
    one(mem, E[2], E[2], p_write=torch.tensor([[1.0]]))
    ret = mem.retention()
    assert int(ret[0].argmin()) == 1
    assert one(mem, E[3], E[3]) == ("EVICTED", 1)
    assert int(mem.version[0, 1]) == 1 and torch.equal(mem.keys[0, 1], E[3])
    mem.protect(torch.tensor([[True, True, True]]))
    before = mem.snapshot()
    assert one(mem, E[4], E[4]) == ("DROPPED", -1)
    after = mem.snapshot()
    before.pop("step"), after.pop("step")
    assert_same_state(before, after)


def test_protected_slot_blocks_inferred_conflict_but_not_explicit_update() -> None:
    mem = SlotMemory(2, 8, 8)
    one(mem, E[0], E[1], protect=torch.tensor([[True]]))
    assert one(mem, E[0], E[6]) == ("SKIPPED", -1)  # inferred conflict
    assert one(mem, E[0], E[1]) == ("SKIPPED", -1)  # even agreeing evidence leaves it untouched
    assert torch.equal(mem.values[0, 0], E[1]) and int(mem.aux[0, 0, AUX_BLOCKED]) == 1
    assert one(mem, E[0], E[6], event=torch.tensor([[EventType.UPDATE]])) == ("OVERWRITTEN", 0)
    assert torch.equal(mem.values[0, 0], E[6]) and bool(mem.protected[0, 0])
    mem.protect(torch.tensor([[0, 0]]), value=False)
    assert one(mem, E[0], E[2]) == ("OVERWRITTEN", 0)


def test_candidates_in_one_call_interact_in_order() -> None:
    mem = SlotMemory(4, 8, 8)
    keys = torch.stack([E[0], E[0], E[0]])[None]  # [1, 3, 8]
    vals = torch.stack([E[1], E[1], E[2]])[None]
    res = mem.write(keys, vals)
    assert res.action.tolist() == [[WriteAction.ALLOCATED, WriteAction.REINFORCED, WriteAction.OVERWRITTEN]]
    assert res.num_writes.tolist() == [3]


def test_read_scores_topk_weights_and_usage() -> None:
    mem = SlotMemory(4, 8, 8, read_lambda=0.1, read_gamma=0.05, recency_beta=0.05)
    mem.write(E[:3][None], (E[3:6] * 2)[None], torch.tensor([[0.9, 0.6, 0.8]]))
    q = (E[1] + 0.5 * E[0])[None]  # [1, 8]
    res = mem.read(q, top_k=2)
    qn = q[0] / q[0].norm()
    expect = []
    for m in range(3):  # step 3; slot m written at time m + 1 -> recency 1/(1 + 2 - m)
        expect.append(float(qn @ E[m]) + 0.1 * float(mem.confidence[0, m]) + 0.05 / (3 - m))
    order = sorted(range(3), key=lambda m: -expect[m])[:2]
    assert res.indices[0, 0].tolist() == order
    assert torch.allclose(res.scores[0, 0], torch.tensor([expect[m] for m in order]))
    assert torch.allclose(res.weights[0, 0], torch.softmax(torch.tensor([expect[m] for m in order]), 0))
    assert torch.allclose(res.values[0, 0], mem.values[0, order])
    assert torch.allclose(mem.usage[0, order], res.weights[0, 0]) and mem.usage[0, 2 if 2 not in order else 0] >= 0
    assert math.isclose(float(res.match[0, 0]), float(qn @ E[1]), rel_tol=1e-6)
    assert torch.allclose(res.readout[0, 0], (res.weights[0, 0, :, None] * res.values[0, 0]).sum(0))


def test_read_with_fewer_occupied_than_k_and_empty_memory() -> None:
    mem = SlotMemory(4, 8, 8, batch_size=2)
    mem.write(E[0].expand(2, 8), E[1].expand(2, 8), mask=torch.tensor([True, False]))
    res = mem.read(E[0].expand(2, 8), top_k=3, update_usage=False)
    assert res.indices.tolist() == [[[0, -1, -1]], [[-1, -1, -1]]]
    assert res.valid.sum().item() == 1 and torch.isneginf(res.scores[1]).all()
    assert res.weights[0, 0].tolist() == [1.0, 0.0, 0.0] and res.weights[1].abs().sum() == 0
    assert res.values[1].abs().sum() == 0 and res.match[1, 0] == -1.0
    assert mem.usage.abs().sum() == 0
    best, slot = mem.match(E[0].expand(2, 8))
    assert slot.tolist() == [[0], [-1]] and math.isclose(float(best[0, 0]), 1.0, rel_tol=1e-6)


def test_forget_forget_key_reset_snapshot_restore() -> None:
    mem = SlotMemory(4, 8, 8, batch_size=2)
    mem.write(E[:3][None].expand(2, 3, 8), E[3:6][None].expand(2, 3, 8),
              key_text=[["a", "b", "c"], ["d", "e", "f"]])
    snap = mem.snapshot()
    mem.forget(torch.tensor([[0, 1]]))
    assert not bool(mem.occupied[0, 1]) and bool(mem.occupied[1, 1]) and mem.key_text[0][1] is None
    count = mem.forget_key(E[2].expand(2, 8))
    assert count.tolist() == [1, 1] and mem.occupied.sum() == 3
    mem.reset(torch.tensor([False, True]))
    assert mem.occupied[1].sum() == 0 and int(mem.step[1]) == 0 and mem.occupied[0].sum() == 1
    mem.restore(snap)
    assert_same_state(mem.snapshot(), snap)
    snap["keys"].zero_()  # the restored state is a copy, not a view of the snapshot
    assert mem.keys.abs().sum() > 0
    assert [r["key_text"] for r in mem.table(1)] == ["d", "e", "f"]


def _bad_calls(mem: SlotMemory):
    k, v = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    nan = k.clone()
    nan[1, 2, 0] = float("nan")
    return [
        (EmptyInputError, lambda: mem.write(torch.randn(2, 0, 8), torch.randn(2, 0, 8))),
        (NonFiniteError, lambda: mem.write(nan, v)),
        (NonFiniteError, lambda: mem.write(torch.zeros(2, 3, 8), v)),
        (ShapeError, lambda: mem.write(torch.randn(2, 3, 7), v)),
        (ShapeError, lambda: mem.write(k, torch.randn(2, 4, 8))),
        (ShapeError, lambda: mem.write(torch.randn(3, 3, 8), torch.randn(3, 3, 8))),
        (DTypeError, lambda: mem.write(k.long(), v)),
        (DTypeError, lambda: mem.write(k, v, torch.ones(2, 3, dtype=torch.long))),
        (ConfigError, lambda: mem.write(k, v, torch.full((2, 3), 1.5))),
        (ConfigError, lambda: mem.write(k, v, event=torch.full((2, 3), 9))),
        (ConfigError, lambda: mem.write(k, v, importance=torch.full((2, 3), -0.1))),
        (ShapeError, lambda: mem.write(k, v, span=torch.zeros(2, 3, dtype=torch.long))),
        (DTypeError, lambda: mem.write(k, v, mask=torch.ones(2, 3))),
        (ShapeError, lambda: mem.write(k, v, key_text=[["a"] * 3])),
        (DTypeError, lambda: mem.write(k, v, value_text=[["a", 1, None], [None] * 3])),
        (CapacityError, lambda: mem.read(k[:, 0], top_k=5)),
        (CapacityError, lambda: mem.read(k[:, 0], top_k=0)),
        (DTypeError, lambda: mem.read(k[:, 0], top_k=1.0)),
        (ShapeError, lambda: mem.read(torch.randn(2, 5), top_k=1)),
        (NonFiniteError, lambda: mem.read(nan, top_k=1)),
        (ShapeError, lambda: mem.match(torch.randn(8))),
        (CapacityError, lambda: mem.forget(torch.tensor([[0, 4]]))),
        (DTypeError, lambda: mem.forget(torch.ones(2, 4))),
        (ShapeError, lambda: mem.protect(torch.ones(2, 3, dtype=torch.bool))),
        (ShapeError, lambda: mem.forget_key(k)),
        (ConfigError, lambda: mem.forget_key(k[:, 0], threshold=2.0)),
        (ShapeError, lambda: mem.restore({**mem.snapshot(), "keys": torch.zeros(2, 4, 9)})),
        (ShapeError, lambda: mem.restore({})),
        (CapacityError, lambda: mem.table(2)),
        (ShapeError, lambda: mem.reset(torch.ones(3, dtype=torch.bool))),
    ]


def test_bad_input_raises_typed_error_and_leaves_state_unchanged() -> None:
    torch.manual_seed(0)
    mem = SlotMemory(4, 8, 8, batch_size=2)
    mem.write(torch.randn(2, 3, 8), torch.randn(2, 3, 8), key_text=[["x"] * 3] * 2)
    mem.read(torch.randn(2, 8), top_k=2)
    before = mem.snapshot()
    for i, (err, call) in enumerate(_bad_calls(mem)):
        with pytest.raises(err) as info:
            call()
        assert isinstance(info.value, MemAdapterError)
        assert str(info.value).split(":")[0].strip(), f"case {i}: message names no argument"
        assert_same_state(mem.snapshot(), before)


@pytest.mark.parametrize("kwargs, err", [
    ({"num_slots": 0}, CapacityError), ({"key_dim": -1}, CapacityError), ({"batch_size": 1.5}, DTypeError),
    ({"match_threshold": 1.5}, ConfigError), ({"write_threshold": float("nan")}, ConfigError),
    ({"update_match_threshold": -2.0}, ConfigError), ({"tombstones": 1}, DTypeError),
    ({"update_name_weight": -0.1}, ConfigError), ({"update_name_weight": float("nan")}, ConfigError),
    ({"alpha": 0.0}, ConfigError), ({"alpha": 2.0}, ConfigError), ({"dtype": torch.int64}, DTypeError),
    ({"retention_weights": (1.0, 2.0)}, ConfigError), ({"read_lambda": float("inf")}, ConfigError),
])
def test_bad_config(kwargs: dict, err: type) -> None:
    args = {"num_slots": 4, "key_dim": 8, "value_dim": 8, **kwargs}
    with pytest.raises(err):
        SlotMemory(**args)


def test_requests_are_isolated() -> None:
    """A batch of 3 memories behaves exactly like 3 separate memories, and rows never mix."""
    torch.manual_seed(1)
    B, M = 3, 3
    batched = SlotMemory(M, 8, 8, batch_size=B)
    singles = [SlotMemory(M, 8, 8) for _ in range(B)]
    for _ in range(6):
        k, v = torch.randn(B, 2, 8), torch.randn(B, 2, 8)
        k[:, 1] = k[:, 0] + 0.05 * torch.randn(B, 8)  # exercise match paths too
        p, mask = torch.rand(B, 2), torch.rand(B, 2) < 0.8
        res = batched.write(k, v, p, mask=mask)
        q = torch.randn(B, 2, 8)
        read = batched.read(q, top_k=2)
        for b, single in enumerate(singles):
            r1 = single.write(k[b:b + 1], v[b:b + 1], p[b:b + 1], mask=mask[b:b + 1])
            assert torch.equal(r1.action[0], res.action[b])
            rr = single.read(q[b:b + 1], top_k=2)
            assert torch.equal(rr.indices[0], read.indices[b])
            assert torch.allclose(rr.weights[0], read.weights[b])
            for name in ("keys", "values", "confidence", "usage", "version", "time", "occupied", "step"):
                assert torch.allclose(getattr(single, name)[0].double(), getattr(batched, name)[b].double(), atol=1e-6)
    # writes masked to row 0 change nothing in rows 1 and 2
    before = batched.snapshot()
    batched.write(torch.randn(B, 8), torch.randn(B, 8), mask=torch.tensor([True, False, False]))
    for name in ("keys", "values", "occupied", "version", "step"):
        assert torch.equal(getattr(batched, name)[1:], before[name][1:])


def test_read_usage_switch_per_row() -> None:
    mem = SlotMemory(2, 8, 8, batch_size=2)
    mem.write(E[0].expand(2, 8), E[1].expand(2, 8))
    mem.read(E[0].expand(2, 8), top_k=1, update_usage=torch.tensor([False, True]))
    assert mem.usage[:, 0].tolist() == [0.0, 1.0]
    before = mem.snapshot()
    with pytest.raises(ShapeError):
        mem.read(E[0].expand(2, 8), top_k=1, update_usage=torch.tensor([True]))
    assert_same_state(mem.snapshot(), before)
