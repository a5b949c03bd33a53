"""A memory carries the fingerprint of the adapter that made it, and any other adapter refuses it
(even one of the same sizes); a hand-built memory, or the same adapter loaded again, is accepted."""

from unittest import mock

import pytest
import torch
from conftest import QUESTIONS, STREAM, build, ingest, tiny_backbone

from memadapter.errors import AdapterMismatchError
from memadapter.modeling import MemAdapterForCausalLM, input_checks


@pytest.fixture(scope="module")
def pair(tokenizer):
    """Adapters A and B: same backbone, same sizes, different weights."""
    backbone = tiny_backbone("llama")
    return build(backbone, tokenizer, seed=0), build(backbone, tokenizer, seed=1)


@pytest.fixture(scope="module")
def enc(tokenizer):
    return tokenizer(QUESTIONS[:1], return_tensors="pt")


def _state(memory):
    return memory.table(0), memory.slots.keys.clone(), memory.slots.values.clone(), list(memory.tokens_seen)


def test_new_memory_carries_the_adapters_fingerprint(pair):
    a, b = pair
    assert a.new_memory().adapter_id == a.adapter_fingerprint() != b.adapter_fingerprint()
    assert len(a.adapter_fingerprint()) == 64


def test_every_entry_point_refuses_another_adapters_memory_and_leaves_it_unchanged(pair, enc):
    a, b = pair
    memory = ingest(a, [STREAM])
    before = _state(memory)
    calls = {
        "ingest": lambda: b.ingest(memory, "bob lives in rome"),
        "select": lambda: b.select(memory, enc["input_ids"], enc["attention_mask"]),
        "forward": lambda: b(**enc, memory=memory),
        "generate": lambda: b.generate(**enc, memory=memory, max_new_tokens=2),
    }
    ids = rf"another adapter \(id {a.adapter_fingerprint()[:12]}\), not this one \(id {b.adapter_fingerprint()[:12]}\)"
    for name, call in calls.items():
        with pytest.raises(AdapterMismatchError, match=f"memory: was made by {ids}"):
            call()
        after = _state(memory)
        assert after[0] == before[0] and after[3] == before[3], name
        assert torch.equal(after[1], before[1]) and torch.equal(after[2], before[2]), name
    a(**enc, memory=memory)  # its own adapter still reads it


def test_a_hand_built_memory_is_accepted_by_any_adapter(pair, enc):
    a, b = pair
    memory = a.new_memory()
    memory.adapter_id = None  # as a memory built from RequestMemory(...) directly
    b.ingest(memory, STREAM)
    b(**enc, memory=memory)


def test_the_same_adapter_saved_and_loaded_reads_the_memory(pair, enc, tokenizer, tmp_path):
    a, _ = pair
    memory = ingest(a, [STREAM])
    a.save_pretrained(tmp_path)
    loaded = MemAdapterForCausalLM.from_pretrained(tiny_backbone("llama"), adapter=tmp_path, tokenizer=tokenizer)
    assert loaded.adapter_fingerprint() == a.adapter_fingerprint()
    torch.testing.assert_close(loaded(**enc, memory=memory).logits, a(**enc, memory=memory).logits, rtol=0, atol=0)


def test_settings_that_may_change_keep_the_fingerprint_but_a_training_step_changes_it(tokenizer, enc):
    model = build(tiny_backbone("llama"), tokenizer)
    memory = ingest(model, [STREAM])
    before = model.adapter_fingerprint()
    model.config.top_k, model.config.read.name_chunks, model.config.ingest.slot_match_threshold = 1, 3, 0.95
    model.config.injection = "text"  # generation_eval switches the injection on one memory
    assert model.adapter_fingerprint() == before
    model.config.injection = "prefix"
    model(**enc, memory=memory)
    params = [p for _, p in model.adapter_parameters()]
    sum(p.sum() for p in params).backward()
    torch.optim.SGD(params, lr=0.1).step()
    assert model.adapter_fingerprint() != before
    with pytest.raises(AdapterMismatchError, match="before its weights or config changed"):
        model(**enc, memory=memory)
    model(**enc, memory=ingest(model, [STREAM]))  # a memory made after the step is its own


def test_the_fingerprint_is_hashed_again_only_when_a_tensor_changed(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer)
    with mock.patch.object(input_checks, "adapter_fingerprint", wraps=input_checks.adapter_fingerprint) as hashed:
        first = model.adapter_fingerprint()
        assert model.adapter_fingerprint() == first and hashed.call_count == 1
        with torch.no_grad():
            next(model.query_head.parameters()).mul_(2.0)  # in place: the version counter moves
        assert model.adapter_fingerprint() != first and hashed.call_count == 2
        model.load_adapter_state_dict(build(tiny_backbone("llama"), tokenizer).adapter_state_dict())  # same seed
        assert model.adapter_fingerprint() == first and hashed.call_count == 3
