"""Adapter file IO, Hub resolution and upload. No network: hf_hub_download and HfApi are mocked."""

import json
import os
import pickle
import shutil
import stat
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
from safetensors.torch import save_file

from memadapter.errors import ConfigError, DTypeError, NonFiniteError, UnsafeLoadError
from memadapter.modeling import atomic_folder, hub


def _save(d, config=None, tensors=None):
    config = config if config is not None else {"model_type": "memadapter", "backbone_model_type": "llama", "hidden_size": 64}
    tensors = tensors if tensors is not None else {"heads.w": torch.arange(6.0).view(2, 3), "heads.b": torch.ones(3)}
    return hub.save_adapter(d, config, tensors, "---\nlibrary_name: memadapter\n---\n# card\n")


def test_save_writes_exactly_the_adapter_files_and_round_trips(tmp_path):
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


# ---------------------------------------------------------------- atomic save: what the folder keeps


def _folder_state(d):
    """Every file under ``d`` (relative path -> bytes), symlinks as their target."""
    return {str(p.relative_to(d)): (os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(Path(d).rglob("*")) if p.is_symlink() or p.is_file()}


def test_save_keeps_the_users_files_and_replaces_only_the_adapter(tmp_path):
    _save(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "run.txt").write_text("lr 1e-3")
    (tmp_path / "latest").symlink_to("notes")
    _save(tmp_path, tensors={"heads.w": torch.zeros(2, 3), "heads.b": torch.zeros(3)})
    state = _folder_state(tmp_path)
    assert state["tokenizer.json"] == b"{}" and state["notes/run.txt"] == b"lr 1e-3" and state["latest"] == "notes"
    assert torch.equal(hub.load_adapter_weights(tmp_path)["heads.w"], torch.zeros(2, 3))
    assert sorted(p.name for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")) == []


def test_our_card_is_replaced_but_a_readme_the_user_wrote_is_kept(tmp_path):
    _save(tmp_path)
    card = (tmp_path / hub.MODEL_CARD_NAME).read_text()
    assert card.startswith("---\nlibrary_name: memadapter") and card.rstrip().endswith(hub.CARD_MARKER)
    hub.save_adapter(tmp_path, {"model_type": "memadapter"}, {"w": torch.zeros(1)}, "# second card")
    assert (tmp_path / hub.MODEL_CARD_NAME).read_text().startswith("# second card")  # ours: replaced
    (tmp_path / hub.MODEL_CARD_NAME).write_text("# My adapter\nhand-written notes\n")
    hub.save_adapter(tmp_path, {"model_type": "memadapter"}, {"w": torch.ones(1)}, "# third card")
    assert (tmp_path / hub.MODEL_CARD_NAME).read_text() == "# My adapter\nhand-written notes\n"
    assert torch.equal(hub.load_adapter_weights(tmp_path)["w"], torch.ones(1))


def test_saved_files_and_folder_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        _save(tmp_path / "new")  # a fresh folder
        _save(tmp_path / "new")  # swapped over an existing one
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
    for p in (tmp_path / "new").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name


def test_save_directory_that_is_a_file_is_a_config_error_and_the_file_is_kept(tmp_path):
    target = tmp_path / "adapter"
    target.write_text("not a folder")
    with pytest.raises(ConfigError, match="save_directory.*is a file"):
        _save(target)
    assert target.read_text() == "not a folder"
    for bad in (target / "below", "", "a\0b", 3):
        with pytest.raises(ConfigError, match="save_directory"):
            _save(bad)


def test_save_through_a_symlink_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    _save(tmp_path / "link")
    _save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in (tmp_path / "real").iterdir()) == sorted(
        hub.ADAPTER_FILE_NAMES)


def test_a_save_that_fails_midway_leaves_the_folder_and_no_temp_files(tmp_path):
    _save(tmp_path / "a")
    (tmp_path / "a" / "notes.txt").write_text("keep")
    before = _folder_state(tmp_path / "a")
    with mock.patch.object(hub, "save_file", side_effect=OSError(28, "No space left on device")):
        with pytest.raises(ConfigError, match="save_directory.*unchanged.*No space"):
            _save(tmp_path / "a", tensors={"heads.w": torch.zeros(1)})
    assert _folder_state(tmp_path / "a") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_two_rename_fallback_and_recovery_of_a_folder_moved_aside(tmp_path):
    target = tmp_path / "a"
    _save(target)
    with mock.patch.object(atomic_folder, "_exchange", return_value=False):  # a filesystem without renameat2
        _save(target, tensors={"heads.w": torch.ones(1)})
    assert torch.equal(hub.load_adapter_weights(target)["heads.w"], torch.ones(1))
    # a save killed between its two renames: the old adapter sits moved aside, the folder is gone
    os.rename(target, tmp_path / ".a.previous")
    assert hub.resolve_adapter(target) == target  # loading puts it back
    assert torch.equal(hub.load_adapter_weights(target)["heads.w"], torch.ones(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_the_next_save_removes_what_a_killed_save_left(tmp_path):
    _save(tmp_path / "a")
    (tmp_path / ".a.previous").mkdir()  # the old copy after a kill between the swap and its removal
    (tmp_path / ".a.saving-x1y2").mkdir()  # a temp folder of a save killed while writing
    (tmp_path / "a" / ".adapter_config.json.abc.tmp").write_text("{")  # left by earlier versions
    _save(tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(hub.ADAPTER_FILE_NAMES)


# ---------------------------------------------------------------- loading: what is refused


@pytest.mark.parametrize("bad, error, match", [
    (torch.arange(6).view(2, 3), DTypeError, "int64"),
    (torch.tensor([1.0, float("nan")]), NonFiniteError, "NaN"),
    (torch.tensor([float("inf")]), NonFiniteError, "infinity"),
])
def test_integer_or_non_finite_weights_are_refused_naming_the_tensor(tmp_path, bad, error, match):
    _save(tmp_path)
    before = _folder_state(tmp_path)
    with pytest.raises(error, match=f"state_dict: heads.w: .*{match}"):  # not written
        _save(tmp_path, tensors={"heads.w": bad, "heads.b": torch.ones(3)})
    assert _folder_state(tmp_path) == before
    save_file({"heads.w": bad, "heads.b": torch.ones(3)}, str(tmp_path / hub.ADAPTER_WEIGHTS_NAME))  # by hand
    with pytest.raises(error, match=f"adapter weights: heads.w: .*{match}"):
        hub.load_adapter_weights(tmp_path)


def test_a_state_dict_that_is_no_dict_of_tensors_is_refused(tmp_path):
    for bad, match in (([("w", torch.zeros(1))], "state_dict: expected a dict"), ({"w": [0.0]}, "state_dict: w")):
        with pytest.raises(DTypeError, match=match):
            hub.save_adapter(tmp_path / "a", {"model_type": "memadapter"}, bad, "card")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("text, match", [
    ("[" * 100_000 + "]" * 100_000, "nests deeper"),  # json.loads itself would hit RecursionError
    (json.dumps({"model_type": "memadapter", "x": [[[[[[[[[[1]]]]]]]]]]}), "nests deeper than 8"),
    ('{"model_type": "memadapter", "x": ' + " " * hub.MAX_CONFIG_BYTES + "1}", "bytes"),
    ('{"model_type": ', "not valid JSON"),
])
def test_deep_huge_or_broken_config_json_is_a_config_error(tmp_path, text, match):
    _save(tmp_path)
    (tmp_path / hub.ADAPTER_CONFIG_NAME).write_text(text)
    with pytest.raises(ConfigError, match=match):
        hub.load_adapter_config(tmp_path)


def test_a_path_that_is_no_adapter_folder_never_goes_to_the_hub(tmp_path):
    (tmp_path / "file").write_text("x")
    with mock.patch.object(hub, "hf_hub_download", side_effect=AssertionError("network")):
        for bad, match in ((tmp_path / "missing", "no adapter folder"), (str(tmp_path / "missing"), "no adapter folder"),
                           ("./missing", "no adapter folder"), (tmp_path / "file", "is a file"), (3, "expected"),
                           ("me/a\0b", "expected")):
            with pytest.raises(ConfigError, match=f"adapter: .*{match}"):
                hub.resolve_adapter(bad)


@pytest.mark.parametrize("error", [
    LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub"),
    RepositoryNotFoundError("404 Client Error. Repository Not Found", response=mock.MagicMock(status_code=404)),
    OSError("Name or service not known"),
])
def test_hub_errors_become_a_config_error_naming_the_adapter(monkeypatch, error):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    with mock.patch.object(hub, "hf_hub_download", side_effect=error) as dl:
        with pytest.raises(ConfigError, match=r"adapter: cannot fetch 'me/adapter'.*HF_HUB_OFFLINE=1") as info:
            hub.resolve_adapter("me/adapter")
    assert dl.call_count == 1 and info.value.__cause__ is error  # stops at the first file


def test_offline_set_after_import_reads_only_the_cache(monkeypatch):
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)  # as imported without the variable
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = LocalEntryNotFoundError("not in the cache")
    with mock.patch.object(hub, "hf_hub_download", side_effect=err) as dl:
        with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set and the files are not in the local cache"):
            hub.resolve_adapter("me/adapter")
    assert dl.call_args.kwargs["local_files_only"] is True


def test_offline_mode_fails_at_once_without_touching_the_network(monkeypatch, tmp_path):
    """The real hf_hub_download, offline, on an empty cache: a typed error and no HTTP call."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with mock.patch("huggingface_hub.file_download.get_hf_file_metadata", side_effect=AssertionError("network")):
        with pytest.raises(ConfigError, match="'nobody/not-cached'.*HF_HUB_OFFLINE is set"):
            hub.resolve_adapter("nobody/not-cached")
