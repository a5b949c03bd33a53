"""Adapter file IO, Hub resolution and upload, following the peft conventions.

An adapter directory holds ``adapter_config.json`` (plain JSON), ``adapter_model.safetensors``
(adapter tensors only, never backbone weights), ``README.md`` (the model card) and a two-line
``config.json`` (``{"model_type": "memadapter"}``) through which transformers' Auto classes reach
``MemAdapterForCausalLM`` with no remote code: ``AutoModelForCausalLM.from_pretrained(folder or
repo id)`` loads the base named in the adapter config plus the adapter, as peft's do (for a repo id
transformers' own peft detection is kept off our adapters: see :func:`is_adapter_config_file` and
``auto_registration._keep_peft_detection_off_memadapter``). Loading reads
JSON and safetensors only, so nothing is ever unpickled, and a config that asks for remote code or
a custom class is refused before anything else happens.

Saving is atomic per folder: the files are written into a fresh sibling folder, flushed to disk,
and swapped in with one rename (an exchange of the two folders where Linux offers it). A save that
fails or is killed at any point leaves the previous adapter loadable, or the new one complete.

    >>> import torch, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = save_adapter(d, {"model_type": "memadapter"}, {"w": torch.zeros(2)}, "# card")
    >>> sorted(p.name for p in adapter_files(d))
    ['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'config.json']
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch
from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download
from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled,
                                    RepositoryNotFoundError, RevisionNotFoundError)
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from memadapter._validate import check_tensor
from memadapter.errors import ConfigError, DTypeError, UnsafeLoadError

from . import atomic_folder
from .atomic_folder import link_or_copy, recover_interrupted_save, replace_folder, write_synced

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
MODEL_CARD_NAME = "README.md"
# What AutoConfig reads to pick the class: only the model type. adapter_config.json stays the one
# source of the adapter's settings (from_pretrained ignores the config AutoConfig built from this).
AUTO_CONFIG_NAME = "config.json"
AUTO_CONFIG = {"model_type": "memadapter"}
ADAPTER_FILE_NAMES: tuple[str, ...] = (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MODEL_CARD_NAME, AUTO_CONFIG_NAME)
# The last line of every card save_adapter writes. A README.md without it is the user's and is
# kept; cards written before this marker existed carry none, and are kept too.
CARD_MARKER = "<!-- memadapter: card written by save_pretrained, replaced on each save; delete this line to keep your edits -->"
_MARKER_PREFIX = "<!-- memadapter: card written by save_pretrained"

# Keys through which transformers can be told to fetch or import code. An adapter never needs them.
_UNSAFE_KEYS = ("trust_remote_code", "auto_map", "custom_pipelines", "_attn_implementation_autoset")
MAX_CONFIG_BYTES = 1 << 20  # an adapter config is ~2 KB; a bigger file is not one
MAX_CONFIG_DEPTH = 8  # the deepest real entry (id2label, task_specific_params) is 3 levels down
# Hub errors that mean "these files cannot be fetched" (not found, offline, bad id, HTTP failure).
_HUB_ERRORS = (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, HfHubHTTPError,
               OfflineModeIsEnabled, HFValidationError, OSError)

PathLike = Union[str, os.PathLike]


def adapter_files(directory: PathLike) -> list[Path]:
    """The adapter files present in ``directory`` (in ADAPTER_FILE_NAMES order)."""
    d = Path(directory)
    return [d / n for n in ADAPTER_FILE_NAMES if (d / n).is_file()]


def save_adapter(
    save_directory: PathLike, config: dict, state_dict: dict[str, torch.Tensor], model_card: str
) -> list[Path]:
    """Write the three adapter files into ``save_directory`` at once (a fresh sibling folder swapped in).

    Files in that folder that are not ours (a tokenizer, notes, subfolders) are kept. A README.md
    without :data:`CARD_MARKER` was written by a user: it is kept and ``model_card`` is not written.
    Files get the usual permissions (0o666 minus the umask). Tensors must be floating point and
    finite (DTypeError / NonFiniteError naming one, before anything is written); they are saved as
    contiguous CPU copies. Two saves into one folder at the same time are not supported.
    """
    check_config_safe(config)
    try:
        text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config: not JSON serialisable ({err})") from err
    if not isinstance(state_dict, dict):
        raise DTypeError(f"state_dict: expected a dict of tensors, got {type(state_dict).__name__}")
    for name, tensor in state_dict.items():  # never write what load_adapter_weights refuses
        check_tensor(f"state_dict: {name}", tensor, nonempty=False)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    target = _save_target(save_directory)
    try:
        replace_folder(target, lambda tmp: _fill(tmp, target, text, tensors, model_card))
    except OSError as err:
        raise ConfigError(f"save_directory: saving to {str(target)!r} failed, the folder is unchanged ({err})") from err
    return adapter_files(target)


def adapter_card(config: dict, n_params: int, results: Any = None, repo_id: Optional[str] = None) -> str:
    """The model card of an adapter with ``config`` and ``n_params`` tensors' elements; a real
    model's name as base ("smollm2") is carded as the Hub repo its GGUF came from, under its
    weights' license (Gemma's terms for "gemma3")."""
    from memadapter.hub_cards.model_card import render_model_card

    from .real_models import base_license, upstream_id

    name = config.get("base_model_name_or_path")
    terms = config.get("license") or base_license(name)
    return render_model_card({**config, **({"license": terms} if terms else {}), "base_model": upstream_id(name),
                              "adapter_parameters": n_params}, results, repo_id=repo_id)


def _save_target(save_directory: Any) -> Path:
    """The real folder to save into (a symlink is followed, so the link stays); its parent is made."""
    if not isinstance(save_directory, (str, os.PathLike)) or not os.fspath(save_directory) \
            or "\0" in str(os.fspath(save_directory)):
        raise ConfigError(f"save_directory: expected a folder path, got {save_directory!r}")
    target = Path(os.path.realpath(os.fspath(save_directory)))
    if target.exists() and not target.is_dir():
        raise ConfigError(f"save_directory: {os.fspath(save_directory)!r} is a file, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"save_directory: cannot make the parent folder of {str(target)!r} ({err})") from err
    return target


def _fill(tmp: Path, target: Path, text: str, tensors: dict[str, torch.Tensor], card: str) -> None:
    """Write the new adapter into ``tmp``, beside links to the user's files from ``target``."""
    if target.is_dir():
        _carry_user_files(target, tmp)
    atomic_folder.boundary("user files carried")
    write_synced(tmp / ADAPTER_WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_folder.boundary("weights written")
    write_synced(tmp / ADAPTER_CONFIG_NAME, lambda p: Path(p).write_text(text, encoding="utf-8"))
    atomic_folder.boundary("config written")
    if not (tmp / MODEL_CARD_NAME).exists():  # else the user's own README was carried over
        marked = card if _MARKER_PREFIX in card else card.rstrip("\n") + "\n\n" + CARD_MARKER + "\n"
        write_synced(tmp / MODEL_CARD_NAME, lambda p: Path(p).write_text(marked, encoding="utf-8"))
    atomic_folder.boundary("card written")
    if not (tmp / AUTO_CONFIG_NAME).exists():  # else another model's config.json was carried over
        auto = json.dumps(AUTO_CONFIG, indent=2) + "\n"
        write_synced(tmp / AUTO_CONFIG_NAME, lambda p: Path(p).write_text(auto, encoding="utf-8"))
    atomic_folder.boundary("auto config written")


def _carry_user_files(target: Path, tmp: Path) -> None:
    """Hard-link (or copy) into ``tmp`` every entry of ``target`` that the save does not write."""
    for src in target.iterdir():
        name = src.name
        if name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME) or _is_old_temp_file(name):
            continue
        if name == MODEL_CARD_NAME and _is_our_card(src):
            continue
        if name == AUTO_CONFIG_NAME and _is_our_auto_config(src):
            continue
        dst = tmp / name
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_dir():
            shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)
        else:
            link_or_copy(src, dst)


def _is_old_temp_file(name: str) -> bool:
    # ".adapter_config.json.x1y2.tmp": left by the per-file saves of earlier versions
    return name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in ADAPTER_FILE_NAMES)


def _is_our_card(path: Path) -> bool:
    try:
        return _MARKER_PREFIX in path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False  # unreadable as our card: a user's file, kept


def _is_our_auto_config(path: Path) -> bool:
    """A config.json naming model_type "memadapter" is ours; another (a base model saved in the same
    folder) is kept, as a user's README is."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type") == "memadapter"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def check_config_safe(config: dict) -> None:
    """Refuse any config that could turn on remote code or name a class to import."""
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a JSON object, got {type(config).__name__}")
    for key in _UNSAFE_KEYS:
        if key in config and config[key] not in (None, False, {}, []):
            raise UnsafeLoadError(f"adapter config: key {key!r} is not allowed (value {config[key]!r}); loading never runs remote code")
    if config.get("model_type", "memadapter") != "memadapter":
        raise UnsafeLoadError(f"adapter config: model_type must be 'memadapter', got {config.get('model_type')!r}")


def is_adapter_config_file(path: PathLike) -> bool:
    """Whether the JSON file at ``path`` is a memadapter adapter config: ``"model_type": "memadapter"``
    and no ``peft_type``. A peft adapter config names a ``peft_type`` and no model type, so it is
    never taken for ours; a file that is too big, unreadable or not a JSON object is not ours either.
    Only the kind is told here: :func:`load_adapter_config` still vets the file when it is loaded.

        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "ours.json").write_text('{"model_type": "memadapter"}')
        >>> _ = (d / "peft.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": "x"}')
        >>> is_adapter_config_file(d / "ours.json"), is_adapter_config_file(d / "peft.json")
        (True, False)
    """
    try:
        file = Path(path)
        if file.stat().st_size > MAX_CONFIG_BYTES:
            return False
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, TypeError, ValueError, RecursionError):  # ValueError covers bad JSON and bad UTF-8
        return False
    return isinstance(config, dict) and config.get("model_type") == "memadapter" and "peft_type" not in config


def load_adapter_config(directory: PathLike) -> dict:
    """Read and vet ``adapter_config.json``: plain JSON of bounded size and depth, no remote code."""
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"adapter: no {ADAPTER_CONFIG_NAME} in {str(directory)!r}")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"adapter: {path} is {path.stat().st_size} bytes, above {MAX_CONFIG_BYTES}; not an adapter config")
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"adapter: {path} is not valid JSON ({err})") from err
    except RecursionError:
        raise ConfigError(f"adapter: {path} nests deeper than JSON can be read") from None
    except OSError as err:
        raise ConfigError(f"adapter: cannot read {path} ({err})") from err
    if _depth(config) > MAX_CONFIG_DEPTH:
        raise ConfigError(f"adapter: {path} nests deeper than {MAX_CONFIG_DEPTH} levels; not an adapter config")
    check_config_safe(config)
    return config


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (a scalar is 0, ``{}`` is 1)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, d + 1)
            stack.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_adapter_weights(directory: PathLike) -> dict[str, torch.Tensor]:
    """Read ``adapter_model.safetensors`` (never a pickle: other weight files are ignored).

    Every tensor must be floating point and finite: an integer tensor would be cast silently on
    load, and a NaN would spread to every answer. DTypeError / NonFiniteError name the tensor.
    """
    path = Path(directory) / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        raise ConfigError(f"adapter: no {ADAPTER_WEIGHTS_NAME} in {str(directory)!r}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UnsafeLoadError(f"adapter: {path} is not a valid safetensors file ({err})") from err
    for name, tensor in tensors.items():
        check_tensor(f"adapter weights: {name}", tensor, nonempty=False)
    return tensors


def resolve_adapter(
    adapter: PathLike, revision: Optional[str] = None, token: Optional[Union[str, bool]] = None, *,
    cache_dir: Optional[PathLike] = None, force_download: bool = False, local_files_only: bool = False,
) -> Path:
    """A local adapter directory as is; otherwise a Hub repo id, fetched file by file.

    Only the config and the safetensors file are downloaded (the card is not needed to load). A
    path object, or a string that looks like a path, never goes to the Hub. With HF_HUB_OFFLINE
    set only the local cache is read, so a missing adapter fails at once instead of after retries.
    ``cache_dir`` / ``force_download`` / ``local_files_only`` are hf_hub_download's (the Auto classes
    pass the user's on).
    """
    if not isinstance(adapter, (str, os.PathLike)) or not os.fspath(adapter) or "\0" in str(os.fspath(adapter)):
        raise ConfigError(f"adapter: expected an adapter folder or a Hub repo id, got {adapter!r}")
    local = Path(adapter)
    recover_interrupted_save(local)
    if local.is_dir():
        return local
    if local.exists():
        raise ConfigError(f"adapter: {os.fspath(adapter)!r} is a file; expected the adapter's folder")
    repo_id = os.fspath(adapter)
    if not isinstance(adapter, str) or _looks_like_path(repo_id):
        raise ConfigError(f"adapter: no adapter folder at {repo_id!r}")
    if repo_id.count("/") > 1:
        raise ConfigError(f"adapter: {repo_id!r} is neither a local directory nor a Hub repo id")
    options = {"cache_dir": cache_dir, "force_download": force_download, "local_files_only": local_files_only}
    return _download(repo_id, revision, token, {k: v for k, v in options.items() if v not in (None, False)})


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or os.path.isabs(text) or (os.sep != "/" and os.sep in text)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not only when huggingface_hub was imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _download(repo_id: str, revision: Optional[str], token: Optional[Union[str, bool]], options: dict) -> Path:
    """Fetch the config and the weights; ``options``: the hf_hub_download keywords the caller set."""
    offline = hub_offline() or constants.is_offline_mode()
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; set later, it has to be passed on.
    extra = {**options, "local_files_only": True} if offline and not constants.is_offline_mode() else options
    try:
        paths = [Path(hf_hub_download(repo_id=repo_id, filename=name, revision=revision, token=token, **extra))
                 for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)]
    except _HUB_ERRORS as err:
        if offline or options.get("local_files_only"):
            setting = "HF_HUB_OFFLINE" if offline else "local_files_only"
            why = f"{setting} is set and the files are not in the local cache"
        else:
            why = "not found, not accessible, or no network; set HF_HUB_OFFLINE=1 to fail at once when offline"
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"adapter: cannot fetch {repo_id!r} (revision {revision!r}) from the Hub: {why} "
                          f"({type(err).__name__}: {first_line})") from err
    if paths[0].parent != paths[1].parent:
        raise ConfigError(f"adapter: downloaded files of {repo_id!r} landed in different folders")
    return paths[0].parent


def push_adapter(
    folder: PathLike,
    repo_id: str,
    *,
    token: Optional[Union[str, bool]] = None,
    private: Optional[bool] = None,
    revision: Optional[str] = None,
    commit_message: str = "Upload memadapter adapter",
    api: Optional[HfApi] = None,
) -> Any:
    """Upload exactly the adapter files of ``folder`` in one commit; returns the commit info."""
    files = adapter_files(folder)
    # config.json is optional: folders saved before it existed still upload (and load with adapter=)
    missing = set(ADAPTER_FILE_NAMES) - {p.name for p in files} - {AUTO_CONFIG_NAME}
    if missing:
        raise ConfigError(f"folder: missing adapter files {sorted(missing)} in {str(folder)!r}")
    api = api or HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, token=token)
    ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    return api.create_commit(
        repo_id=repo_id, operations=ops, commit_message=commit_message, revision=revision, token=token
    )
