"""The soft relaxation agrees with the hard SlotMemory as temperature -> 0, and is differentiable."""

from __future__ import annotations

import pytest
import torch

from memadapter.errors import CapacityError, ConfigError, ShapeError
from memadapter.slots import EventType, SlotMemory, WriteAction
from experiments.soft_slots import SoftSlotConfig, SoftSlotState, soft_read, soft_write

D = 8
E = torch.eye(D, dtype=torch.float64)
TEMPERATURES = (0.1, 0.03, 0.01, 0.003, 0.001)  # above ~0.1 the error is O(1) and not monotone


def _script() -> list[tuple]:
    """Per step: (key [2, D], value [2, D], p_write [2], update [2]); rows run different lifecycles."""
    agree = lambda i: E[i] + 0.15 * E[7]  # noqa: E731  cos(E[i], agree(i)) ~ 0.99 >= 0.9
    rows = [
        # row 0: allocate A, B; reinforce A; overwrite B; allocate C; evict for D; skipped low-p write
        [(E[0], E[1], 1.0, 0), (E[2], E[3], 0.9, 0), (E[0], agree(1), 0.8, 0), (E[2], E[4], 1.0, 0),
         (E[5], E[6], 0.7, 0), (E[6], E[5], 1.0, 0), (E[3], E[3], 0.2, 0)],
        # row 1: allocate, explicit UPDATE with an agreeing value, reinforce twice, allocate, evict
        [(E[3], E[1], 0.9, 0), (E[3], agree(1), 1.0, 1), (E[3], E[1], 1.0, 0), (E[3], agree(1), 0.6, 0),
         (E[4], E[2], 1.0, 0), (E[1], E[0], 0.8, 0), (E[0], E[6], 1.0, 0)],
    ]
    steps = []
    for n in range(len(rows[0])):
        k, v, p, u = zip(*(row[n] for row in rows))
        steps.append((torch.stack(k), torch.stack(v), torch.tensor(p, dtype=torch.float64),
                      torch.tensor(u, dtype=torch.float64)))
    return steps


def _hard(steps: list, queries: torch.Tensor, top_k: int) -> tuple[SlotMemory, torch.Tensor, set]:
    mem = SlotMemory(3, D, D, batch_size=2, dtype=torch.float64)
    actions = set()
    for k, v, p, u in steps:
        event = torch.where(u > 0, int(EventType.UPDATE), -1).long()
        actions |= set(mem.write(k, v, p, event=event).action.flatten().tolist())
    readout = mem.read(queries, top_k=top_k).readout
    return mem, readout, actions


def _soft(steps: list, queries: torch.Tensor, top_k: int, T: float):
    cfg = SoftSlotConfig()
    state = SoftSlotState.empty(2, 3, D, D, dtype=torch.float64)
    for k, v, p, u in steps:
        state, _ = soft_write(state, k, v, p, config=cfg, temperature=T, update=u)
    readout, _, state = soft_read(state, queries, top_k=top_k, config=cfg, temperature=T)
    return state, readout


def _error(mem: SlotMemory, state: SoftSlotState, hard_out: torch.Tensor, soft_out: torch.Tensor) -> float:
    errs = [(soft_out - hard_out).abs().max()]
    for name in ("keys", "values", "confidence", "usage", "version", "time", "hits", "occupied"):
        errs.append((getattr(state, name) - getattr(mem, name).to(torch.float64)).abs().max())
    return float(torch.stack(errs).max())


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_soft_path_converges_to_hard_path(top_k: int) -> None:
    steps = _script()
    mem, _, _ = _hard(steps, torch.ones(2, D, dtype=torch.float64), 1)
    # queries with a clear gap at the top-K cut (error decays like sigmoid(-gap / T)): each mixes two
    # stored keys (cosines ~0.78, ~0.62, ~0), so K = 1 and K = 2 both cut between separated scores
    queries = torch.stack([mem.keys[:, 1] + 0.8 * mem.keys[:, 0], mem.keys[:, 0] + 0.8 * mem.keys[:, 2]], dim=1)
    mem, hard_out, actions = _hard(steps, queries, top_k)
    assert {WriteAction.ALLOCATED, WriteAction.REINFORCED, WriteAction.OVERWRITTEN,
            WriteAction.EVICTED, WriteAction.SKIPPED} <= actions
    errors = [_error(mem, *_soft_pair(steps, queries, top_k, T), hard_out) for T in TEMPERATURES]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-2, errors  # at high temperature the relaxation really is soft
    assert errors[-1] < 1e-6, errors


def _soft_pair(steps, queries, top_k, T):
    state, out = _soft(steps, queries, top_k, T)
    return state, out


def test_gradients_are_finite_and_nonzero() -> None:
    torch.manual_seed(0)
    cfg = SoftSlotConfig()
    keys = torch.randn(2, 4, D, requires_grad=True)
    values = torch.randn(2, 4, D, requires_grad=True)
    p = torch.full((2, 4), 0.7, requires_grad=True)
    query = torch.randn(2, D, requires_grad=True)
    state = SoftSlotState.empty(2, 3, D, D)
    with torch.no_grad():
        keys[:, 2] = keys[:, 0] + 0.1 * torch.randn(2, D)  # a near-match, so match gates have slope
    for n in range(4):
        state, _ = soft_write(state, keys[:, n], values[:, n], p[:, n], config=cfg, temperature=0.5)
    out, weights, _ = soft_read(state, query, top_k=2, config=cfg, temperature=0.5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 1))
    out.pow(2).sum().backward()
    for name, t in (("keys", keys), ("values", values), ("p_write", p), ("query", query)):
        assert torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name


def test_from_memory_round_trip_and_bad_input() -> None:
    mem = SlotMemory(3, D, D, dtype=torch.float64)
    mem.write(E[0][None], E[1][None])
    state = SoftSlotState.from_memory(mem)
    cfg = SoftSlotConfig.from_memory(mem)
    out, _, _ = soft_read(state, E[0][None], top_k=1, config=cfg, temperature=1e-3)
    assert torch.allclose(out[0, 0], mem.read(E[0][None], top_k=1).readout[0, 0])
    with pytest.raises(ConfigError):
        soft_read(state, E[0][None], top_k=1, config=cfg, temperature=0.0)
    with pytest.raises(CapacityError):
        soft_read(state, E[0][None], top_k=4, config=cfg, temperature=0.1)
    with pytest.raises(ShapeError):
        soft_write(state, E[0][None], E[1][None, :4], torch.ones(1, dtype=torch.float64), config=cfg, temperature=0.1)
