"""MemAdapterForCausalLM on tiny random backbones of every family. No network: Hub calls are mocked."""

import json
import random
import shutil
from unittest import mock

import pytest
import torch
from conftest import ALL_MODEL_TYPES, tiny_backbone
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from memadapter.errors import AdapterMismatchError, ConfigError, ShapeError, UnsafeLoadError
from memadapter.modeling import MemAdapterConfig, MemAdapterForCausalLM, hub
from memadapter.modeling.selection import GroundedEvent

torch.set_num_threads(1)
SMALL = dict(key_dim=16, value_dim=16, num_slots=8, top_k=2, chunk_tokens=8, read_layer=1)
STREAM = "alice lives in paris . the old fact : bob lives in rome . update alice now moved to berlin"
QUESTIONS = ["where does alice live", "what city is bob in now"]


def build(backbone, tok, injection="prefix", seed=0, **kw):
    if injection == "cross_attn":
        kw = {"cross_attn_layers": [1], "cross_attn_gate_init": 0.5, **kw}
    torch.manual_seed(seed)
    model = MemAdapterForCausalLM.from_pretrained(backbone, tokenizer=tok, injection=injection, **{**SMALL, **kw})
    with torch.no_grad():  # an untrained tagger may say "O" everywhere: make it propose NEW facts
        model.grounding.tagger.bias[0] = -5.0
        model.grounding.event.bias[0] = 5.0
    return model


def ingest(model, texts):
    mem = model.new_memory(batch_size=len(texts))
    model.ingest(mem, texts)
    return mem


@pytest.mark.parametrize("model_type", ALL_MODEL_TYPES)
def test_family_contract(model_type, tokenizer, tmp_path):
    bb = tiny_backbone(model_type)
    model = build(bb, tokenizer)
    enc = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    mem = ingest(model, [STREAM, "bob lives in london"])
    assert mem.table(0), "the untrained head still proposes and writes candidates"
    logits = model(**enc, memory=mem).logits

    # save/load round trip: identical logits, only the adapter files, no backbone tensor
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(hub.ADAPTER_FILE_NAMES)
    assert not any(k.startswith("backbone.") for k in load_file(tmp_path / hub.ADAPTER_WEIGHTS_NAME))
    loaded = MemAdapterForCausalLM.from_pretrained(bb, adapter=tmp_path, tokenizer=tokenizer)
    mem2 = ingest(loaded, [STREAM, "bob lives in london"])
    assert mem2.table(0) == mem.table(0)
    torch.testing.assert_close(loaded(**enc, memory=mem2).logits, logits, rtol=0, atol=0)

    # disabled adapter == base model exactly
    with model.disable_adapter():
        torch.testing.assert_close(model(**enc, memory=mem).logits, bb(**enc).logits, rtol=0, atol=0)

    # only adapter parameters receive gradients
    out = model(**enc, memory=mem, labels=enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100))
    out.loss.backward()
    assert all(p.grad is None for p in bb.parameters())
    assert model.injector.proj.weight.grad is not None and model.injector.proj.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)

    # generation with cache == without; left-padded batch == each row alone, unpadded
    g = dict(max_new_tokens=4, do_sample=False)
    with_cache = model.generate(**enc, memory=mem, use_cache=True, **g)
    assert torch.equal(with_cache, model.generate(**enc, memory=mem, use_cache=False, **g))
    for b, (q, text) in enumerate(zip(QUESTIONS, [STREAM, "bob lives in london"])):
        single = tokenizer([q], return_tensors="pt")
        alone = model.generate(**single, memory=ingest(model, [text]), **g)
        n = int(enc["attention_mask"][b].sum())
        assert torch.equal(with_cache[b, -4:], alone[0, -4:]), (model_type, b)
        assert torch.equal(with_cache[b, -4 - n:-4], alone[0, :n])


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "glm4"])
def test_cross_attn_generation(model_type, tokenizer):
    bb = tiny_backbone(model_type)
    enc = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    model = build(bb, tokenizer, "cross_attn")
    mem = ingest(model, [STREAM, "bob lives in london"])
    out = model.generate(**enc, memory=mem, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, model.generate(**enc, memory=mem, max_new_tokens=4, do_sample=False, use_cache=False))
    assert not torch.equal(model(**enc, memory=mem).logits, bb(**enc).logits)  # gate 0.5: memory acts
    zero = build(bb, tokenizer, "cross_attn", cross_attn_gate_init=0.0)  # gate 0 is the identity
    torch.testing.assert_close(zero(**enc, memory=ingest(zero, [STREAM, "x"])).logits, bb(**enc).logits, rtol=0, atol=0)
    assert all(type(layer).__name__ != "_CrossAttnLayer" for layer in bb.model.layers)  # unwrapped after


def test_text_injection_puts_selected_source_text_in_the_prompt(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer, "text")
    mem = ingest(model, [STREAM])
    enc = tokenizer(["where does alice lives"], return_tensors="pt")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.texts[0], "something was selected"
    ids, mask, where = model._text_inputs(sel, enc["input_ids"], enc["attention_mask"])
    prompt = tokenizer.decode(ids[0][mask[0].bool()])
    assert sel.texts[0][0].split()[0] in prompt and prompt.endswith("where does alice lives")
    out = model.generate(**enc, memory=mem, max_new_tokens=3, do_sample=False)
    assert torch.equal(out[:, : enc["input_ids"].shape[1]], enc["input_ids"])
    logits = model(**enc, memory=mem).logits
    assert logits.shape[:2] == enc["input_ids"].shape


def test_sampling_is_deterministic_under_a_seed(tokenizer):
    bb = tiny_backbone("qwen2")
    enc = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    outs = []
    for _ in range(2):
        model = build(bb, tokenizer, seed=3)
        mem = ingest(model, [STREAM, "bob lives in london"])
        torch.manual_seed(7)
        outs.append((model.generate(**enc, memory=mem, max_new_tokens=5, do_sample=True, top_k=50), mem.table(0)))
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]


def test_request_isolation_batched_and_sequential(tokenizer):
    """Row b's active set and table hold only words of row b's stream; its output equals serving it alone."""
    model = build(tiny_backbone("llama"), tokenizer, "text", chunk_tokens=6)
    vocab = "alice bob carol dave paris london rome berlin red blue green city color fact value key".split()
    rng = random.Random(0)
    for _ in range(3):  # one model object, requests one batch after another
        rng.shuffle(vocab)
        groups = [vocab[i * 4:(i + 1) * 4] for i in range(4)]
        streams = [" ".join(rng.choice(g) for _ in range(14)) for g in groups]
        mem = ingest(model, streams)
        enc = tokenizer([" ".join(rng.sample(g, 3)) for g in groups], return_tensors="pt", padding=True)
        sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
        out = model.generate(**enc, memory=mem, max_new_tokens=3, do_sample=False)
        for b, g in enumerate(groups):
            words = {w for r in mem.table(b) for t in (r["key_text"], r["value_text"]) if t for w in t.split()}
            # Memory-branch texts read "key: value"; the colon is the format, not a stream word.
            words |= {w for t in sel.texts[b] for w in t.replace(":", " ").split()} - {"None"}
            assert words <= set(g), (b, words - set(g))
            alone_mem = ingest(model, [streams[b]])
            single = tokenizer([tokenizer.decode(enc["input_ids"][b][enc["attention_mask"][b].bool()])], return_tensors="pt")
            alone = model.generate(**single, memory=alone_mem, max_new_tokens=3, do_sample=False)
            assert torch.equal(out[b, -3:], alone[0, -3:])


def test_ingest_is_chunked_reads_only_to_read_layer_and_stays_bounded(tokenizer, capsys):
    bb = tiny_backbone("mistral")
    model = build(bb, tokenizer, num_slots=4)
    calls = []
    handle = bb.model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        mem = model.new_memory()
        report = model.ingest(mem, " ".join([STREAM] * 6), progress=True)
    finally:
        handle.remove()
    assert calls == [], "layers at or past read_layer must not run during ingest"
    n_tokens = len(tokenizer(" ".join([STREAM] * 6), add_special_tokens=False)["input_ids"])
    assert report.chunks == [-(-n_tokens // 8)] and len(mem.indexes[0]) == report.chunks[0]
    assert int(mem.slots.occupied.sum()) <= 4 and mem.tokens_seen == [n_tokens]
    assert mem.indexes[0].span(1) == (8, 16)
    assert "ingest" in capsys.readouterr().err  # the tqdm bar


def test_ingest_bad_input_leaves_memory_unchanged(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer)
    mem = ingest(model, [STREAM, "bob"])
    before = (mem.table(0), mem.table(1), [len(i) for i in mem.indexes], list(mem.tokens_seen))
    with pytest.raises(ShapeError, match="text_or_ids"):
        model.ingest(mem, ["only one row"])
    with mock.patch.object(model.grounding, "propose", side_effect=RuntimeError("boom")):
        with pytest.raises(RuntimeError):
            model.ingest(mem, ["alice lives in rome", "carol"])
    assert (mem.table(0), mem.table(1), [len(i) for i in mem.indexes], list(mem.tokens_seen)) == before
    with pytest.raises(ShapeError, match="memory"):
        model.generate(**tokenizer(["where"], return_tensors="pt"), memory=mem)


def test_text_edits_with_a_real_encoder(tokenizer):
    model = build(tiny_backbone("qwen3"), tokenizer)
    mem = model.new_memory()
    mem.write("alice city", "paris")
    mem.write("alice city", "berlin")
    rows = mem.table()
    assert [(r["value_text"], r["version"]) for r in rows] == [("berlin", 2)]
    assert mem.forget("ALICE") == 1 and mem.table() == []


def test_gradient_checkpointing_gives_the_same_adapter_grads(tokenizer):
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer)
    enc = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    mem = ingest(model, [STREAM, "bob"])
    grads = []
    for ckpt in (False, True):
        model.train()
        model.gradient_checkpointing_enable() if ckpt else model.gradient_checkpointing_disable()
        model(**enc, memory=mem, labels=labels).loss.backward()
        grads.append(model.injector.proj.weight.grad.clone())
        model.zero_grad(set_to_none=True)
    assert bb.model.gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1])


def test_peft_lora_combines_with_the_memory_adapter(tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    def lora_backbone():
        torch.manual_seed(1)
        return get_peft_model(tiny_backbone("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))

    model = build(lora_backbone(), tokenizer)
    assert any("lora_" in k for k in model.adapter_state_dict())
    enc = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    mem = ingest(model, [STREAM, "bob"])
    out = model(**enc, memory=mem, labels=enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100))
    out.loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any("lora_" in n for n in trained) and all(n.startswith(("injector", "backbone")) for n in trained)
    assert all("lora_" in n for n in trained if n.startswith("backbone"))
    model.save_pretrained(tmp_path)
    fresh = lora_backbone()
    with torch.no_grad():  # scramble the fresh LoRA so that only the load can make logits agree
        for n, p in fresh.named_parameters():
            if "lora_" in n:
                p.add_(1.0)
    loaded = MemAdapterForCausalLM.from_pretrained(fresh, adapter=tmp_path, tokenizer=tokenizer)
    torch.testing.assert_close(loaded(**enc, memory=ingest(loaded, [STREAM, "bob"])).logits, out.logits.detach(), rtol=0, atol=0)


def test_adapter_for_another_family_or_size_fails_naming_both(tokenizer, tmp_path):
    build(tiny_backbone("llama"), tokenizer).save_pretrained(tmp_path)
    with pytest.raises(AdapterMismatchError, match=r"'llama'.*'qwen2'"):
        MemAdapterForCausalLM.from_pretrained(tiny_backbone("qwen2"), adapter=tmp_path)
    with pytest.raises(AdapterMismatchError, match=r"64.*128"):
        MemAdapterForCausalLM.from_pretrained(tiny_backbone("llama", hidden_size=128), adapter=tmp_path)


def test_crafted_adapter_config_cannot_enable_remote_code(tokenizer, tmp_path):
    build(tiny_backbone("llama"), tokenizer).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / hub.ADAPTER_CONFIG_NAME).read_text())
    cfg.update(trust_remote_code=True, auto_map={"AutoModelForCausalLM": "evil.Model"})
    (tmp_path / hub.ADAPTER_CONFIG_NAME).write_text(json.dumps(cfg))
    with mock.patch("transformers.AutoModelForCausalLM.from_pretrained", side_effect=AssertionError("loaded base")):
        with pytest.raises(UnsafeLoadError):
            MemAdapterForCausalLM.from_pretrained("some/base", adapter=tmp_path)


def test_hub_ids_resolve_through_mocked_download_and_push_uploads_adapter_files(tokenizer, tmp_path):
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer)
    src = tmp_path / "src"
    model.save_pretrained(src)
    cache = tmp_path / "cache"
    cache.mkdir()

    def fake_download(repo_id, filename, revision=None, token=None):
        assert (repo_id, revision) == ("me/adapter", "main")
        return str(shutil.copy(src / filename, cache / filename))

    with mock.patch.object(hub, "hf_hub_download", side_effect=fake_download):
        loaded = MemAdapterForCausalLM.from_pretrained(bb, adapter="me/adapter", revision="main", tokenizer=tokenizer)
    for k, v in model.adapter_state_dict().items():
        assert torch.equal(v, loaded.adapter_state_dict()[k])
    with mock.patch.object(hub, "HfApi") as api_cls:
        model.push_to_hub("me/adapter", private=True)
    ops = api_cls.return_value.create_commit.call_args.kwargs["operations"]
    assert sorted(op.path_in_repo for op in ops) == sorted(hub.ADAPTER_FILE_NAMES)


def test_base_loads_from_a_local_dir_and_auto_classes_are_registered(tokenizer, tmp_path):
    tiny_backbone("llama").save_pretrained(tmp_path / "base")
    model = MemAdapterForCausalLM.from_pretrained(str(tmp_path / "base"), tokenizer=tokenizer, **SMALL)
    assert model.config.base_model_name_or_path == str(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    again = MemAdapterForCausalLM.from_pretrained(adapter=tmp_path / "adapter", tokenizer=tokenizer)  # base from config
    for k, v in model.adapter_state_dict().items():
        assert torch.equal(v, again.adapter_state_dict()[k])
    assert type(AutoConfig.for_model("memadapter")) is MemAdapterConfig
    assert AutoModelForCausalLM._model_mapping[MemAdapterConfig] is MemAdapterForCausalLM
    with pytest.raises(ConfigError, match="backbone"):
        AutoModelForCausalLM.from_config(MemAdapterConfig())


def test_router_branches_memory_then_chunk_fallback(tokenizer):
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer, "text", router_match_threshold=-1.0)  # any occupied slot matches
    mem = model.new_memory()
    mem.write("alice city", "paris")
    enc = tokenizer(["where does alice lives"], return_tensors="pt")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.branch == ["memory"] and sel.texts[0] == ["alice city: paris"]
    # Ingested slots (confidence = p_write ~ 0.88) below the confidence bar: the row falls back to chunks.
    strict = build(bb, tokenizer, "text", router_match_threshold=-1.0, router_confidence_threshold=0.95)
    mem2 = ingest(strict, [STREAM])
    assert mem2.table()
    sel2 = strict.select(mem2, enc["input_ids"], enc["attention_mask"])
    assert sel2.branch == ["fallback"] and all(t in {mem2.indexes[0].text(i) for i in range(len(mem2.indexes[0]))} for t in sel2.texts[0])
    with pytest.raises(ConfigError, match="config_overrides"):
        MemAdapterForCausalLM.from_pretrained(bb, adapter="x/y", num_slots=3)


@pytest.mark.parametrize("injection", ["prefix", "cross_attn"])
def test_value_tokens_reach_the_injection_as_the_slot_value(tokenizer, injection):
    """value_tokens > 0: the selected slot's value tokens are embedded and injected (prefix tokens or
    cross-attention memory); cache on/off agree; forward_with_values insists on matching ids."""
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer, injection, router_match_threshold=-1.0, top_k=1, value_tokens=3)
    mem = model.new_memory()
    mem.write("alice city", "paris rome")
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    want = tokenizer(" paris rome", add_special_tokens=False)["input_ids"][:3]
    assert sel.branch == ["memory"] and sel.value_ids[0, 0, : len(want)].tolist() == want
    assert (sel.value_ids[0, 0, len(want):] == -1).all()
    out = model.generate(**enc, memory=mem, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, model.generate(**enc, memory=mem, max_new_tokens=4, do_sample=False, use_cache=False))
    # The copied tokens change the output: other value text, same pooled vector -> other logits.
    ids2 = sel.value_ids.clone()
    ids2[0, 0, 0] = (ids2[0, 0, 0] + 1) % bb.config.vocab_size
    a = model.forward_with_values(enc["input_ids"], enc["attention_mask"], sel.values, sel.valid, value_ids=sel.value_ids)
    b = model.forward_with_values(enc["input_ids"], enc["attention_mask"], sel.values, sel.valid, value_ids=ids2)
    assert not torch.allclose(a.logits, b.logits)
    with pytest.raises(ConfigError, match="value_ids"):
        model.forward_with_values(enc["input_ids"], enc["attention_mask"], sel.values, sel.valid)
    with pytest.raises(ShapeError, match="value_ids"):
        model.forward_with_values(enc["input_ids"], enc["attention_mask"], sel.values, sel.valid,
                                  value_ids=sel.value_ids[..., :2])
    with pytest.raises(ConfigError, match="value_tokens"):
        MemAdapterForCausalLM.from_pretrained(bb, tokenizer=tokenizer, value_tokens=-1)


def test_ground_fallback_injects_the_best_matching_event_of_the_retrieved_chunks(tokenizer):
    """No slot matches (threshold 2): the retrieved chunks are re-read, and the proposed event whose
    key best matches the question is injected as one entry, with its value tokens."""
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer, "prefix", router_match_threshold=2.0, ground_fallback=True, value_tokens=4)
    mem = ingest(model, [STREAM])
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.branch == ["fallback"] and len(sel.texts[0]) == 1 and int(sel.valid.sum()) == 1
    key_text, value_text = sel.texts[0][0].split(": ", 1)
    chunks = " ".join(mem.indexes[0].text(i) for i in range(len(mem.indexes[0])))
    assert key_text.strip() in chunks and value_text.strip() in chunks
    want = tokenizer(" " + value_text.strip(), add_special_tokens=False)["input_ids"][:4]
    assert [i for i in sel.value_ids[0, 0].tolist() if i >= 0] == want
    # Without it the same row injects whole retrieved chunks, with no value tokens to copy.
    plain = build(bb, tokenizer, "prefix", router_match_threshold=2.0, value_tokens=4)
    sel2 = plain.select(ingest(plain, [STREAM]), enc["input_ids"], enc["attention_mask"])
    assert all(t in chunks for t in sel2.texts[0]) and bool((sel2.value_ids == -1).all())


def test_slot_match_threshold_reaches_the_memory(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer, slot_match_threshold=0.6)
    assert model.new_memory().slots.match_threshold == 0.6
    assert model.new_memory().slots.update_match_threshold == 0.6 and not model.new_memory().slots.tombstones
    model = build(tiny_backbone("llama"), tokenizer, slot_update_match_threshold=0.3, retract_tombstones=True)
    slots = model.new_memory().slots
    assert slots.update_match_threshold == 0.3 and slots.tombstones


def test_lexical_weight_lets_the_words_of_the_question_pick_the_slot(tokenizer):
    """Untrained keys cannot tell two facts apart; the question's words against the slots' key
    texts can. A large lexical weight makes the selection follow the named entity."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=10.0)
    mem = model.new_memory()
    mem.write("bob city", "rome")
    mem.write("alice city", "paris")
    for question, want in (("where does alice live", "alice city: paris"), ("what city is bob in", "bob city: rome")):
        enc = tokenizer([question], return_tensors="pt")
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want]
    with pytest.raises(ConfigError, match="lexical_weight"):
        MemAdapterForCausalLM.from_pretrained(tiny_backbone("llama"), tokenizer=tokenizer, lexical_weight=-1.0)


def test_fallback_chunks_widens_the_fallback_search_not_the_slot_count(tokenizer):
    """fallback_chunks sets how many chunks the fallback retrieves (top_k when None); without
    grounding each retrieved chunk's summary is injected, so the row shows the count."""
    for n_chunks, want in ((None, 1), (3, 3)):
        model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=2.0, top_k=1,
                      fallback_chunks=n_chunks)  # no slot can reach 2.0: every question falls back
        mem = ingest(model, [STREAM])
        enc = tokenizer(["where does alice live"], return_tensors="pt")
        sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
        assert sel.branch == ["fallback"] and len(sel.texts[0]) == want
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="fallback_chunks"):
            MemAdapterConfig(fallback_chunks=bad)


def test_lexical_text_sentence_tells_apart_two_facts_of_one_entity(tokenizer):
    """Two slots with the same key text ("bob"): their key texts tie, their sentences (re-read from
    the chunks they came from) carry the relation words that the question shares with one of them."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=10.0, lexical_text="sentence")
    mem = model.new_memory()
    for i, text in enumerate(("bob lives in rome", "the color of bob is red")):
        n = len(text.split())
        mem.indexes[0].add(torch.randn(1, model.config.hidden_size), [text], torch.tensor([[10 * i, 10 * i + n]]))
    keys = torch.nn.functional.normalize(torch.tensor([[[1.0] + [0.0] * 15, [0.0, 1.0] + [0.0] * 14]]), dim=-1)
    mem.slots.write(keys, torch.randn(1, 2, 16), chunk_id=torch.tensor([[0, 1]]),
                    span=torch.tensor([[[0, 4], [13, 16]]]), key_text=[["bob", "bob"]], value_text=[["rome", "red"]])
    assert [r["value_text"] for r in mem.table()] == ["rome", "red"]
    assert model._slot_lexical_texts(mem, 0)[:2] == ["bob lives in rome", "the color of bob is red"]
    for question, want in (("the color of bob", "bob: red"), ("bob lives where", "bob: rome")):
        enc = tokenizer([question], return_tensors="pt")
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want], question
    model.config.lexical_text = "key"
    assert model._slot_lexical_texts(mem, 0)[:2] == ["bob", "bob"]
    with pytest.raises(ConfigError, match="lexical_text"):
        MemAdapterConfig(lexical_text="chunk")


def test_a_retrieved_event_that_names_the_question_better_replaces_the_slot(tokenizer, monkeypatch):
    """The lookalike rule of select: a grounded event from the retrieved chunks replaces the selected
    slot only when its key text covers strictly more of the question's words (the grounding is
    fixed here; what it proposes on real text is the trained head's job)."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=0.2, ground_fallback=True)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    mem.write("bob city", "rome")  # words the tiny tokenizer knows; think "the Lumen printer"

    def event(key: str):
        return lambda *args: [GroundedEvent(key, "paris", torch.zeros(16), torch.zeros(16), "new", 1.0, 0)]

    cases = (("old bob", "where does old bob live", "old bob: paris"),  # "the Lumen Mini printer"
             ("old bob", "where does bob live", "bob city: rome"),
             ("bob", "where does old bob live", "bob city: rome"))  # same words: the slot's lifecycle wins
    for key, question, want in cases:
        monkeypatch.setattr(model, "_ground_chunks", event(key))
        enc = tokenizer([question], return_tensors="pt")
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want], (key, question)


def test_named_events_any_lets_a_lower_scored_event_that_names_the_question_replace_the_slot(tokenizer, monkeypatch):
    """The best grounded event carries the slot's own name (an older fact of it); another event names
    the look-alike the question asks about. "best" keeps the slot, "any" takes the named event."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=0.2, ground_fallback=True)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    mem.write("bob city", "rome")
    events = [GroundedEvent("bob", "paris", torch.zeros(16), torch.zeros(16), "new", 2.0, 0),
              GroundedEvent("old bob", "berlin", torch.zeros(16), torch.zeros(16), "new", 1.0, 0)]
    monkeypatch.setattr(model, "_ground_chunks", lambda *args: events)
    enc = tokenizer(["where does old bob live"], return_tensors="pt")
    for mode, want in (("best", "bob city: rome"), ("any", "old bob: berlin")):
        model.config.named_events = mode
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want], mode
    with pytest.raises(ConfigError, match="named_events"):
        MemAdapterConfig(named_events="all")


def test_version_margin_reads_the_newest_of_two_versions_of_a_fact(tokenizer):
    """Two slots hold versions of one fact (an update that missed the old slot at write time):
    the keys rank the older one first by a hair; with version_margin the later write is read."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, slot_match_threshold=0.999)  # two slots, not one
    mem = model.new_memory()
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    with torch.no_grad():
        q = model.query_head(model._hidden(enc["input_ids"], enc["attention_mask"]), enc["attention_mask"].bool())
    q = torch.nn.functional.normalize(q.float().cpu(), dim=-1)[0]
    other = torch.nn.functional.normalize(torch.randn(16), dim=0)
    other = torch.nn.functional.normalize(other - (other @ q) * q, dim=0)  # orthogonal to the query
    old, new = q, torch.nn.functional.normalize(q + 0.2 * other, dim=0)  # cosines 1.0 and ~0.98
    for key, value in ((old, "paris"), (new, "berlin"), (-q, "rome")):
        mem.slots.write(key[None, None], torch.randn(1, 1, 16), key_text=[["alice"]], value_text=[[value]])
    select = lambda: model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0]
    assert select() == ["alice: paris"]
    model.config.version_margin = 0.1
    assert select() == ["alice: berlin"]
    model.config.version_margin = 0.001  # the newer version is not a near tie at this margin
    assert select() == ["alice: paris"]
    model.config.version_margin, model.config.version_key_cosine = 0.1, 0.99  # nor a version at this cosine
    assert select() == ["alice: paris"]
    for bad in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(ConfigError, match="version_margin"):
            MemAdapterConfig(version_margin=bad)
    with pytest.raises(ConfigError, match="version_key_cosine"):
        MemAdapterConfig(version_key_cosine=1.5)


def test_a_later_grounded_update_of_the_slots_fact_replaces_the_slot(tokenizer, monkeypatch):
    """An update the write path missed: the retrieved chunks hold a later update of the slot's fact.
    With version_margin it replaces the slot when it comes after the slot's event, scores within
    the margin of the slot's key match and has the slot's key; otherwise the slot stays."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=0.2, ground_fallback=True)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    key = model.encode_text(["alice city"], "key")  # [1, dk], unit
    mem.slots.write(key[:, None], torch.randn(1, 1, 16), chunk_id=torch.tensor([[0]]), span=torch.tensor([[[10, 14]]]),
                    key_text=[["alice"]], value_text=[["paris"]])
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    other = torch.nn.functional.normalize(torch.randn(key.shape[1]), dim=0)

    def events(position: int, score: float, kind: str = "update", event_key=key[0]):
        return lambda *args: [GroundedEvent("alice", "berlin", torch.zeros(16), event_key, kind, score, position)]

    cases = ((None, events(40, 5.0), "alice: paris"),  # off: same words, the slot's lifecycle wins
             (0.1, events(40, 5.0), "alice: berlin"),  # later, scores above the slot
             (0.1, events(40, -5.0), "alice: paris"),  # later, but far below the slot's match
             (0.1, events(5, 5.0), "alice: paris"),  # before the slot's event: an older version
             (0.1, events(40, 5.0, "new"), "alice: paris"),  # not said to replace anything
             (0.1, events(40, 5.0, event_key=other), "alice: paris"))  # another fact's key
    for margin, grounded, want in cases:
        model.config.version_margin = margin
        monkeypatch.setattr(model, "_ground_chunks", grounded)
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want], (margin, want)


def test_a_withdrawn_slot_is_selected_as_no_longer_known(tokenizer):
    """A tombstone answers its question: its text says the fact was withdrawn, and it has no value
    tokens to copy (the trained adapter learned "unknown" from retraction events without them)."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", retract_tombstones=True, value_tokens=4,
                  router_match_threshold=-1.0, router_confidence_threshold=0.0)
    mem = model.new_memory()
    mem.write("Alice city", "Paris")
    key = model.encode_text(["Alice city"], "key")
    mem.slots.write(key, model.encode_text(["gone"], "value"), event=torch.tensor([[2]]), key_text=[["Alice"]])
    assert mem.table()[0]["retracted"] and mem.table()[0]["value_text"] is None
    enc = tokenizer(["Where does Alice live?"], return_tensors="pt")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.branch == ["memory"] and sel.texts[0] == ["Alice city: no longer known"]
    assert bool((sel.value_ids == -1).all())
    # withdrawn_text: the withdrawn slot copies that text's tokens instead of nothing.
    model.config.withdrawn_text = "unknown"
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    want = model.value_token_ids("unknown")
    assert want and sel.value_ids[0, 0, : len(want)].tolist() == want
    assert sel.texts[0] == ["Alice city: no longer known"]
    for bad in ("", "  ", 3):
        with pytest.raises(ConfigError, match="withdrawn_text"):
            MemAdapterConfig(withdrawn_text=bad)
