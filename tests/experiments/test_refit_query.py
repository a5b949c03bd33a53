"""refit_query on a tiny random llama: pools equal the joint read's, labels, the fit, the cache, the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch

from memadapter.bm25 import lexical_agreement
from memadapter.heads import QueryHead
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training import generation_eval as ge
from memadapter.training.lifecycle_data import generate_stream
from memadapter.training.train import build_word_tokenizer
from experiments import refit_query

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def streams() -> list[dict]:
    rng = random.Random(0)
    return [generate_stream(rng, split="train", num_entities=2, num_updates=2, num_distractors=1, num_uniform=1,
                            filler_tokens=60) for _ in range(3)]


def _model(streams: list[dict]) -> MemAdapterForCausalLM:
    tok = build_word_tokenizer([s["text"] for s in streams], vocab_size=1000)
    torch.manual_seed(0)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, chunk_tokens=48, grounding_context_size=8,
                           read=dict(read_rule="joint", ground_fallback=True, lexical_weight=0.3, lexical_text="sentence",
                                     fallback_chunks=2, router_confidence_threshold=0.0))
    return MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()


@torch.no_grad()
def test_pools_score_as_the_joint_read_scores_its_entries(streams):
    model = _model(streams)
    cfg, seen, grounded = model.config, 0, 0
    for stream in streams:
        pools = refit_query.stream_pools(model, stream, ge.question_ids)
        memory = model.new_memory()
        model.ingest(memory, stream["text"], progress=False)
        mem = memory.slots
        usable = (mem.occupied[0] & (mem.confidence[0] >= cfg.read.router_confidence_threshold)).nonzero().flatten().tolist()
        assert len(pools) == len(stream["questions"])
        for pool, q in zip(pools, stream["questions"]):  # the reader's own path, question by question
            ids = torch.tensor([ge.question_ids(model.tokenizer, q["question"])])
            mask = torch.ones_like(ids, dtype=torch.bool)
            hidden = model._hidden(ids, mask)
            query = model.query_head(hidden, mask)[0].float()
            text = model._decode(ids[0].tolist())
            events = model._retrieved_events(memory, 0, model._mean(hidden, mask)[0].float(), query, text)
            bias = cfg.read.lexical_weight * torch.tensor(lexical_agreement(text, model._slot_lexical_texts(memory, 0)))
            want = [float(mem.keys[0, m].float() @ query + bias[m]) for m in usable] + [e.score for e in events]
            torch.testing.assert_close(pool.keys @ query + pool.lexical, torch.tensor(want), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(pool.hidden, hidden[0])
            assert pool.kind == q["kind"] and pool.labels.dtype == torch.bool
            seen, grounded = seen + len(want), grounded + len(events)
    assert seen > grounded > 0  # slots and grounded events both took part


def test_event_facts_label_each_event_sentence_by_its_entity_and_attribute(streams):
    model = _model(streams)
    stream = streams[0]
    facts = refit_query._event_facts(model.tokenizer, stream)
    enc = model.tokenizer(stream["text"], add_special_tokens=False, return_offsets_mapping=True)
    for (start, end, fact), event in zip(facts, stream["events"]):
        assert start < end
        first = enc["offset_mapping"][start]
        assert event["start"] <= first[1] and first[0] < event["end"]  # the span's first token is in the sentence
        want = None if event["event_type"] == "irrelevant" else (event["entity"], event["attribute"])
        assert fact == want and refit_query._fact_at(facts, start) == want
    assert refit_query._fact_at(facts, -1) is None


def _synthetic_pools(n: int, seed: int) -> list[refit_query.ReadPool]:
    """Pools where the asked entry's key is a fixed linear image of the question's mean hidden state,
    among random keys: a QueryHead can learn it; a random one cannot."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(16, 32, generator=torch.Generator().manual_seed(99))
    pools = []
    for _ in range(n):
        hidden = torch.randn(5, 32, generator=g)
        keys = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)
        keys[2] = torch.nn.functional.normalize(proj @ hidden.mean(0), dim=-1)
        labels = torch.zeros(6, dtype=torch.bool)
        labels[2] = True
        pools.append(refit_query.ReadPool(hidden, keys, torch.zeros(6), labels, "uniform"))
    return pools


def test_fit_query_head_learns_the_pools_and_keeps_the_best_held_epoch():
    torch.manual_seed(0)
    head = QueryHead(32, 16)
    fit, held = _synthetic_pools(200, 0), _synthetic_pools(50, 1)
    before = refit_query.pool_accuracy(head, held)["all"]
    log = refit_query.fit_query_head(head, fit, held, epochs=15, lr=1e-2, temperature=0.1, progress=False)
    after = refit_query.pool_accuracy(head, held)["all"]
    assert after[1] == before[1] == 50 and after[0] >= 45 > before[0]
    assert after[0] == max(row["held_right"] for row in log) and log[0]["epoch"] == 0


def test_fit_query_head_keeps_the_trained_weights_when_no_epoch_beats_them():
    torch.manual_seed(0)
    head = QueryHead(32, 16)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    held = _synthetic_pools(20, 1)
    for p in held:
        p.labels[:] = True  # every entry right: every epoch ties epoch 0
    refit_query.fit_query_head(head, _synthetic_pools(40, 0), held, epochs=2, lr=1e-2, progress=False)
    for k, v in head.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_each_positive_loss_asks_every_version_to_beat_the_other_entries():
    head = QueryHead(4, 2)
    with torch.no_grad():  # a query of (1, 0) whatever the question
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.tensor([1.0, 0.0]))
    # version 0 far ahead, version 1 below the negative: the set loss is content, the each loss is not
    keys = torch.tensor([[1.0, 0.0], [-0.5, 0.0], [0.0, 0.0]])
    pool = refit_query.ReadPool(torch.randn(3, 4), keys, torch.zeros(3), torch.tensor([True, True, False]), "version")
    set_loss = refit_query.pool_loss(head, [pool], 0.1, "set").item()
    each_loss = refit_query.pool_loss(head, [pool], 0.1, "each").item()
    assert set_loss < 0.01 and each_loss > 2.0
    with pytest.raises(ValueError, match="positives"):
        refit_query.pool_loss(head, [pool], 0.1, "all")


def test_pools_round_trip_through_safetensors(tmp_path):
    pools = _synthetic_pools(4, 0)
    pools[1].kind = "retraction"
    path = str(tmp_path / "pools.safetensors")
    refit_query.save_pools(pools, path)
    back = refit_query.load_pools(path)
    assert [p.kind for p in back] == [p.kind for p in pools]
    for a, b in zip(back, pools):
        for field in ("hidden", "keys", "lexical", "labels"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_main_saves_an_adapter_that_differs_in_the_query_head_only(streams, tmp_path, monkeypatch, capsys):
    model = _model(streams)
    before = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    monkeypatch.setattr(ge, "_model_dirs", lambda args: ("base", args.adapter))
    monkeypatch.setattr(ge, "_load_model", lambda args, base, adapter: model)
    out, cache, report = tmp_path / "refit", tmp_path / "pools.safetensors", tmp_path / "report.json"
    args = ["--adapter", "x", "--out", str(out), "--num-streams", "5", "--filler-tokens", "40", "--epochs", "2",
            "--pools", str(cache), "--report", str(report), "--no-progress"]
    assert refit_query.main(args) == 0
    assert "pool accuracy, refit" in capsys.readouterr().out and cache.exists()
    assert json.loads(report.read_text())["log"][0]["epoch"] == 0
    loaded = MemAdapterForCausalLM.from_pretrained(tiny_backbone("llama"), adapter=out, tokenizer=model.tokenizer)
    for k, v in loaded.adapter_state_dict().items():
        if not k.startswith("query_head."):
            assert torch.equal(v, before[k]), k
    assert refit_query.main(args) == 0  # the second run reads the cached pools
    with pytest.raises(SystemExit):
        refit_query.main(["--adapter", "x", "--out", str(out), "--num-streams", "3"])
