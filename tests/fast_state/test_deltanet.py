import pytest
import torch

from memadapter.errors import ConfigError, ShapeError
from memadapter.fast_state import DeltaNet, reference_update

from fast_state_helpers import randn, unit_keys


@pytest.mark.parametrize("length,chunk", [(1, 4), (13, 4), (16, 4), (29, 8), (40, 64)])
def test_fast_equals_recurrent_equals_reference(length, chunk):
    mem = DeltaNet(key_dim=5, value_dim=3, chunk_size=chunk)
    s0, k, v = randn(2, 3, 5, seed=1), unit_keys(2, length, 5, seed=2), randn(2, length, 3, seed=3)
    beta = torch.rand(2, length, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    fast, rec = mem.update(s0, k, v, beta=beta), mem.recurrent_update(s0, k, v, beta=beta)
    torch.testing.assert_close(fast, rec)
    torch.testing.assert_close(rec, reference_update(mem, s0, k, v, beta=beta))


def test_random_chunk_splits_of_a_stream_agree():
    gen = torch.Generator().manual_seed(0)
    mem = DeltaNet(key_dim=8, value_dim=4, chunk_size=16)
    k, v = unit_keys(1, 300, 8, seed=5), randn(1, 300, 4, seed=6)
    whole = mem.update(mem.init_state(1, dtype=torch.float64), k, v)
    state, start = mem.init_state(1, dtype=torch.float64), 0
    while start < 300:
        step = int(torch.randint(1, 70, (1,), generator=gen))
        state = mem.update(state, k[:, start:start + step], v[:, start:start + step])
        start += step
    torch.testing.assert_close(state, whole)


def test_unit_key_overwrite_replaces_the_old_value():
    mem = DeltaNet(key_dim=4, value_dim=2)
    k = torch.eye(4, dtype=torch.float64)[None, [0, 1, 0]]
    v = torch.tensor([[[1.0, 0.0], [5.0, 5.0], [0.0, 1.0]]], dtype=torch.float64)
    out = mem.read(mem.update(mem.init_state(1, dtype=torch.float64), k, v), k[:, :2])
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0], [5.0, 5.0]]], dtype=torch.float64))


def test_beta_zero_is_a_no_op_and_bad_beta_is_rejected():
    mem = DeltaNet(key_dim=4, value_dim=2)
    s0, k, v = randn(1, 2, 4, seed=0), unit_keys(1, 5, 4, seed=1), randn(1, 5, 2, seed=2)
    torch.testing.assert_close(mem.update(s0, k, v, beta=torch.zeros(1, 5, dtype=torch.float64)), s0)
    with pytest.raises(ConfigError, match="beta"):
        mem.update(s0, k, v, beta=torch.full((1, 5), 1.5, dtype=torch.float64))
    with pytest.raises(ShapeError, match="beta"):
        mem.update(s0, k, v, beta=torch.ones(1, 4, dtype=torch.float64))
    with pytest.raises(ConfigError, match="alpha"):
        mem.update(s0, k, v, alpha=torch.ones(1, 5, dtype=torch.float64))
