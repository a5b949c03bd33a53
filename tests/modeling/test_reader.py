"""The read path (modeling/reader.py) on tiny backbones: one candidate pool per question (usable
slots and events grounded in the retrieved chunks), scored by the learned ReadScorer."""

import logging

import pytest
import torch
from conftest import STREAM, build, ingest, tiny_backbone

from memadapter.errors import ConfigError
from memadapter.modeling import MemAdapterConfig, MemAdapterForCausalLM
from memadapter.modeling.read_scorer import FEATURES
from memadapter.modeling.selection import GroundedEvent


def _enc(tokenizer, *questions):
    return tokenizer(list(questions), return_tensors="pt", padding=True)


def _prefer(model, feature: str, weight: float = 10.0) -> None:
    """Make the scorer follow one feature (a stand-in for a fitted scorer)."""
    with torch.no_grad():
        model.read_scorer.linear.weight.zero_()
        model.read_scorer.linear.weight[0, FEATURES.index(feature)] = weight


def test_a_scorer_that_weighs_words_reads_the_slot_the_question_names(tokenizer):
    """Untrained keys cannot tell two facts apart; the question's words found in each entry's
    sentence (a hand-written slot's key text) can."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, top_k=1)
    _prefer(model, "lexical_sentence")
    mem = model.new_memory()
    mem.write("bob city", "rome")
    mem.write("alice city", "paris")
    for question, want in (("where does alice live", "alice city: paris"), ("what city is bob in", "bob city: rome")):
        enc = _enc(tokenizer, question)
        sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
        assert sel.texts[0] == [want] and sel.branch == ["memory"]


def test_grounded_events_join_the_pool_and_the_scorer_picks(tokenizer, monkeypatch):
    """A slot at stream position 40 and two grounded events (positions 10 and 60): the scorer
    decides which one is read, here by stream position (a fitted scorer learns such weights)."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, top_k=1, value_tokens=4)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    mem.slots.write(torch.nn.functional.normalize(torch.randn(1, 1, 16), dim=-1), torch.randn(1, 1, 16),
                    chunk_id=torch.tensor([[0]]), span=torch.tensor([[[40, 44]]]), key_text=[["alice"]],
                    value_text=[["paris"]])
    events = [GroundedEvent("alice", "rome", torch.zeros(16), torch.eye(16)[0], "new", 0.0, 10),
              GroundedEvent("alice", "berlin", torch.zeros(16), torch.eye(16)[1], "update", 0.0, 60)]
    monkeypatch.setattr(model, "_chunk_events", lambda *args: events)
    enc = _enc(tokenizer, "where does alice live")
    _prefer(model, "position")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.texts[0] == ["alice: berlin"] and sel.branch == ["fallback"]
    assert [i for i in sel.value_ids[0, 0].tolist() if i >= 0] == model.value_token_ids("berlin")
    _prefer(model, "slot")
    assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == ["alice: paris"]
    _prefer(model, "position", -10.0)
    assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == ["alice: rome"]


def test_a_grounded_retraction_reads_as_no_longer_known(tokenizer, monkeypatch):
    model = build(tiny_backbone("llama"), tokenizer, "prefix", value_tokens=4, withdrawn_text="unknown")
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    monkeypatch.setattr(model, "_chunk_events", lambda *args: [
        GroundedEvent("alice", None, torch.zeros(16), torch.eye(16)[0], "retract", 0.0, 5)])
    enc = _enc(tokenizer, "where does alice live")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.texts[0] == ["alice: no longer known"]
    want = model.value_token_ids("unknown")
    assert want and sel.value_ids[0, 0, :len(want)].tolist() == want


def test_an_empty_pool_injects_the_retrieved_chunk_summaries(tokenizer, monkeypatch):
    """No usable slot (the confidence bar) and no grounded event: fallback_chunks chunk summaries."""
    for n_chunks, want in ((None, 1), (3, 3)):
        model = build(tiny_backbone("llama"), tokenizer, "prefix", top_k=1, fallback_chunks=n_chunks,
                      router_confidence_threshold=1.0)
        mem = ingest(model, [STREAM])
        monkeypatch.setattr(model, "_chunk_events", lambda *args: [])
        enc = _enc(tokenizer, "where does alice live")
        sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
        chunks = {mem.indexes[0].text(i) for i in range(len(mem.indexes[0]))}
        assert sel.branch == ["fallback"] and len(sel.texts[0]) == want and set(sel.texts[0]) <= chunks
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="fallback_chunks"):
            MemAdapterConfig(read={"fallback_chunks": bad})


def test_the_tagger_s_events_of_the_retrieved_chunks_are_grounded(tokenizer):
    """Without monkeypatching: the tiny tagger proposes events in the ingested chunks, and a
    question with no usable slot reads one of them, with its value tokens."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", value_tokens=4, router_confidence_threshold=1.0)
    mem = ingest(model, [STREAM])
    enc = _enc(tokenizer, "where does alice live")
    qp = model.read_pools(mem, enc["input_ids"], enc["attention_mask"])[0]
    assert not qp.slots and qp.events and len(qp.pool) == len(qp.events)
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    key_text, value_text = sel.texts[0][0].split(": ", 1)
    chunks = " ".join(mem.indexes[0].text(i) for i in range(len(mem.indexes[0])))
    assert key_text.strip() in chunks and value_text.strip() in chunks


def test_a_withdrawn_slot_is_selected_as_no_longer_known(tokenizer):
    """A tombstone answers its question: its text says the fact was withdrawn, and it copies
    withdrawn_text's tokens (none when unset)."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", retract_tombstones=True, value_tokens=4,
                  router_confidence_threshold=0.0)
    mem = model.new_memory()
    mem.write("Alice city", "Paris")
    key = model.encode_text(["Alice city"], "key")
    mem.slots.write(key, model.encode_text(["gone"], "value"), event=torch.tensor([[2]]), key_text=[["Alice"]])
    assert mem.table()[0]["retracted"] and mem.table()[0]["value_text"] is None
    enc = _enc(tokenizer, "Where does Alice live?")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.branch == ["memory"] and sel.texts[0] == ["Alice city: no longer known"]
    assert bool((sel.value_ids == -1).all())
    model.config.read.withdrawn_text = "unknown"
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    want = model.value_token_ids("unknown")
    assert want and sel.value_ids[0, 0, : len(want)].tolist() == want
    for bad in ("", "  ", 3):
        with pytest.raises(ConfigError, match="withdrawn_text"):
            MemAdapterConfig(read={"withdrawn_text": bad})


def test_a_batch_is_scored_in_one_call_and_reads_credit_the_picked_slots(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, top_k=1)
    mem = model.new_memory(batch_size=2)
    mem.write("alice city", "paris", row=0)
    mem.write("bob city", "rome", row=1)
    calls = []
    model.read_scorer.register_forward_hook(lambda mod, args, out: calls.append(tuple(args[0].shape)))
    enc = _enc(tokenizer, "where does alice live", "what city is bob in")
    before = mem.slots.usage.clone()
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.texts == [["alice city: paris"], ["bob city: rome"]]
    assert calls == [(2, 1, len(FEATURES))]
    assert float((mem.slots.usage - before).sum()) == pytest.approx(2.0)


def test_name_chunks_adds_the_chunks_that_hold_the_question_names(tokenizer):
    """The hybrid search ranks filler that shares the question's common words first; name_chunks
    adds up to that many chunks holding its names ("Nina"), best by BM25 over the names alone."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", fallback_chunks=2)
    mem = model.new_memory()
    texts = ["the company did work for a company", "work at a company is work", "Nina is employed by Stonebridge Media",
             "a quiet essay", "Nina Keller and Nina again", "Ninas left"]
    hidden = model.config.hidden_size
    mem.indexes[0].add(torch.nn.functional.normalize(torch.randn(len(texts), hidden), dim=-1), texts)
    query = torch.zeros(hidden)  # the dense half says nothing: the words decide
    question = "Which company does Nina work for?"
    assert model._retrieved_chunks(mem, 0, query, question) == [0, 1]
    model.config.read.name_chunks = 1
    assert model._retrieved_chunks(mem, 0, query, question) == [0, 1, 4]
    assert model._retrieved_chunks(mem, 0, query, "which company does nina work for") == [0, 1]  # no name: no more
    model.config.read.name_chunks = 9
    assert model._retrieved_chunks(mem, 0, query, question) == [0, 1, 4, 2]  # only chunks that hold a name
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="name_chunks"):
            MemAdapterConfig(read={"name_chunks": bad})


def test_the_fitted_scorer_is_saved_and_an_adapter_without_one_reads_with_the_prior(tokenizer, tmp_path):
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer, "prefix")
    _prefer(model, "position", 3.0)
    model.save_pretrained(tmp_path / "a")
    loaded = MemAdapterForCausalLM.from_pretrained(bb, adapter=str(tmp_path / "a"), tokenizer=tokenizer)
    assert torch.equal(loaded.read_scorer.linear.weight, model.read_scorer.linear.weight)
    state = {k: v for k, v in model.adapter_state_dict().items() if not k.startswith("read_scorer.")}
    loaded.load_adapter_state_dict(state)  # saved before the learned reader
    w = loaded.read_scorer.linear.weight[0]
    assert float(w[FEATURES.index("key_match")]) == 1.0 and float(w[FEATURES.index("position")]) == 0.0
    with pytest.raises(ConfigError, match="missing keys"):
        loaded.load_adapter_state_dict({k: v for k, v in model.adapter_state_dict().items() if k != "read_scorer.linear.bias"})


def test_a_config_with_the_retired_read_rules_loads_without_them(caplog):
    cfg = {"model_type": "memadapter", "read": {"read_rule": "joint", "version_margin": 0.15, "name_chunks": 3},
           "lexical_weight": 0.3}
    with caplog.at_level(logging.WARNING):
        loaded = MemAdapterConfig.from_dict(cfg)
    assert loaded.read.name_chunks == 3 and "read_rule" in caplog.text and "lexical_weight" in caplog.text
    with pytest.raises(ConfigError, match="read_rule"):  # new code may not set one
        MemAdapterConfig(read={"read_rule": "joint"})


def test_slot_update_name_weight_reaches_the_slot_memory(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer, "prefix", slot_update_name_weight=0.2)
    assert model.new_memory().slots.update_name_weight == 0.2
    for bad in (-0.1, float("inf")):
        with pytest.raises(ConfigError, match="slot_update_name_weight"):
            MemAdapterConfig(ingest={"slot_update_name_weight": bad})
