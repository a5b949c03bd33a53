"""from_pretrained refuses a bad adapter or base by name before loading anything: unknown config
keys, non-float weights, a missing base path, a base that cannot be loaded."""

import json
import logging
from unittest import mock

import pytest
import torch
from conftest import SMALL, build, tiny_backbone
from safetensors.torch import load_file, save_file

from memadapter.errors import ConfigError, DTypeError, NonFiniteError
from memadapter.modeling import MemAdapterConfig, MemAdapterForCausalLM, hub
from memadapter.modeling.configuration_memadapter import check_config_keys, drop_retired_fields
from memadapter.modeling.configuration_settings import RETIRED_READ_SETTINGS, ReadConfig, drop_retired_settings
from memadapter.modeling.real_models import bundled_adapter_path

COMMITTED = bundled_adapter_path()
NO_BASE = mock.patch("transformers.AutoModelForCausalLM.from_pretrained", side_effect=AssertionError("loaded base"))


@pytest.fixture
def saved(tokenizer, tmp_path):
    build(tiny_backbone("llama"), tokenizer).save_pretrained(tmp_path)
    return tmp_path


def _edit_config(folder, **changes):
    path = folder / hub.ADAPTER_CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("key", ["num_slotz", "validate_fields", "num_fallback_chunks", "check_backbone", "__class__"])
def test_a_key_that_is_no_config_field_is_refused_naming_it_and_the_file(saved, key):
    _edit_config(saved, **{key: 3})
    with NO_BASE, pytest.raises(ConfigError, match=rf"adapter_config.json: config_dict: unknown key\(s\) '{key}'"):
        MemAdapterForCausalLM.from_pretrained("some/base", adapter=saved)


def test_the_keys_transformers_writes_and_the_committed_adapter_still_load(caplog):
    cfg = MemAdapterConfig(key_dim=8, value_dim=8, top_k=2, num_slots=4)
    for written in (cfg.to_dict(), json.loads(cfg.to_json_string()), json.loads(cfg.to_json_string(use_diff=True))):
        assert MemAdapterConfig.from_dict(written).to_dict() == cfg.to_dict()
    committed = hub.load_adapter_config(COMMITTED)
    check_config_keys(committed)  # re-saved with its fitted reader: no retired setting left
    with caplog.at_level(logging.WARNING):
        loaded = MemAdapterConfig.from_dict(committed)
    assert loaded.value_tokens == 16 and "retired" not in caplog.text
    old = {**committed, "read": {**committed["read"], "read_rule": "joint"}, "ingest": {**committed["ingest"], "pair_in_sentence": True},
           "type_reads_relation": False, "lifecycle_typing": False}  # retired research fields, left off
    with caplog.at_level(logging.WARNING):  # a config saved before the reader and the ingest ablation
        assert MemAdapterConfig.from_dict(old).to_dict() == loaded.to_dict()
    assert "pair_in_sentence" in caplog.text and "read_rule" in caplog.text
    check_config_keys(drop_retired_fields(drop_retired_settings(old)))
    with pytest.raises(ConfigError, match="^lifecycle_typing: a retired research variant"):
        MemAdapterConfig.from_dict({**committed, "lifecycle_typing": True})  # its weights need the removed layer
    assert loaded.read == ReadConfig(router_confidence_threshold=0.5, fallback_chunks=5, name_chunks=3, withdrawn_text="unknown",
                                     answer_sentences=4, word_spans=True, restated_runs=0.5)
    assert not set(loaded.to_dict()["read"]) & set(RETIRED_READ_SETTINGS)
    assert all(t.is_floating_point() for t in hub.load_adapter_weights(COMMITTED).values())


@pytest.mark.parametrize("bad, error, match", [
    (lambda t: t.to(torch.int64), DTypeError, "int64"),
    (lambda t: t.fill_(float("nan")), NonFiniteError, "NaN"),
])
def test_bad_weights_are_refused_before_the_base_is_loaded(saved, bad, error, match):
    path = saved / hub.ADAPTER_WEIGHTS_NAME
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = bad(tensors[name])
    save_file(tensors, str(path))
    with NO_BASE, pytest.raises(error, match=rf"adapter weights: {name}: .*{match}"):
        MemAdapterForCausalLM.from_pretrained("some/base", adapter=saved)


def test_a_missing_or_file_base_path_is_a_config_error_naming_base(tmp_path, tokenizer):
    (tmp_path / "file").write_text("x")
    with NO_BASE:
        for base, match in ((tmp_path / "missing", "no model folder"), (str(tmp_path / "missing"), "no model folder"),
                            ("./missing", "no model folder"), (str(tmp_path / "file"), "is a file")):
            with pytest.raises(ConfigError, match=f"base: .*{match}"):
                MemAdapterForCausalLM.from_pretrained(base, tokenizer=tokenizer, **SMALL)


def test_a_base_that_cannot_be_loaded_is_a_config_error_naming_it(tokenizer):
    gone = OSError("someone/base is not a local folder and is not a valid model identifier")
    with mock.patch("transformers.AutoModelForCausalLM.from_pretrained", side_effect=gone):
        with pytest.raises(ConfigError, match="base: cannot load 'someone/base' .*OSError.*not a valid model") as info:
            MemAdapterForCausalLM.from_pretrained("someone/base", tokenizer=tokenizer, **SMALL)
    assert info.value.__cause__ is gone
