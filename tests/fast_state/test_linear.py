import pytest
import torch

from memadapter.errors import ConfigError, DTypeError, EmptyInputError, NonFiniteError, ShapeError
from memadapter.fast_state import FastStateMemory, LinearAttention, reference_update

from fast_state_helpers import randn, unit_keys


@pytest.mark.parametrize("length", [1, 7, 64, 100])
def test_fast_equals_recurrent_equals_reference(length):
    mem = LinearAttention(key_dim=5, value_dim=3)
    s0, k, v = randn(2, 3, 5, seed=1), randn(2, length, 5, seed=2), randn(2, length, 3, seed=3)
    fast, rec = mem.update(s0, k, v), mem.recurrent_update(s0, k, v)
    torch.testing.assert_close(fast, rec)
    torch.testing.assert_close(rec, reference_update(mem, s0, k, v))


def test_read_is_s_times_q_and_norm_is_frobenius():
    mem = LinearAttention(key_dim=4, value_dim=6)
    s, q = randn(3, 6, 4, seed=0), randn(3, 5, 4, seed=1)
    expected = torch.stack([torch.stack([s[b] @ q[b, i] for i in range(5)]) for b in range(3)])
    torch.testing.assert_close(mem.read(s, q), expected)
    torch.testing.assert_close(mem.state_norm(s), torch.tensor([s[b].norm() for b in range(3)], dtype=s.dtype))


def test_protocol_and_zero_init():
    mem = LinearAttention(key_dim=4, value_dim=2)
    assert isinstance(mem, FastStateMemory)
    state = mem.init_state(3, dtype=torch.float64)
    assert state.shape == (3, 2, 4) and state.dtype == torch.float64 and not state.any()


def test_norm_grows_like_sqrt_t_for_random_unit_pairs():
    mem = LinearAttention(key_dim=64, value_dim=64)
    k, v = unit_keys(4, 1000, 64, seed=0), unit_keys(4, 1000, 64, seed=1)
    norm = mem.state_norm(mem.update(mem.init_state(4, dtype=torch.float64), k, v))
    assert torch.all((norm > 0.8 * 1000**0.5) & (norm < 1.2 * 1000**0.5))


def test_bad_inputs_raise_typed_errors_and_leave_state():
    mem = LinearAttention(key_dim=4, value_dim=2)
    state = mem.init_state(2)
    before = state.clone()
    k, v = torch.randn(2, 3, 4), torch.randn(2, 3, 2)
    with pytest.raises(ShapeError, match="keys"):
        mem.update(state, torch.randn(2, 3, 5), v)
    with pytest.raises(ShapeError, match="values"):
        mem.update(state, k, torch.randn(2, 4, 2))
    with pytest.raises(ShapeError, match="batch"):
        mem.update(state, torch.randn(1, 3, 4), torch.randn(1, 3, 2))
    with pytest.raises(DTypeError, match="keys"):
        mem.update(state, k.double(), v)
    with pytest.raises(NonFiniteError, match="values"):
        mem.update(state, k, v.masked_fill(v > 0, float("nan")))
    with pytest.raises(EmptyInputError, match="keys"):
        mem.update(state, torch.randn(2, 0, 4), torch.randn(2, 0, 2))
    with pytest.raises(ConfigError, match="unknown gate"):
        mem.update(state, k, v, beta=torch.ones(2, 3))
    with pytest.raises(ShapeError, match="queries"):
        mem.read(state, torch.randn(2, 3, 3))
    assert torch.equal(state, before)
    with pytest.raises(ValueError, match="key_dim"):
        LinearAttention(key_dim=0, value_dim=2)
    with pytest.raises(DTypeError, match="dtype"):
        mem.init_state(2, dtype=torch.int64)
