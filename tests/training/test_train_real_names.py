"""training/train.py resolves the real offline backbones by name ("smollm2", "gemma3"), model and
tokenizer alike, and the Gemma config mirrors the SmolLM2 one. The loader is faked: no conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memadapter.errors import ConfigError
from memadapter.modeling import real_models
from memadapter.training import train

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_names_resolve_backbone_and_tokenizer(name, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(train, "load_real_model", lambda n: calls.append(n) or ("backbone-" + n, None))
    assert train.build_backbone({"base_model_name_or_path": name}, seed=0) == "backbone-" + name
    assert calls == [name]

    monkeypatch.setenv("MEMADAPTER_CACHE", str(tmp_path))
    seen = []
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda path, **kw: seen.append(path) or "tok")
    with pytest.raises(ConfigError, match="model.tokenizer"):  # the cache is not there yet
        train.build_tokenizer({"tokenizer": name}, None, None)
    real_models.default_cache_dir(name).mkdir()
    assert train.build_tokenizer({"tokenizer": name}, None, None) == "tok"
    assert seen == [str(tmp_path / real_models.get_spec(name).cache_subdir)]


def test_gemma3_config_mirrors_the_smollm2_one():
    smol = train.load_config(CONFIGS / "smollm2_open_prefix.json")
    gemma = train.load_config(CONFIGS / "gemma3_open_prefix.json")
    assert (gemma["model"]["base_model_name_or_path"], gemma["model"]["tokenizer"]) == ("gemma3", "gemma3")
    assert gemma["model"]["adapter"]["read_layer"] == 6  # a third of Gemma-3-270M's 18 layers
    assert gemma["training"]["output_dir"] == "runs/gemma3_open_prefix"
    for cfg in (smol, gemma):
        del cfg["model"]["base_model_name_or_path"], cfg["model"]["tokenizer"], cfg["model"]["adapter"]["read_layer"]
        del cfg["training"]["output_dir"]
    assert json.dumps(gemma, sort_keys=True) == json.dumps(smol, sort_keys=True)  # same data, loss, schedule
