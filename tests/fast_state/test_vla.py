import pytest
import torch

from memadapter.errors import ConfigError, ShapeError
from memadapter.fast_state import VLA, LinearAttention, VLAState, reference_update, vla_step

from fast_state_helpers import randn, unit_keys


def _warm_state(mem: VLA, batch: int = 2) -> VLAState:
    # a state with non-trivial S and P, so the comparisons do not start from zeros
    state = mem.init_state(batch, dtype=torch.float64)
    return mem.recurrent_update(state, randn(batch, 4, mem.key_dim, seed=9), randn(batch, 4, mem.value_dim, seed=8))


@pytest.mark.parametrize("length,chunk,forget", [(1, 4, 1.0), (13, 4, 1.0), (24, 8, 0.95), (37, 16, 0.7)])
def test_fast_equals_recurrent_equals_reference(length, chunk, forget):
    mem = VLA(key_dim=5, value_dim=3, forget=forget, chunk_size=chunk, penalty_chunk=chunk - 1)
    s0, k, v = _warm_state(mem), randn(2, length, 5, seed=2), randn(2, length, 3, seed=3)
    fast, rec = mem.update(s0, k, v), mem.recurrent_update(s0, k, v)
    ref = reference_update(mem, s0, k, v)
    torch.testing.assert_close(fast.S, rec.S)
    torch.testing.assert_close(fast.P, rec.P)
    torch.testing.assert_close(rec.S, ref.S)
    torch.testing.assert_close(rec.P, ref.P)


def test_p_is_the_inverse_penalty_matrix():
    mem = VLA(key_dim=6, value_dim=2, ridge=0.1, forget=0.9)
    k = randn(1, 20, 6, seed=1)
    state = mem.update(mem.init_state(1, dtype=torch.float64), k, randn(1, 20, 2, seed=2))
    weights = 0.9 ** torch.arange(19, -1, -1, dtype=torch.float64)
    penalty = 0.1 * 0.9**20 * torch.eye(6, dtype=torch.float64) + (k[0].T * weights) @ k[0]
    torch.testing.assert_close(state.P[0], torch.linalg.inv(penalty))


def test_write_lands_exactly_on_the_unit_direction():
    mem = VLA(key_dim=8, value_dim=4)
    state = _warm_state(mem, batch=1)
    k, v = randn(1, 8, seed=3), randn(1, 4, seed=4)
    pk = (state.P @ k[..., None])[..., 0]
    u = pk / pk.norm()
    s_new, _ = vla_step(state.S, state.P, k, v, mem.forget)
    torch.testing.assert_close((s_new @ u[..., None])[..., 0], v)  # S_t u_t = v_t
    torch.testing.assert_close(s_new.norm() ** 2,  # energy balance behind Proposition 1
                               state.S.norm() ** 2 - (state.S @ u[..., None]).norm() ** 2 + v.norm() ** 2)


@pytest.mark.parametrize("key_dim,value_dim", [(2, 1), (5, 3), (16, 16)])
def test_proposition_2_jacobian_spectral_norm_is_one(key_dim, value_dim):
    mem = VLA(key_dim=key_dim, value_dim=value_dim, forget=0.9)
    state = mem.update(mem.init_state(1, dtype=torch.float64), randn(1, 30, key_dim, seed=1),
                       randn(1, 30, value_dim, seed=2))
    for seed in range(3):
        k, v = randn(1, key_dim, seed=10 + seed), randn(1, value_dim, seed=20 + seed)
        jac = torch.autograd.functional.jacobian(
            lambda s: vla_step(s, state.P, k, v, mem.forget)[0], state.S, vectorize=True)
        jac = jac.reshape(value_dim * key_dim, value_dim * key_dim)  # d vec(S_t) / d vec(S_{t-1})
        assert torch.linalg.matrix_norm(jac, ord=2).item() == pytest.approx(1.0, abs=1e-10)


def test_proposition_2_whole_chunk_jacobian_is_non_expansive():
    mem = VLA(key_dim=6, value_dim=3, chunk_size=8)
    state = mem.init_state(1, dtype=torch.float64)
    k, v = randn(1, 40, 6, seed=1), randn(1, 40, 3, seed=2)
    jac = torch.autograd.functional.jacobian(lambda s: mem.update(VLAState(s, state.P), k, v).S, state.S)
    assert torch.linalg.matrix_norm(jac.reshape(18, 18), ord=2).item() <= 1 + 1e-10


def test_proposition_1_norm_self_limits_while_linear_attention_grows():
    vla, lin = VLA(key_dim=16, value_dim=16), LinearAttention(key_dim=16, value_dim=16)
    k, v = unit_keys(2, 2000, 16, seed=1), unit_keys(2, 2000, 16, seed=2)  # bounded: ||v|| = 1
    state, norms = vla.init_state(2, dtype=torch.float64), []
    for start in range(0, 2000, 250):
        state = vla.update(state, k[:, start:start + 250], v[:, start:start + 250])
        norms.append(vla.state_norm(state))
    norms = torch.stack(norms)  # [8, B]
    assert torch.all(norms < 2 * 16**0.5)  # settles near sqrt(dk) * ||v||
    assert torch.all(norms[-1] < 1.1 * norms[0])  # flat in T ...
    lin_norm = lin.state_norm(lin.update(lin.init_state(2, dtype=torch.float64), k, v))
    assert torch.all(lin_norm > 5 * norms[-1])  # sqrt(2000) = 45 vs ~4  # ... while linear attention grows like sqrt(T)


def test_recall_is_exact_for_orthogonal_keys_and_near_perfect_below_capacity():
    mem = VLA(key_dim=16, value_dim=16)
    k = torch.eye(16, dtype=torch.float64)[None, torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    v = randn(1, 16, 16, seed=1)
    out = mem.read(mem.update(mem.init_state(1, dtype=torch.float64), k, v), k)
    torch.testing.assert_close(out, v, atol=1e-9, rtol=1e-9)
    k, v = unit_keys(8, 8, 64, seed=2), unit_keys(8, 8, 64, seed=3)  # n_pairs = dk / 8
    mem_64 = VLA(key_dim=64, value_dim=64)
    out = mem_64.read(mem_64.update(mem_64.init_state(8, dtype=torch.float64), k, v), k)
    # crosstalk from earlier pairs leaves cos ~0.87-1.0, but nearest-value decoding is exact
    decoded = (out @ v.transpose(1, 2)).argmax(-1)  # [B, n]
    assert torch.equal(decoded, torch.arange(8).expand(8, -1))
    assert torch.nn.functional.cosine_similarity(out, v, dim=-1).mean() > 0.9


def test_float32_fast_path_tracks_float64():
    mem = VLA(key_dim=16, value_dim=16)
    k, v = unit_keys(1, 300, 16, seed=1), unit_keys(1, 300, 16, seed=2)
    exact = mem.recurrent_update(mem.init_state(1, dtype=torch.float64), k, v)
    fast = mem.update(mem.init_state(1), k.float(), v.float())
    assert (fast.S.double() - exact.S).abs().max() < 1e-3


def test_config_and_state_errors():
    with pytest.raises(ConfigError, match="ridge"):
        VLA(key_dim=4, value_dim=2, ridge=0)
    with pytest.raises(ConfigError, match="forget"):
        VLA(key_dim=4, value_dim=2, forget=1.5)
    mem = VLA(key_dim=4, value_dim=2)
    state = mem.init_state(1)
    with pytest.raises(ConfigError, match="state"):
        mem.update(torch.zeros(1, 2, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 2))
    with pytest.raises(ShapeError, match="state.P"):
        mem.update(VLAState(state.S, state.P[:, :3, :3]), torch.randn(1, 3, 4), torch.randn(1, 3, 2))
    with pytest.raises(ConfigError, match="unknown gate"):
        mem.update(state, torch.randn(1, 3, 4), torch.randn(1, 3, 2), beta=torch.ones(1, 3))


def test_zero_key_writes_nothing():
    mem = VLA(key_dim=4, value_dim=2, forget=0.9)
    state = _warm_state(mem, batch=1)
    k, v = torch.zeros(1, 3, 4, dtype=torch.float64), randn(1, 3, 2, seed=0)
    out = mem.update(state, k, v)
    torch.testing.assert_close(out.S, state.S)
    torch.testing.assert_close(out.P, state.P / 0.9**3)
    torch.testing.assert_close(mem.recurrent_update(state, k, v).S, state.S)
