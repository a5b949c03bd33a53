import pytest
import torch

from memadapter.errors import ConfigError
from memadapter.fast_state import DeltaNet, GatedDeltaNet, reference_update

from fast_state_helpers import randn, unit_keys


def _gates(length: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    alpha = 0.5 + 0.5 * torch.rand(2, length, generator=gen, dtype=torch.float64)
    return alpha, torch.rand(2, length, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("length,chunk", [(1, 4), (11, 4), (24, 8), (37, 16)])
def test_fast_equals_recurrent_equals_reference(length, chunk):
    mem = GatedDeltaNet(key_dim=6, value_dim=3, chunk_size=chunk)
    s0, k, v = randn(2, 3, 6, seed=1), unit_keys(2, length, 6, seed=2), randn(2, length, 3, seed=3)
    alpha, beta = _gates(length, seed=4)
    fast = mem.update(s0, k, v, alpha=alpha, beta=beta)
    rec = mem.recurrent_update(s0, k, v, alpha=alpha, beta=beta)
    torch.testing.assert_close(fast, rec)
    torch.testing.assert_close(rec, reference_update(mem, s0, k, v, alpha=alpha, beta=beta))


def test_strong_decay_over_a_long_chunk_stays_finite_and_exact():
    # cumulative decay 0.3**64 underflows nothing because ratios are formed in log space
    mem = GatedDeltaNet(key_dim=4, value_dim=2, chunk_size=64)
    s0, k, v = randn(1, 2, 4, seed=0), unit_keys(1, 64, 4, seed=1), randn(1, 64, 2, seed=2)
    alpha = torch.full((1, 64), 0.3, dtype=torch.float64)
    torch.testing.assert_close(mem.update(s0, k, v, alpha=alpha), mem.recurrent_update(s0, k, v, alpha=alpha))


def test_alpha_one_is_deltanet_and_alpha_decays_the_state():
    s0, k, v = randn(1, 3, 5, seed=0), unit_keys(1, 9, 5, seed=1), randn(1, 9, 3, seed=2)
    ones = torch.ones(1, 9, dtype=torch.float64)
    gated = GatedDeltaNet(key_dim=5, value_dim=3)
    torch.testing.assert_close(gated.update(s0, k, v, alpha=ones), DeltaNet(5, 3).update(s0, k, v))
    no_write = gated.update(s0, k, v, alpha=ones * 0.5, beta=ones * 0)
    torch.testing.assert_close(no_write, s0 * 0.5**9)


def test_alpha_must_be_positive():
    mem = GatedDeltaNet(key_dim=4, value_dim=2)
    s0, k, v = randn(1, 2, 4, seed=0), unit_keys(1, 3, 4, seed=1), randn(1, 3, 2, seed=2)
    with pytest.raises(ConfigError, match="alpha"):
        mem.update(s0, k, v, alpha=torch.zeros(1, 3, dtype=torch.float64))
