"""The injector registry (modeling/injectors/__init__.py): the config's choices come from it, the
model's forward and generate run any registered injector, and a new one is one class plus one entry."""

from contextlib import contextmanager

import pytest
import torch
from conftest import QUESTIONS, STREAM, build, ingest, tiny_backbone
from torch import nn

from memadapter.errors import ConfigError
from memadapter.modeling import MemAdapterConfig, MemAdapterForCausalLM
from memadapter.modeling.backbones import embed_tokens
from memadapter.modeling.injectors import INJECTORS, Injector, Prepared, get_injector
from memadapter.modeling.injectors.base import built_module


class MeanBiasInjector(Injector):
    """A toy fourth injector: the mean selected value, projected, is added to every token embedding;
    its backbone calls run inside a context that counts them."""

    def __init__(self):
        self.entered = 0

    def build(self, model, config, hidden):
        return {"mean_bias": nn.Linear(config.value_dim, hidden)}

    @contextmanager
    def _count(self):
        self.entered += 1
        yield

    def prepare(self, model, sel, input_ids, attention_mask):
        proj = built_module(model, "mean_bias")
        valid = sel.valid.to(proj.weight.device, proj.weight.dtype)[..., None]  # [B, K, 1]
        mean = (sel.values.to(proj.weight) * valid).sum(1) / valid.sum(1).clamp(min=1)  # [B, dv]
        embeds = embed_tokens(model.backbone, input_ids) + proj(mean)[:, None]  # [B, T, H]
        return Prepared({"inputs_embeds": embeds, "attention_mask": attention_mask}, context=self._count())


def test_the_config_takes_its_choices_from_the_registry(monkeypatch):
    assert sorted(INJECTORS) == ["cross_attn", "prefix", "text"]
    with pytest.raises(ConfigError, match="injection: must be one of prefix, cross_attn, text, got 'toy'"):
        MemAdapterConfig(injection="toy")
    with pytest.raises(ConfigError, match="injection"):
        get_injector(["prefix"])  # unhashable: still the typed error
    monkeypatch.setitem(INJECTORS, "toy", MeanBiasInjector())
    assert MemAdapterConfig(injection="toy").injection == "toy"
    # each injector checks its own settings: cross-attention needs layers
    with pytest.raises(ConfigError, match="cross_attn_layers"):
        MemAdapterConfig(injection="cross_attn")


def test_a_fourth_injector_in_one_entry_runs_end_to_end(monkeypatch, tokenizer, tmp_path):
    toy = MeanBiasInjector()
    monkeypatch.setitem(INJECTORS, "toy", toy)
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer, "toy", router_confidence_threshold=0.0)
    assert {k for k in model.adapter_state_dict() if k.startswith("mean_bias")} == {"mean_bias.weight", "mean_bias.bias"}
    enc = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    mem = ingest(model, [STREAM, "bob lives in london"])
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    out = model(**enc, memory=mem, labels=labels)
    assert toy.entered == 1 and out.logits.shape[:2] == enc["input_ids"].shape
    assert (out.logits - bb(**enc).logits)[enc["attention_mask"].bool()].abs().max() > 1e-3  # the memory acts
    out.loss.backward()
    assert model.mean_bias.weight.grad.abs().sum() > 0 and all(p.grad is None for p in bb.parameters())
    model.zero_grad(set_to_none=True)

    gen = model.generate(**enc, memory=mem, max_new_tokens=3, do_sample=False)
    T = enc["input_ids"].shape[1]
    assert toy.entered == 2 and gen.shape == (2, T + 3) and torch.equal(gen[:, :T], enc["input_ids"])
    assert torch.equal(gen[:, T], out.logits[:, -1].argmax(-1))  # generate's first token is forward's argmax
    assert torch.equal(gen, model.generate(**enc, memory=mem, max_new_tokens=3, do_sample=False, use_cache=False))
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    fwv = model.forward_with_values(enc["input_ids"], enc["attention_mask"], sel.values, sel.valid)
    torch.testing.assert_close(fwv.logits, out.logits)

    model.save_pretrained(tmp_path)
    loaded = MemAdapterForCausalLM.from_pretrained(bb, adapter=tmp_path, tokenizer=tokenizer)
    torch.testing.assert_close(loaded(**enc, memory=ingest(loaded, [STREAM, "bob lives in london"])).logits,
                               out.logits, rtol=0, atol=0)
    monkeypatch.delitem(INJECTORS, "toy")
    with pytest.raises(ConfigError, match="injection"):  # an adapter whose injector is not registered
        MemAdapterForCausalLM.from_pretrained(bb, adapter=tmp_path, tokenizer=tokenizer)


def test_saved_adapters_keep_their_state_dict_keys(tokenizer):
    bb = tiny_backbone("llama")
    prefix = {k for k in build(bb, tokenizer, "prefix").adapter_state_dict() if k.startswith("injector")}
    assert prefix == {"injector.proj.weight", "injector.proj.bias", "injector.scale"}
    xattn = build(bb, tokenizer, "cross_attn", value_tokens=2).adapter_state_dict()
    assert {k for k in xattn if k.startswith(("cross_attn", "value_token_proj"))} == {
        f"cross_attn.0.{n}" for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate")
    } | {"value_token_proj.weight"}
    assert not any(k.startswith(("cross_attn", "value_token_proj", "injector")) for k in build(bb, tokenizer, "text").adapter_state_dict())


def test_switching_to_an_injection_the_adapter_has_no_weights_for_names_it(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer, "prefix")
    mem = ingest(model, [STREAM])
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    model.config.injection = "text"  # read-time switch to a weightless injector: fine
    assert model.generate(**enc, memory=mem, max_new_tokens=2, do_sample=False).shape == (1, 6)
    model.config.injection = "cross_attn"
    with pytest.raises(ConfigError, match="injection: 'cross_attn' needs the adapter module 'cross_attn'"):
        model(**enc, memory=mem)
    with pytest.raises(ConfigError, match="injection"):
        model.forward_with_values(enc["input_ids"], enc["attention_mask"], torch.zeros(1, 1, 16),
                                  torch.ones(1, 1, dtype=torch.bool))
