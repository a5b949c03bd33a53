"""AutoModelForCausalLM.from_pretrained(adapter folder or Hub id) loads the base named in the adapter
config plus the adapter, with no remote code, as peft's auto classes do. No network: a Hub repo is
served offline from a Hub cache folder built in the test."""

import json
import os
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import build, tiny_backbone
from huggingface_hub import constants as hf_constants, snapshot_download
from transformers import AutoConfig, AutoModelForCausalLM

from memadapter.errors import ConfigError
from memadapter.modeling import MemAdapterConfig, MemAdapterForCausalLM, hub


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

    with mock.patch("memadapter.modeling.modeling_memadapter.AutoModelForCausalLM.from_pretrained", side_effect=spy):
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


def test_a_hub_repo_loads_through_its_snapshot_folder_and_through_adapter(saved, tmp_path, monkeypatch):
    """Offline, from a Hub cache: nothing reaches the network. A bare repo id given to the Auto class
    is not covered: transformers' peft integration sees adapter_config.json, swaps in the base and
    hands our config to peft (which refuses it), before any registered class is asked."""
    folder, model = saved
    _hub_cache(tmp_path / "hub", "someone/tiny-memadapter", folder)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = snapshot_download("someone/tiny-memadapter")
    _same_model(AutoModelForCausalLM.from_pretrained(snapshot), model)
    with mock.patch.object(hub, "hf_hub_download", wraps=hub.hf_hub_download) as ours:
        loaded = MemAdapterForCausalLM.from_pretrained(adapter="someone/tiny-memadapter")
    _same_model(loaded, model)
    assert sorted(c.kwargs["filename"] for c in ours.call_args_list) == sorted(
        [hub.ADAPTER_CONFIG_NAME, hub.ADAPTER_WEIGHTS_NAME])


def test_saving_beside_a_base_model_keeps_its_config_json(saved, tmp_path):
    folder, model = saved
    base = folder.parent / "base"
    before = (base / "config.json").read_text()
    model.save_pretrained(base)  # adapter files written into the base model's own folder
    assert (base / "config.json").read_text() == before and (base / hub.ADAPTER_CONFIG_NAME).is_file()
    assert sorted(os.listdir(folder)) == sorted(hub.ADAPTER_FILE_NAMES)
