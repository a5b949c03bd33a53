"""Soft prefix and gated cross-attention on tiny models of all ten families."""

import pytest
import torch
from torch import nn

from memadapter.errors import ConfigError, DTypeError, NonFiniteError, ShapeError
from memadapter.modeling.backbones import backbone_parts, embed_tokens, supported_model_types, token_embedding_rms
from memadapter.modeling.injection import GatedCrossAttention, SoftPrefixInjector, cross_attention

MODEL_TYPES = supported_model_types()
GEN = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)


def _rows(seed=0):
    """Two prompts of different lengths, as a left-padded batch and as unpadded single rows."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(4, 1000, (6,), generator=g), torch.randint(4, 1000, (4,), generator=g)
    ids = torch.stack([a, torch.cat([torch.zeros(2, dtype=torch.long), b])])
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    return ids, mask, [a[None], b[None]]


# ---------------------------------------------------------------- soft prefix (unit)

def test_prefix_forward_matches_loop_reference_and_zeroes_invalid_slots():
    torch.manual_seed(0)
    inj = SoftPrefixInjector(value_dim=8, hidden_size=16, tokens_per_slot=3, embed_rms=2.5)
    values, valid = torch.randn(2, 4, 8), torch.tensor([[True, False, True, True], [False, False, True, False]])
    prefix, pmask = inj(values, valid)
    ref, ref_mask = inj.forward_reference(values, valid)
    torch.testing.assert_close(prefix, ref)
    assert torch.equal(pmask, ref_mask) and pmask.shape == (2, 12) and prefix.shape == (2, 12, 16)
    assert torch.equal(pmask.view(2, 4, 3)[:, :, 0].bool(), valid)
    assert torch.all(prefix[pmask == 0] == 0)
    rms = prefix[pmask == 1].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, 2.5), rtol=1e-4, atol=1e-4)


def test_no_slots_gives_empty_prefix_and_no_cross_attention_term():
    inj = SoftPrefixInjector(value_dim=8, hidden_size=16)
    prefix, pmask = inj(torch.zeros(2, 0, 8), torch.zeros(2, 0, dtype=torch.bool))
    assert prefix.shape == (2, 0, 16) and pmask.shape == (2, 0)
    embeds, mask = torch.randn(2, 3, 16), torch.tensor([[1, 1, 1], [0, 1, 1]])
    out, out_mask = inj.prepend(embeds, mask, prefix, pmask)
    assert torch.equal(out, embeds) and torch.equal(out_mask, mask)
    xattn = GatedCrossAttention(hidden_size=16, memory_dim=8, num_heads=2, gate_init=1.0)
    assert torch.equal(xattn(embeds, torch.zeros(2, 0, 8), torch.zeros(2, 0, dtype=torch.bool)), embeds)


def test_prefix_rejects_bad_input():
    inj = SoftPrefixInjector(value_dim=8, hidden_size=16)
    with pytest.raises(ShapeError, match="values"):
        inj(torch.randn(2, 4, 7), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match="valid"):
        inj(torch.randn(2, 4, 8), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(DTypeError, match="valid"):
        inj(torch.randn(2, 4, 8), torch.ones(2, 4))
    with pytest.raises(NonFiniteError, match="values"):
        inj(torch.full((1, 1, 8), float("nan")), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ConfigError, match="embed_rms"):
        SoftPrefixInjector(8, 16, embed_rms=0.0)
    with pytest.raises(ShapeError, match="prefix"):
        inj.prepend(torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.long), torch.randn(2, 1, 15), torch.ones(2, 1, dtype=torch.long))


def test_prepend_left_aligns_and_matches_loop_reference():
    g = torch.Generator().manual_seed(3)
    embeds, mask = torch.randn(3, 5, 4, generator=g), torch.tensor([[1] * 5, [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    prefix, pmask = torch.randn(3, 4, 4, generator=g), torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    out, out_mask = SoftPrefixInjector.prepend(embeds, mask, prefix, pmask)
    ref, ref_mask = SoftPrefixInjector.prepend_reference(embeds, mask, prefix, pmask)
    assert torch.equal(out, ref) and torch.equal(out_mask, ref_mask) and out_mask.dtype == mask.dtype
    for row in range(3):  # left padding: once a real position starts, no pad follows
        n_pad = int((out_mask[row] == 0).sum())
        assert out_mask[row, :n_pad].sum() == 0 and out_mask[row, n_pad:].all()
    # Row 2: its two valid slots then its one real token, in order.
    torch.testing.assert_close(out[2, -3:], torch.stack([prefix[2, 0], prefix[2, 2], embeds[2, 4]]))


# ---------------------------------------------------------------- soft prefix (all families)

def _prefix_inputs(model, seed=0):
    torch.manual_seed(seed)
    inj = SoftPrefixInjector(value_dim=8, hidden_size=64, tokens_per_slot=2, embed_rms=token_embedding_rms(model))
    values, valid = torch.randn(2, 3, 8), torch.tensor([[True, True, False], [False, True, False]])
    return inj, values, valid


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_prefix_generate_cache_and_left_padding(get_tiny, model_type):
    model = get_tiny(model_type)
    inj, values, valid = _prefix_inputs(model)
    ids, mask, singles = _rows()
    with torch.no_grad():
        prefix, pmask = inj(values, valid)
        embeds, amask = inj.prepend(embed_tokens(model, ids), mask, prefix, pmask)
        batch = model.generate(inputs_embeds=embeds, attention_mask=amask, **GEN)
        no_cache = model.generate(inputs_embeds=embeds, attention_mask=amask, use_cache=False, **GEN)
        assert torch.equal(batch, no_cache)
        # The prefix does reach the model: next-token logits move.
        with_prefix = model(inputs_embeds=embeds, attention_mask=amask).logits[:, -1]
        assert (with_prefix - model(input_ids=ids, attention_mask=mask).logits[:, -1]).abs().max() > 1e-3
        for row, single_ids in enumerate(singles):
            keep = valid[row].nonzero().flatten()
            p1, m1 = inj(values[row:row + 1, keep], valid[row:row + 1, keep])  # only this row's valid slots
            e1 = torch.cat([p1, embed_tokens(model, single_ids)], dim=1)
            single = model.generate(inputs_embeds=e1, attention_mask=torch.ones(e1.shape[:2], dtype=torch.long), **GEN)
            assert torch.equal(batch[row], single[0]), f"row {row}"


@pytest.mark.parametrize("model_type", ["llama", "gemma", "gemma3_text"])
def test_prefix_starts_at_token_embedding_magnitude(get_tiny, model_type):
    model = get_tiny(model_type)
    inj, values, valid = _prefix_inputs(model)
    with torch.no_grad():
        prefix, pmask = inj(values, valid)
        tokens = embed_tokens(model, torch.arange(4, 200)[None])
    ratio = prefix[pmask == 1].pow(2).mean().sqrt() / tokens.pow(2).mean().sqrt()
    assert 0.8 < float(ratio) < 1.25  # Gemma's sqrt(H) scale included, not ~8x too small


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
def test_zero_gate_leaves_logits_and_greedy_generate_unchanged(get_tiny, model_type):
    model = get_tiny(model_type)
    ids, mask, _ = _rows()
    mods, memory, mmask = _xattn_setup(model, gate=0.0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        plain = model.generate(input_ids=ids, attention_mask=mask, **GEN)
        with cross_attention(model, [0, 1], mods, memory, mmask):
            torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, logits, rtol=0, atol=0)
            assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, **GEN), plain)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_open_gate_changes_output_gets_gradients_and_is_cache_consistent(get_tiny, model_type):
    model = get_tiny(model_type)
    ids, mask, singles = _rows()
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
def test_requests_read_only_their_own_memory(get_tiny, model_type):
    model = get_tiny(model_type)
    ids, mask, _ = _rows()
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


def test_sampling_with_several_return_sequences_repeats_memory_per_request(get_tiny):
    model = get_tiny("qwen3")
    ids, mask, _ = _rows()
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


def test_prefix_with_value_tokens_matches_loop_reference():
    torch.manual_seed(1)
    inj = SoftPrefixInjector(value_dim=8, hidden_size=16, tokens_per_slot=2)
    values, valid = torch.randn(2, 3, 8), torch.tensor([[True, False, True], [True, True, False]])
    embeds, emask = torch.randn(2, 3, 4, 16), torch.rand(2, 3, 4) > 0.4
    prefix, pmask = inj(values, valid, embeds, emask)
    ref, ref_mask = inj.forward_reference(values, valid, embeds, emask)
    torch.testing.assert_close(prefix, ref)
    assert torch.equal(pmask, ref_mask) and prefix.shape == (2, 18, 16)
    slots = pmask.view(2, 3, 6)
    assert torch.equal(slots[:, :, :2].bool(), valid[:, :, None].expand(2, 3, 2))  # virtual tokens first
    assert torch.equal(slots[:, :, 2:].bool(), emask & valid[:, :, None])  # then the slot's own tokens
    with pytest.raises(ShapeError, match="value_mask"):
        inj(values, valid, None, emask)
    with pytest.raises(ShapeError, match="value_embeds"):
        inj(values, valid, embeds[:, :2], emask[:, :2])
