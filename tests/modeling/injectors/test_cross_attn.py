"""Gated cross-attention injection (modeling/injectors/cross_attn.py): the module, the layer
wrappers of ``cross_attention``, and generation on tiny models of all ten families."""

import pytest
import torch
from torch import nn

from memadapter.errors import ConfigError, ShapeError
from memadapter.modeling.backbones import backbone_parts, supported_model_types
from memadapter.modeling.injectors.cross_attn import GatedCrossAttention, cross_attention

MODEL_TYPES = supported_model_types()
GEN = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)


# ---------------------------------------------------------------- gated cross-attention (unit)

def test_cross_attention_module_matches_loop_reference():
    torch.manual_seed(0)
    xattn = GatedCrossAttention(hidden_size=16, memory_dim=8, num_heads=4, gate_init=0.7)
    hidden, memory = torch.randn(3, 5, 16) * 10, torch.randn(3, 4, 8)
    mask = torch.tensor([[True, True, False, True], [False] * 4, [False, False, True, False]])
    out = xattn(hidden, memory, mask)
    torch.testing.assert_close(out, xattn.forward_reference(hidden, memory, mask))
    assert torch.equal(out[1], hidden[1])  # a row without memory gets exactly nothing added
    added = (out - hidden)[[0, 2]]
    # Added term is tanh(gate) times the hidden state's per-token RMS.
    want = torch.tanh(torch.tensor(0.7)) * hidden[[0, 2]].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(added.pow(2).mean(-1).sqrt(), want, rtol=1e-3, atol=1e-3)


def test_zero_gate_is_exact_identity_and_gate_gets_gradient():
    torch.manual_seed(1)
    xattn = GatedCrossAttention(hidden_size=16, memory_dim=8, num_heads=2)
    hidden = torch.randn(2, 3, 16, requires_grad=True)
    out = xattn(hidden, torch.randn(2, 2, 8), torch.ones(2, 2, dtype=torch.bool))
    assert torch.equal(out, hidden)
    out.sum().backward()
    assert xattn.gate.grad is not None and xattn.gate.grad.abs() > 0  # d tanh(0) = 1: the gate can open


def test_cross_attention_module_rejects_bad_input():
    xattn = GatedCrossAttention(hidden_size=16, memory_dim=8, num_heads=2)
    h, m, k = torch.randn(2, 3, 16), torch.randn(2, 2, 8), torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ShapeError, match="memory"):
        xattn(h, m[:1], k[:1])
    with pytest.raises(ShapeError, match="memory"):
        xattn(h, torch.randn(2, 2, 7), k)
    with pytest.raises(ShapeError, match="memory_mask"):
        xattn(h, m, k[:, :1])
    with pytest.raises(ShapeError, match="hidden"):
        xattn(h[..., :8], m, k)
    with pytest.raises(ConfigError, match="num_heads"):
        GatedCrossAttention(hidden_size=16, memory_dim=8, num_heads=3)


# ---------------------------------------------------------------- gated cross-attention (all families)

def _xattn_setup(model, gate, seed=0):
    torch.manual_seed(seed)
    mods = nn.ModuleList([GatedCrossAttention(64, 8, num_heads=4, gate_init=gate) for _ in range(2)])
    memory, mmask = torch.randn(2, 3, 8), torch.tensor([[True, True, False], [True, False, True]])
    return mods, memory, mmask


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_zero_gate_leaves_logits_and_greedy_generate_unchanged(padded_rows, get_tiny, model_type):
    model = get_tiny(model_type)
    ids, mask, _ = padded_rows
    mods, memory, mmask = _xattn_setup(model, gate=0.0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        plain = model.generate(input_ids=ids, attention_mask=mask, **GEN)
        with cross_attention(model, [0, 1], mods, memory, mmask):
            torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, logits, rtol=0, atol=0)
            assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, **GEN), plain)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_open_gate_changes_output_gets_gradients_and_is_cache_consistent(padded_rows, get_tiny, model_type):
    model = get_tiny(model_type)
    ids, mask, singles = padded_rows
    mods, memory, mmask = _xattn_setup(model, gate=1.0)
    new = GEN["max_new_tokens"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    try:
        with cross_attention(model, [1], mods[:1], memory, mmask):
            out = model(input_ids=ids, attention_mask=mask).logits
            assert (out - logits)[mask.bool()].abs().max() > 1e-3
            out[mask.bool()].pow(2).mean().backward()
            with torch.no_grad():
                cached = model.generate(input_ids=ids, attention_mask=mask, **GEN)
                uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **GEN)
        assert torch.equal(cached, uncached)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mods[0].parameters())
        assert all(p.grad is None for p in mods[1].parameters())
    finally:
        model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for row, single in enumerate(singles):  # left-padded batch == each request alone, unpadded
            with cross_attention(model, [1], mods[:1], memory[row:row + 1], mmask[row:row + 1]):
                one = model.generate(input_ids=single, **GEN)
            assert torch.equal(cached[row, -new:], one[0, -new:]), f"row {row}"


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "glm4"])
def test_requests_read_only_their_own_memory(padded_rows, get_tiny, model_type):
    model = get_tiny(model_type)
    ids, mask, _ = padded_rows
    mods, memory, mmask = _xattn_setup(model, gate=1.0)
    other = memory.clone()
    other[1] = torch.randn(3, 8)
    with torch.no_grad():
        with cross_attention(model, [0, 1], mods, memory, mmask):
            a = model(input_ids=ids, attention_mask=mask).logits
        with cross_attention(model, [0, 1], mods, other, mmask):
            b = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert (a[1] - b[1]).abs().max() > 1e-3


def test_sampling_with_several_return_sequences_repeats_memory_per_request(padded_rows, get_tiny):
    model = get_tiny("qwen3")
    ids, mask, _ = padded_rows
    mods, memory, mmask = _xattn_setup(model, gate=0.5)
    seen = []
    handle = mods[0].register_forward_pre_hook(lambda _m, args: seen.append((args[1], args[2])))
    try:
        with torch.no_grad(), cross_attention(model, [0], mods[:1], memory, mmask):
            torch.manual_seed(0)
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, num_return_sequences=2,
                                 max_new_tokens=4, pad_token_id=0)
    finally:
        handle.remove()
    assert out.shape == (4, ids.shape[1] + 4)
    for mem, mm in seen:  # generate expands rows with repeat_interleave; memory follows
        assert torch.equal(mem, memory.repeat_interleave(2, dim=0)) and torch.equal(mm, mmask.repeat_interleave(2, 0))
    # Zero gate: sampling is identical to the plain model under the same seed.
    zero, _, _ = _xattn_setup(model, gate=0.0)
    with torch.no_grad():
        torch.manual_seed(1)
        plain = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=4, pad_token_id=0)
        with cross_attention(model, [0, 1], zero, memory, mmask):
            torch.manual_seed(1)
            gated = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=4, pad_token_id=0)
    assert torch.equal(plain, gated)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_wrappers_are_removed_after_the_block_and_after_errors(get_tiny, model_type):
    model = get_tiny(model_type)
    layers = backbone_parts(model).layers
    originals = list(layers)
    keys = set(model.state_dict())
    mods, memory, mmask = _xattn_setup(model, gate=1.0)
    with cross_attention(model, [0, 1], mods, memory, mmask):
        assert all(layers[i] is not originals[i] for i in range(2))
        assert layers[0].layer is originals[0]
    assert list(layers) == originals and set(model.state_dict()) == keys
    with pytest.raises(RuntimeError, match="boom"):
        with cross_attention(model, [1], mods[:1], memory, mmask):
            raise RuntimeError("boom")
    assert list(layers) == originals
    bad_calls = [
        ([0, 2], mods), ([0, 0], mods), ([0], mods), ([0, 1], mods[:1]),
    ]
    for indices, ms in bad_calls:
        with pytest.raises(ShapeError, match="layer_indices"):
            with cross_attention(model, indices, ms, memory, mmask):
                pass
        assert list(layers) == originals
    with pytest.raises(ShapeError, match="memory"):
        with cross_attention(model, [0, 1], mods, torch.randn(2, 3, 5), mmask):
            pass
    with pytest.raises(ConfigError, match="already wrapped"):
        with cross_attention(model, [0], mods[:1], memory, mmask):
            with cross_attention(model, [0], mods[1:], memory, mmask):
                pass
    assert list(layers) == originals
