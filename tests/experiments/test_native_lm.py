"""NativeMemoryLM (Phase 12 model): sizes, vectorized paths against loops, causality, hard vs soft, writes."""

import pytest
import torch

from memadapter.errors import ConfigError, DTypeError, ShapeError
from memadapter.slots import STATE_CHANGING
from experiments.native_lm import (NONE, QUERY, WRITE, NativeLMConfig, NativeMemoryLM, delta_rule_outputs,
                                   delta_rule_outputs_reference, sparse_fallback, sparse_fallback_reference)

TINY = NativeLMConfig(d_model=32, n_heads=2, mlp_hidden=64, chunk_size=8, key_dim=16, value_dim=16,
                      answer_hidden=32, num_slots=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _stream(B: int, T: int, gen: torch.Generator, distinct: bool = True):
    """B streams of T events with distinct keys per row (so no two events match) and the question."""
    keys = torch.stack([torch.randperm(128, generator=gen)[: T + 1] for _ in range(B)])
    keys[:, -1] = keys[:, 0]  # ask about the first event
    markers = torch.full((B, T + 1), WRITE, dtype=torch.long)
    markers[:, -1] = QUERY
    values = torch.randint(0, 256, (B, T + 1), generator=gen)
    values[:, -1] = 256
    return markers, keys, values


def _model(cfg=TINY, seed=0, write_bias=None):
    torch.manual_seed(seed)
    model = NativeMemoryLM(cfg).eval()
    if write_bias is not None:  # push p_write far from the threshold so hard and soft gates are unambiguous
        with torch.no_grad():
            model.write_head[-1].weight.zero_()
            model.write_head[-1].bias.fill_(write_bias)
    return model


def test_default_parameter_count_is_about_2_74m():
    n = sum(p.numel() for p in NativeMemoryLM().parameters())
    assert 2.6e6 <= n <= 2.9e6, n


@pytest.mark.parametrize("carry", [True, False])
@pytest.mark.parametrize("T,C", [(1, 4), (13, 4), (16, 8), (37, 16)])
def test_chunked_delta_outputs_match_the_recurrence(T, C, carry):
    g = torch.Generator().manual_seed(T)
    q = torch.randn(2, 3, T, 5, generator=g, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.randn(2, 3, T, 5, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(2, 3, T, 4, generator=g, dtype=torch.float64)
    beta = torch.rand(2, 3, T, generator=g, dtype=torch.float64)
    ref = delta_rule_outputs_reference(q, k, v, beta, None if carry else C)
    torch.testing.assert_close(delta_rule_outputs(q, k, v, beta, C, carry), ref)


@pytest.mark.parametrize("carry", [True, False])
def test_encode_chunked_equals_reference_backbone(carry):
    model = _model(NativeLMConfig(**{**TINY.__dict__, "carry_state": carry}))
    m, k, v = _stream(2, 21, torch.Generator().manual_seed(1))
    fast, slow = model.encode(m, k, v), model.encode(m, k, v, reference=True)
    torch.testing.assert_close(fast.hidden, slow.hidden, atol=1e-5, rtol=1e-4)


def test_sparse_fallback_matches_loop():
    g = torch.Generator().manual_seed(2)
    q, s, v = torch.randn(3, 6, generator=g), torch.randn(3, 20, 6, generator=g), torch.randn(3, 20, 4, generator=g)
    out, idx = sparse_fallback(q, s, v, 5, torch.tensor(7.0))
    torch.testing.assert_close(out.double(), sparse_fallback_reference(q, s, v, 5, 7.0), atol=1e-5, rtol=1e-5)
    assert idx.shape == (3, 5)


def test_backbone_is_causal():
    model = _model()
    m, k, v = _stream(1, 12, torch.Generator().manual_seed(3))
    before = model.encode(m, k, v)
    v2 = v.clone()
    v2[0, 9] = (v2[0, 9] + 1) % 256
    after = model.encode(m, k, v2)
    torch.testing.assert_close(before.hidden[:, :9], after.hidden[:, :9])
    torch.testing.assert_close(before.p_write[:, :9], after.p_write[:, :9])
    assert not torch.allclose(before.hidden[:, 9:], after.hidden[:, 9:])


def test_shapes_of_both_paths():
    model = _model()
    m, k, v = _stream(3, 10, torch.Generator().manual_seed(4))
    soft, hard = model.forward_soft(m, k, v, temperature=0.1), model.forward_hard(m, k, v)
    for out in (soft, hard):
        assert out.logits.shape == (3, 256) and out.gate.shape == (3,)
        assert out.encoding.p_write.shape == (3, 10) and out.encoding.mem_keys.shape == (3, 10, 16)
    assert hard.writes.shape == (3,)


@pytest.mark.parametrize("write_bias", [8.0, -8.0])
def test_hard_and_soft_paths_agree_at_low_temperature(write_bias):
    model = _model(write_bias=write_bias)
    m, k, v = _stream(4, 6, torch.Generator().manual_seed(5))  # 6 distinct keys < 8 slots: no eviction
    k[:, 3] = k[:, 0]  # a later event with the queried key: the newer value must win on both paths
    hard = model.forward_hard(m, k, v)
    soft = model.forward_soft(m, k, v, temperature=1e-4)
    torch.testing.assert_close(soft.gate, hard.gate)
    torch.testing.assert_close(soft.logits, hard.logits, atol=1e-3, rtol=1e-3)
    assert bool((hard.gate == (1.0 if write_bias > 0 else 0.0)).all())


def test_write_counter_counts_state_changing_actions():
    m, k, v = _stream(2, 12, torch.Generator().manual_seed(6))  # 12 distinct keys, 8 slots: 4 evictions
    out = _model(write_bias=8.0).forward_hard(m, k, v)
    changed = sum((out.write_result.action == int(a)).sum(1) for a in STATE_CHANGING)
    assert out.writes.tolist() == changed.tolist() == [12, 12]
    assert int(out.memory.occupied.sum()) == 2 * TINY.num_slots
    silent = _model(write_bias=-8.0).forward_hard(m, k, v)
    assert silent.writes.tolist() == [0, 0] and not bool(silent.memory.occupied.any())


def test_gradients_reach_the_write_head_through_the_answer_loss():
    model = _model().train()
    m, k, v = _stream(2, 8, torch.Generator().manual_seed(7))
    out = model.forward_soft(m, k, v, temperature=0.3)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 2])).backward()
    assert model.write_head[-1].weight.grad.abs().sum() > 0
    assert model.key_emb.weight.grad.abs().sum() > 0


def test_bad_input_raises_typed_errors():
    model = _model()
    m, k, v = _stream(1, 4, torch.Generator().manual_seed(8))
    with pytest.raises(DTypeError, match="markers"):
        model.encode(m.float(), k, v)
    with pytest.raises(ShapeError, match="keys"):
        model.encode(m, k[:, :-1], v)
    with pytest.raises(ConfigError, match="values"):
        model.encode(m, k, v + 1000)
    bad = m.clone()
    bad[:, -1] = NONE
    with pytest.raises(ConfigError, match="QUERY"):
        model.encode(bad, k, v)
    with pytest.raises(ConfigError, match="n_heads"):
        NativeMemoryLM(NativeLMConfig(d_model=30, n_heads=4))
    with pytest.raises(ConfigError, match="temperature"):
        model.forward_soft(m, k, v, temperature=0.0)
