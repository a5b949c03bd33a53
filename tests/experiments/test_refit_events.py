"""refit_events on a tiny random llama: pooled features per event, the balanced fit, the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch

from memadapter.heads import EVENT_TYPES, pool_spans
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training import generation_eval as ge
from memadapter.training.labels import token_labels
from memadapter.training.lifecycle_data import generate_stream
from memadapter.training.train import build_word_tokenizer
from experiments import refit_events

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def streams() -> list[dict]:
    rng = random.Random(0)
    return [generate_stream(rng, split="train", num_entities=2, num_updates=2, num_distractors=1, num_uniform=1)
            for _ in range(3)]


def _model(streams: list[dict], **kw) -> MemAdapterForCausalLM:
    tok = build_word_tokenizer([s["text"] for s in streams], vocab_size=1000)
    torch.manual_seed(0)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, chunk_tokens=48,
                           grounding_context_size=8, **kw)
    return MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()


@pytest.mark.parametrize("relation", [False, True])
def test_pooled_events_are_the_heads_features_over_each_events_type_span(streams, relation):
    model = _model(streams, type_reads_relation=relation)
    x, y = refit_events.pooled_events(model, streams, progress=False)
    want_x, want_y = [], []
    for s in streams:  # the plain loop: every event inside one chunk, pooled on its own chunk
        lab = token_labels(s, model.tokenizer)
        for (k0, k1), (v0, v1), t in zip(lab["key_spans"], lab["value_spans"], lab["event_types"]):
            v0, v1 = (k0, k1) if v0 < 0 else (v0, v1)
            c0 = k0 // 48 * 48
            row = lab["input_ids"][c0 : c0 + 48]
            if max(k1, v1) > c0 + len(row):
                continue  # cut by the chunk boundary
            ids = torch.tensor([row])
            mask = torch.ones_like(ids, dtype=torch.bool)
            with torch.no_grad():
                h = model.grounding.features(model._hidden(ids, mask.long()), mask)[0]
                end = max(k1, v1) - c0
                if relation and v0 == k0:  # a value-less event reads RELATION_WINDOW more tokens
                    end = min(k1 - c0 + 6, len(row))
                want_x.append(pool_spans(h, torch.tensor([[k0 - c0, end]]))[0])
            want_y.append(t)
    assert y.tolist() == want_y and len(want_y) > 10
    torch.testing.assert_close(x, torch.stack(want_x))
    assert EVENT_TYPES.index("retract") in want_y


def test_fit_event_layer_balances_a_rare_class():
    torch.manual_seed(0)
    centres = torch.randn(4, 8) * 3
    y = torch.tensor([0] * 200 + [1] * 200 + [2] * 6 + [3] * 100)
    x = centres[y] + torch.randn(len(y), 8)
    layer = torch.nn.Linear(8, 4)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([5.0, 5.0, -5.0, 0.0]))  # starts blind to class 2
    assert refit_events.class_accuracy(layer, x, y)["retract"] != "6/6"
    refit_events.fit_event_layer(layer, x, y, steps=200, lr=0.05, progress=False)
    acc = refit_events.class_accuracy(layer, x, y)
    assert acc["retract"] == "6/6" and acc["new"] == "200/200"


def test_main_saves_a_refit_adapter(streams, tmp_path, monkeypatch, capsys):
    model = _model(streams)
    before = model.grounding.event.weight.detach().clone()
    monkeypatch.setattr(ge, "_model_dirs", lambda args: ("base", args.adapter))
    monkeypatch.setattr(ge, "_load_model", lambda args, base, adapter: model)
    out = tmp_path / "refit"
    assert refit_events.main(["--adapter", "x", "--out", str(out), "--num-streams", "10", "--steps", "3", "--report-streams", "2",
                              "--filler-tokens", "32", "--type-reads-relation", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "held-out events, after" in printed and "validation typing, after" in printed
    assert json.loads((out / "adapter_config.json").read_text())["type_reads_relation"] is True
    assert not torch.equal(model.grounding.event.weight, before)
    with pytest.raises(SystemExit):
        refit_events.main(["--adapter", "x", "--out", str(out), "--num-streams", "3"])


def test_main_lifecycle_fits_a_second_layer_and_keeps_the_writers(streams, tmp_path, monkeypatch):
    model = _model(streams)
    event = {k: v.clone() for k, v in model.grounding.event.state_dict().items()}
    monkeypatch.setattr(ge, "_model_dirs", lambda args: ("base", args.adapter))
    monkeypatch.setattr(ge, "_load_model", lambda args, base, adapter: model)
    out = tmp_path / "lifecycle"
    assert refit_events.main(["--adapter", "x", "--out", str(out), "--num-streams", "10", "--steps", "3", "--report-streams", "2",
                              "--filler-tokens", "32", "--type-reads-relation", "--lifecycle", "--no-progress"]) == 0
    for k, v in model.grounding.event.state_dict().items():
        assert torch.equal(v, event[k]), k
    assert not torch.equal(model.grounding.lifecycle_event.weight, event["weight"])
    assert json.loads((out / "adapter_config.json").read_text())["lifecycle_typing"] is True
    loaded = MemAdapterForCausalLM.from_pretrained(tiny_backbone("llama"), adapter=out, tokenizer=model.tokenizer)
    torch.testing.assert_close(loaded.grounding.lifecycle_event.weight, model.grounding.lifecycle_event.weight)
    mem = loaded.new_memory()
    loaded.ingest(mem, streams[0]["text"])
    ref = model.new_memory()
    model.ingest(ref, streams[0]["text"])
    assert mem.table(0) == ref.table(0)


def test_typing_report_counts_every_labelled_event(streams):
    model = _model(streams)
    report = refit_events.typing_report(model, streams, progress=False)
    n = sum(len(token_labels(s, model.tokenizer)["event_types"]) for s in streams)
    assert sum(sum(row.values()) for row in report.values()) == n
    assert set(report) <= set(EVENT_TYPES)
    assert all(set(row) <= set(EVENT_TYPES) | {"none"} for row in report.values())
