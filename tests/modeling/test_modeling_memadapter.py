"""MemAdapterForCausalLM on tiny random backbones of every family. No network: Hub calls are mocked."""

import json
import random
import shutil
from unittest import mock

import pytest
import torch
from conftest import _WORDS, ALL_MODEL_TYPES, QUESTIONS, SMALL, STREAM, build, ingest, tiny_backbone, tiny_tokenizer
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from memadapter.errors import AdapterMismatchError, ConfigError, ShapeError, UnsafeLoadError
from memadapter.modeling import MemAdapterConfig, MemAdapterForCausalLM, hub
from memadapter.modeling.injectors import INJECTORS
from memadapter.modeling.reader import WITHDRAWN


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


def test_replace_injector_keeps_the_heads_and_a_fresh_gate_is_the_identity(tokenizer, tmp_path):
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer)
    heads = {k: v.clone() for k, v in model.adapter_state_dict().items() if not k.startswith("injector.")}
    with pytest.raises(ConfigError, match="cross_attn_layers"):
        model.replace_injector("cross_attn", [99])
    assert model.config.injection == "prefix" and hasattr(model, "injector")  # a refused swap changes nothing
    model.replace_injector("cross_attn", [1])
    state = model.adapter_state_dict()
    assert not hasattr(model, "injector") and not any(k.startswith("injector.") for k in state)
    assert all(torch.equal(state[k], v) for k, v in heads.items())
    enc = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    mem = ingest(model, [STREAM, "bob lives in london"])
    torch.testing.assert_close(model(**enc, memory=mem).logits, bb(**enc).logits, rtol=0, atol=0)  # gate 0
    model.save_pretrained(tmp_path)  # and it loads as a cross-attention adapter
    loaded = MemAdapterForCausalLM.from_pretrained(bb, adapter=tmp_path, tokenizer=tokenizer)
    assert loaded.config.injection == "cross_attn" and loaded.config.cross_attn_layers == [1]


def test_text_injection_puts_selected_source_text_in_the_prompt(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer, "text")
    mem = ingest(model, [STREAM])
    enc = tokenizer(["where does alice lives"], return_tensors="pt")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.texts[0], "something was selected"
    prep = INJECTORS["text"].prepare(model, sel, enc["input_ids"], enc["attention_mask"])
    ids, mask = prep.inputs["input_ids"], prep.inputs["attention_mask"]
    memory_ids = tokenizer(sel.memory_text(0) + " .\n", add_special_tokens=False)["input_ids"]
    assert ids[0][mask[0].bool()].tolist() == memory_ids + enc["input_ids"][0].tolist()  # memory line, then the question
    words = set(tokenizer.decode(memory_ids).split())  # the tiny tokenizer knows no "key:" with its colon
    assert words & set(sel.texts[0][0].replace(":", " ").split()), "the selected text is in the prompt"
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
            # Memory-branch texts read "key: value" (a withdrawn entry "key: no longer known"); the colon
            # and WITHDRAWN are the format, not stream words.
            words |= {w for t in sel.texts[b] for w in t.replace(":", " ").split()} - {"None", *WITHDRAWN.split()}
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


def test_ingest_cuts_chunks_after_sentence_ends():
    tok = tiny_tokenizer((*_WORDS, "."))  # STREAM's "." must be a token that decodes to "."
    bb = tiny_backbone("llama")
    fixed, by_sentence = (ingest(build(bb, tok, chunk_tokens=10, chunk_boundary=b), [STREAM, "bob lives in london"])
                          for b in ("tokens", "sentence"))
    n = len(tok(STREAM, add_special_tokens=False)["input_ids"])  # 20: "." at 4 and 13
    assert [fixed.indexes[0].span(i) for i in range(len(fixed.indexes[0]))] == [(0, 10), (10, 20)]
    assert [by_sentence.indexes[0].span(i) for i in range(len(by_sentence.indexes[0]))] == [(0, 5), (5, 14), (14, 20)]
    assert by_sentence.tokens_seen == [n, 4] and by_sentence.indexes[1].spans.tolist() == [[0, 4]]


def test_ingest_bad_input_leaves_memory_unchanged(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer)
    mem = ingest(model, [STREAM, "bob"])
    before = (mem.table(0), mem.table(1), [len(i) for i in mem.indexes], list(mem.tokens_seen))
    with pytest.raises(ShapeError, match="text_or_ids"):
        model.ingest(mem, ["only one row"])
    with mock.patch.object(model.grounding, "propose_batched", side_effect=RuntimeError("boom")):
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


@pytest.mark.parametrize("injection", ["prefix", "cross_attn"])
def test_value_tokens_reach_the_injection_as_the_slot_value(tokenizer, injection):
    """value_tokens > 0: the selected slot's value tokens are embedded and injected (prefix tokens or
    cross-attention memory); cache on/off agree; forward_with_values insists on matching ids."""
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer, injection, router_confidence_threshold=0.0, top_k=1, value_tokens=3)
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


def test_slot_match_threshold_reaches_the_memory(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer, slot_match_threshold=0.6)
    assert model.new_memory().slots.match_threshold == 0.6
    assert model.new_memory().slots.update_match_threshold == 0.6 and not model.new_memory().slots.tombstones
    model = build(tiny_backbone("llama"), tokenizer, slot_update_match_threshold=0.3, retract_tombstones=True)
    slots = model.new_memory().slots
    assert slots.update_match_threshold == 0.3 and slots.tombstones


def _piece_tokenizer():
    """A WordPiece tokenizer over STREAM that cuts every word of 5+ letters in two ("par", "##is")."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import WordPiece
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    pieces = ["<pad>", "<unk>"]
    for w in sorted(set(STREAM.split())):
        pieces += [w[:3], "##" + w[3:]] if len(w) >= 5 else [w]
    tok = Tokenizer(WordPiece({p: i for i, p in enumerate(dict.fromkeys(pieces))}, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = WhitespaceSplit(), decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


def test_snap_spans_writes_whole_words_only():
    tok = _piece_tokenizer()
    words = set(STREAM.split())
    assert len(tok(STREAM)["input_ids"]) > len(STREAM.split())  # the tokenizer does cut words

    def texts(model):
        mem = ingest(model, [STREAM])
        return [t for row in mem.table() for t in (row["key_text"], row["value_text"]) if t]

    # one chunk: a chunk boundary may itself fall inside a word
    cut = texts(build(tiny_backbone("llama"), tok, chunk_tokens=64))
    snapped = texts(build(tiny_backbone("llama"), tok, chunk_tokens=64, snap_spans=True))
    assert snapped and all(set(t.split()) <= words for t in snapped)
    assert any(not set(t.split()) <= words for t in cut)  # the untrained tagger does cut words
    model = build(tiny_backbone("llama"), tok, snap_spans=True)
    rows = [tok("alice moved to berlin", add_special_tokens=False)["input_ids"]]
    assert model._word_marks(rows) == [[True, False, True, False, True, True, False]]  # ali ##ce mov ##ed to ber ##lin
    assert build(tiny_backbone("llama"), tok)._word_marks(rows) is None  # snap_spans off
    with pytest.raises(ConfigError, match="snap_spans"):
        MemAdapterConfig(ingest={"snap_spans": 1})
