"""Backbone registry over all ten families: resolution, tiny models, early-exit hidden states."""

import math

import pytest
import torch

from memadapter.errors import ConfigError, DTypeError, ShapeError, UnsupportedBackboneError
from memadapter.modeling.backbones import (
    FAMILIES,
    backbone_parts,
    check_pad_token,
    embed_tokens,
    get_family,
    read_hidden_states,
    read_hidden_states_reference,
    supported_model_types,
    token_embedding_rms,
)

# One row per family: (model_type, scales_embeddings, needs_pad_token). Adding a family to the
# registry is one entry there and one row here.
FAMILY_ROWS = [
    ("llama", False, False),
    ("qwen2", False, False),
    ("qwen3", False, False),
    ("mistral", False, False),
    ("gemma", True, False),
    ("gemma2", True, False),
    ("gemma3_text", True, False),
    ("glm", False, True),
    ("glm4", False, True),
    ("internlm3", False, False),
]
MODEL_TYPES = [row[0] for row in FAMILY_ROWS]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 1000, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on row 1
    ids[1, :3] = 0
    return ids, mask


def test_registry_holds_exactly_the_tested_rows():
    assert sorted(FAMILIES) == sorted(MODEL_TYPES) == supported_model_types()


def test_unknown_model_type_lists_all_supported():
    with pytest.raises(UnsupportedBackboneError) as err:
        get_family("gpt2")
    msg = str(err.value)
    assert "gpt2" in msg and all(mt in msg for mt in MODEL_TYPES)
    with pytest.raises(DTypeError, match="model_type"):
        get_family(3)


@pytest.mark.parametrize("model_type, scales, needs_pad", FAMILY_ROWS)
def test_family_resolves_and_tiny_model_builds(get_tiny, model_type, scales, needs_pad):
    fam = get_family(model_type)
    assert (fam.scales_embeddings, fam.needs_pad_token) == (scales, needs_pad)
    model = get_tiny(model_type)
    parts = backbone_parts(model)
    assert parts.family is fam
    assert (parts.hidden_size, parts.num_layers) == (64, 2)
    assert parts.layers is model.model.layers and parts.norm is model.model.norm
    assert parts.embed_tokens is model.get_input_embeddings()
    assert parts.embed_scale == pytest.approx(math.sqrt(64) if scales else 1.0)
    assert check_pad_token(model) == 0


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_embed_tokens_is_what_inputs_embeds_expects(get_tiny, model_type):
    # Gemma's sqrt(H) scale lives in the embedding module in transformers 5.x, and the decoder does
    # not scale inputs_embeds again: feeding embed_tokens() must reproduce the input_ids forward.
    model = get_tiny(model_type)
    ids, mask = _batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        out = model(inputs_embeds=embed_tokens(model, ids), attention_mask=mask).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    rms = token_embedding_rms(model)
    expected = model.get_input_embeddings().weight.pow(2).mean().sqrt().item() * backbone_parts(model).embed_scale
    assert rms == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_read_hidden_states_equals_full_forward_at_every_index(get_tiny, model_type):
    model = get_tiny(model_type)
    ids, mask = _batch(1)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for layer in list(range(3)) + [-1, -3]:
            got = read_hidden_states(model, ids, mask, layer)
            torch.testing.assert_close(got, full[layer], rtol=0, atol=0)
            torch.testing.assert_close(got, read_hidden_states_reference(model, ids, mask, layer), rtol=0, atol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_read_hidden_states_runs_no_later_layer(get_tiny, model_type):
    model = get_tiny(model_type)
    parts = backbone_parts(model)
    calls = {"layer0": 0, "layer1": 0, "norm": 0, "lm_head": 0}
    watched = {"layer0": parts.layers[0], "layer1": parts.layers[1], "norm": parts.norm,
               "lm_head": model.get_output_embeddings()}
    handles = [m.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1)) for k, m in watched.items()]
    hooks_before = {k: len(m._forward_hooks) for k, m in watched.items()}
    try:
        ids, mask = _batch()
        with torch.no_grad():
            read_hidden_states(model, ids, mask, 1)
        assert calls == {"layer0": 1, "layer1": 0, "norm": 0, "lm_head": 0}
        with torch.no_grad():
            read_hidden_states(model, ids, mask, 0)
        assert calls["layer0"] == 1  # embeddings only
        # read_hidden_states removed its own capture hook.
        assert {k: len(m._forward_hooks) for k, m in watched.items()} == hooks_before
    finally:
        for h in handles:
            h.remove()


def test_read_hidden_states_rejects_bad_input(get_tiny):
    model = get_tiny("llama")
    layers = backbone_parts(model).layers
    before = [len(layer._forward_hooks) for layer in layers]
    ids, mask = _batch()
    with pytest.raises(ShapeError, match="layer"):
        read_hidden_states(model, ids, mask, 3)
    with pytest.raises(DTypeError, match="layer"):
        read_hidden_states(model, ids, mask, 1.0)
    with pytest.raises(DTypeError, match="input_ids"):
        read_hidden_states(model, ids.float(), mask, 1)
    with pytest.raises(ShapeError, match="input_ids"):
        read_hidden_states(model, ids[0], mask, 1)
    with pytest.raises(ShapeError, match="attention_mask"):
        read_hidden_states(model, ids, mask[:, 1:], 1)
    assert [len(layer._forward_hooks) for layer in layers] == before  # nothing left behind


def test_backbone_parts_refuses_unknown_model(get_tiny, build_tiny):
    with pytest.raises(DTypeError, match="model"):
        backbone_parts(torch.nn.Linear(2, 2))
    model = build_tiny("llama")
    model.config.model_type = "gpt2"  # a family the registry does not know
    with pytest.raises(UnsupportedBackboneError, match="llama"):
        backbone_parts(model)


def test_glm_needs_pad_token_inside_vocab(build_tiny):
    model = build_tiny("glm")
    model.config.pad_token_id = None
    with pytest.raises(ConfigError, match="pad_token_id"):
        check_pad_token(model)
    model.config.pad_token_id = 5000
    with pytest.raises(ConfigError, match="pad_token_id"):
        check_pad_token(model)


@pytest.mark.parametrize("model_type", ["llama", "gemma", "gemma2", "gemma3_text"])
def test_prefix_injection_with_nothing_selected_equals_bare_forward(get_tiny, tokenizer, model_type):
    # The prefix path feeds the backbone inputs_embeds built by embed_tokens (Gemma: scale included,
    # and the decoder does not rescale them). With every slot invalid, or an empty memory, the
    # prefix is all padding and the logits over the text must be the bare model's.
    from conftest import QUESTIONS, build

    backbone = get_tiny(model_type)
    model = build(backbone, tokenizer, "prefix").eval()
    enc = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    real = enc["attention_mask"].bool()
    values = torch.randn(2, model.config.top_k, model.config.value_dim)
    with torch.no_grad():
        bare = backbone(**enc).logits
        none_valid = model.forward_with_values(enc["input_ids"], enc["attention_mask"], values,
                                               torch.zeros(2, model.config.top_k, dtype=torch.bool)).logits
        empty = model(**enc, memory=model.new_memory(batch_size=2)).logits
    torch.testing.assert_close(none_valid[real], bare[real])
    torch.testing.assert_close(empty[real], bare[real])
    if get_family(model_type).scales_embeddings:  # the check can fail: unscaled embeddings change the logits
        raw = backbone.get_input_embeddings().weight[enc["input_ids"]]
        with torch.no_grad():
            unscaled = backbone(inputs_embeds=raw, attention_mask=enc["attention_mask"]).logits
        assert not torch.allclose(unscaled[real], bare[real], atol=1e-3)
