"""Soft prefix injection (modeling/injectors/prefix.py): the module, the left-padded layout, and
generation on tiny models of all ten families."""

import pytest
import torch

from memadapter.errors import ConfigError, DTypeError, NonFiniteError, ShapeError
from memadapter.modeling.backbones import embed_tokens, supported_model_types, token_embedding_rms
from memadapter.modeling.injectors.cross_attn import GatedCrossAttention
from memadapter.modeling.injectors.prefix import SoftPrefixInjector

MODEL_TYPES = supported_model_types()
GEN = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)


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
def test_prefix_generate_cache_and_left_padding(padded_rows, get_tiny, model_type):
    model = get_tiny(model_type)
    inj, values, valid = _prefix_inputs(model)
    ids, mask, singles = padded_rows
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
