"""Adapter file IO, Hub resolution and upload. No network: hf_hub_download and HfApi are mocked."""

import json
import pickle
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch

from memadapter.errors import ConfigError, UnsafeLoadError
from memadapter.modeling import hub


def _save(d, config=None, tensors=None):
    config = config if config is not None else {"model_type": "memadapter", "backbone_model_type": "llama", "hidden_size": 64}
    tensors = tensors if tensors is not None else {"heads.w": torch.arange(6.0).view(2, 3), "heads.b": torch.ones(3)}
    return hub.save_adapter(d, config, tensors, "---\nlibrary_name: memadapter\n---\n# card\n")


def test_save_writes_exactly_three_files_and_round_trips(tmp_path):
    files = _save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(hub.ADAPTER_FILE_NAMES)
    assert [p.name for p in files] == list(hub.ADAPTER_FILE_NAMES)
    cfg = hub.load_adapter_config(tmp_path)
    assert cfg["backbone_model_type"] == "llama"
    w = hub.load_adapter_weights(tmp_path)
    torch.testing.assert_close(w["heads.w"], torch.arange(6.0).view(2, 3))


@pytest.mark.parametrize(
    "bad",
    [
        {"trust_remote_code": True},
        {"auto_map": {"AutoModelForCausalLM": "evil.Model"}},
        {"custom_pipelines": {"x": {"impl": "evil.Pipe"}}},
        {"model_type": "llama"},
    ],
)
def test_crafted_config_is_refused(tmp_path, bad):
    _save(tmp_path)
    cfg = json.loads((tmp_path / hub.ADAPTER_CONFIG_NAME).read_text())
    cfg.update(bad)
    (tmp_path / hub.ADAPTER_CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(UnsafeLoadError, match=next(iter(bad))):
        hub.load_adapter_config(tmp_path)


def test_saving_a_crafted_config_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(UnsafeLoadError, match="trust_remote_code"):
        _save(tmp_path / "a", config={"model_type": "memadapter", "trust_remote_code": True})
    assert not (tmp_path / "a").exists()


def test_pickle_weights_are_never_loaded(tmp_path):
    _save(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / hub.ADAPTER_WEIGHTS_NAME).write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafeLoadError, match="safetensors"):
        hub.load_adapter_weights(tmp_path)
    assert not marker.exists()


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="adapter_config.json"):
        hub.load_adapter_config(tmp_path)
    with pytest.raises(ConfigError, match="adapter_model.safetensors"):
        hub.load_adapter_weights(tmp_path)


def test_failed_save_keeps_the_old_files(tmp_path):
    _save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match="JSON"):
        hub.save_adapter(tmp_path, {"model_type": "memadapter", "x": object()}, {"w": torch.zeros(1)}, "card")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resolve_local_dir_does_not_touch_the_hub(tmp_path):
    _save(tmp_path)
    with mock.patch.object(hub, "hf_hub_download", side_effect=AssertionError("network")):
        assert hub.resolve_adapter(tmp_path) == tmp_path


def test_resolve_repo_id_downloads_only_config_and_weights(tmp_path):
    src = tmp_path / "src"
    _save(src)
    cache = tmp_path / "cache"
    cache.mkdir()

    def fake_download(repo_id, filename, revision=None, token=None):
        assert repo_id == "someone/adapter" and revision == "v1"
        shutil.copy(src / filename, cache / filename)
        return str(cache / filename)

    with mock.patch.object(hub, "hf_hub_download", side_effect=fake_download) as dl:
        got = hub.resolve_adapter("someone/adapter", revision="v1")
    assert got == cache
    assert sorted(c.kwargs["filename"] for c in dl.call_args_list) == sorted(
        [hub.ADAPTER_CONFIG_NAME, hub.ADAPTER_WEIGHTS_NAME]
    )


def test_resolve_rejects_garbage_ids():
    with pytest.raises(ConfigError, match="adapter"):
        hub.resolve_adapter("a/b/c/not-a-dir")


def test_push_uploads_exactly_the_adapter_files(tmp_path):
    _save(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not ours")  # a stray file must not go up
    api = mock.MagicMock()
    hub.push_adapter(tmp_path, "me/my-adapter", api=api, private=True)
    api.create_repo.assert_called_once()
    assert api.create_repo.call_args.kwargs["repo_id"] == "me/my-adapter"
    ops = api.create_commit.call_args.kwargs["operations"]
    assert sorted(op.path_in_repo for op in ops) == sorted(hub.ADAPTER_FILE_NAMES)
    api.upload_folder.assert_not_called()


def test_push_refuses_incomplete_folder(tmp_path):
    api = mock.MagicMock()
    with pytest.raises(ConfigError, match="missing adapter files"):
        hub.push_adapter(tmp_path, "me/x", api=api)
    api.create_repo.assert_not_called()
