"""SlotMemory.write's batched runs against the one-at-a-time path, on long candidate lists.

Many candidates per call (as a chunk of ingest gives) with repeats of earlier keys, so runs are cut
by matches, reinforcements, retractions and evictions; states must be equal bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from memadapter.slots import _STATE_TENSORS, SlotMemory, WriteAction

B, M, D = 3, 12, 16


class _Counting(SlotMemory):
    runs = 0

    def _apply_run(self, cand, n0, d):
        self.runs += 1
        return super()._apply_run(cand, n0, d)


def _args(n: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, 6, D, generator=g)  # a few recurring keys: matches inside and across calls
    pick = torch.randint(0, 12, (B, n), generator=g)
    fresh = torch.randn(B, n, D, generator=g)
    keys = torch.where((pick < 6)[..., None], base.gather(1, pick.clamp(max=5)[..., None].expand(B, n, D)), fresh)
    values = torch.randn(B, n, D, generator=g)
    values = torch.where((torch.rand(B, n, generator=g) < 0.5)[..., None], keys, values)  # agreeing values too
    return keys + 0.01 * torch.randn(B, n, D, generator=g), values, dict(
        p_write=torch.rand(B, n, generator=g), event=torch.randint(-1, 4, (B, n), generator=g),
        importance=torch.rand(B, n, generator=g), protect=torch.rand(B, n, generator=g) < 0.1,
        mask=torch.rand(B, n, generator=g) < 0.9, chunk_id=torch.randint(0, 9, (B, n), generator=g),
        span=torch.randint(0, 99, (B, n, 2), generator=g),
        key_text=[[f"k{int(p)}" for p in row] for row in pick],
        value_text=[[None if j % 3 == 0 else f"v{j}" for j in range(n)] for _ in range(B)])


@pytest.mark.parametrize("tombstones", [False, True])
@pytest.mark.parametrize("name_weight", [0.0, 0.3])
def test_batched_runs_equal_one_at_a_time(tombstones: bool, name_weight: float) -> None:
    kw = dict(batch_size=B, tombstones=tombstones, update_name_weight=name_weight, match_threshold=0.9)
    fast, slow = _Counting(M, D, D, **kw), SlotMemory(M, D, D, **kw)
    slow.batched_writes = False
    actions = set()
    for seed, n in enumerate([20, 1, 32, 7, 40, 16, 70]):  # 70: past the run window
        keys, values, args = _args(n, seed)
        a, b = fast.write(keys, values, **args), slow.write(keys, values, **args)
        assert torch.equal(a.action, b.action) and torch.equal(a.slot, b.slot)
        actions |= set(a.action.flatten().tolist())
        for name in _STATE_TENSORS:
            assert torch.equal(getattr(fast, name), getattr(slow, name)), name
        assert fast.key_text == slow.key_text and fast.value_text == slow.value_text
    assert fast.runs > 0  # the batched path ran
    assert {int(WriteAction.ALLOCATED), int(WriteAction.EVICTED), int(WriteAction.SKIPPED)} <= actions


def test_a_run_takes_many_candidates_and_does_not_alias_a_snapshot() -> None:
    mem = _Counting(M, D, D)
    keys = torch.linalg.qr(torch.randn(D, D))[0][:10][None]  # [1, 10, D] orthonormal: ten new facts
    snap = mem.snapshot()
    res = mem.write(keys, torch.randn(1, 10, D))
    assert mem.runs == 1 and res.action.tolist() == [[int(WriteAction.ALLOCATED)] * 10]
    assert res.slot.tolist() == [list(range(10))] and int(mem.step[0]) == 10
    assert not bool(snap["occupied"].any())
