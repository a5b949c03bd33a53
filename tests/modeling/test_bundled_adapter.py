"""The trained SmolLM2 adapter ships inside the package (pyproject package-data) and is found there."""

import pytest

from memadapter.errors import ConfigError, MissingDependencyError
from memadapter.modeling import hub, real_models


def test_the_bundled_adapter_is_package_data_with_both_files():
    path = real_models.bundled_adapter_path()
    assert path.parent.parent.name == "modeling" and path.name == real_models.BUNDLED_ADAPTER
    assert hub.load_adapter_config(path)["injection"] == "prefix"
    weights = hub.load_adapter_weights(path)
    heads = sum(t.numel() for k, t in weights.items() if not k.startswith(("read_scorer.", "answer_pointer.")))
    assert heads == 1_231_629  # the heads trained on 2026-12-03
    assert sum(t.numel() for k, t in weights.items() if k.startswith("answer_pointer.")) == 445_140  # its answer pointer (16: restatement weights; 1,729: hedge head)
    assert sum(t.numel() for k, t in weights.items() if k.startswith("read_scorer.")) == 891  # its fitted reader (25 features)


def test_the_bundled_gemma3_adapter_is_package_data_on_its_own_base():
    path = real_models.bundled_adapter_path("gemma3")
    assert path.parent.parent.name == "modeling" and path.name == real_models.BUNDLED_GEMMA3_ADAPTER
    config = hub.load_adapter_config(path)
    assert (config["base_model_name_or_path"], config["backbone_model_type"], config["answer_layers"]) == \
        ("gemma3", "gemma3_text", [6, 12, 18])  # loads on Gemma-3-270M, never on SmolLM2
    weights = hub.load_adapter_weights(path)
    heads = sum(t.numel() for k, t in weights.items() if not k.startswith(("read_scorer.", "answer_pointer.")))
    assert heads == 1_368_013  # the heads trained on 2026-12-08 (hidden 640)
    assert sum(t.numel() for k, t in weights.items() if k.startswith("answer_pointer.")) == 494_484
    assert sum(t.numel() for k, t in weights.items() if k.startswith("read_scorer.")) == 891
    assert "license: gemma" in (path / "README.md").read_text()  # carded under Gemma's terms


def test_a_bundled_adapter_of_another_model_is_refused_by_name():
    with pytest.raises(ConfigError, match="llama"):
        real_models.bundled_adapter_path("llama")


def test_a_missing_bundled_adapter_names_the_reinstall(monkeypatch):
    monkeypatch.setattr(real_models, "BUNDLED_ADAPTER", "no-such-adapter")
    with pytest.raises(MissingDependencyError, match="reinstall"):
        real_models.bundled_adapter_path()
