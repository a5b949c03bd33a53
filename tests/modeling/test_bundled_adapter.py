"""The trained SmolLM2 adapter ships inside the package (pyproject package-data) and is found there."""

import pytest

from memadapter.errors import MissingDependencyError
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


def test_a_missing_bundled_adapter_names_the_reinstall(monkeypatch):
    monkeypatch.setattr(real_models, "BUNDLED_ADAPTER", "no-such-adapter")
    with pytest.raises(MissingDependencyError, match="reinstall"):
        real_models.bundled_adapter_path()
