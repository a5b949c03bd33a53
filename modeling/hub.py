"""Adapter file IO, Hub resolution and upload, following the peft conventions.

An adapter directory holds exactly three files: ``adapter_config.json`` (plain JSON),
``adapter_model.safetensors`` (adapter tensors only, never backbone weights) and ``README.md``
(the model card). Loading reads JSON and safetensors only, so nothing is ever unpickled, and a
config that asks for remote code or a custom class is refused before anything else happens.

    >>> import torch, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = save_adapter(d, {"model_type": "memadapter"}, {"w": torch.zeros(2)}, "# card")
    >>> sorted(p.name for p in adapter_files(d))
    ['README.md', 'adapter_config.json', 'adapter_model.safetensors']
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from memadapter.errors import ConfigError, UnsafeLoadError

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
MODEL_CARD_NAME = "README.md"
ADAPTER_FILE_NAMES: tuple[str, ...] = (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MODEL_CARD_NAME)

# Keys through which transformers can be told to fetch or import code. An adapter never needs them.
_UNSAFE_KEYS = ("trust_remote_code", "auto_map", "custom_pipelines", "_attn_implementation_autoset")

PathLike = Union[str, os.PathLike]


def adapter_files(directory: PathLike) -> list[Path]:
    """The adapter files present in ``directory`` (in ADAPTER_FILE_NAMES order)."""
    d = Path(directory)
    return [d / n for n in ADAPTER_FILE_NAMES if (d / n).is_file()]


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temp file in the same folder, then rename, so a failure leaves the old file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_adapter(
    directory: PathLike, config: dict, state_dict: dict[str, torch.Tensor], model_card: str
) -> list[Path]:
    """Write the three adapter files. Tensors are made contiguous CPU copies (safetensors needs that)."""
    check_config_safe(config)
    try:
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    except TypeError as err:
        raise ConfigError(f"config: not JSON serialisable ({err})") from err
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _atomic_write(d / ADAPTER_WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    _atomic_write(d / ADAPTER_CONFIG_NAME, lambda p: Path(p).write_text(text, encoding="utf-8"))
    _atomic_write(d / MODEL_CARD_NAME, lambda p: Path(p).write_text(model_card, encoding="utf-8"))
    return adapter_files(d)


def check_config_safe(config: dict) -> None:
    """Refuse any config that could turn on remote code or name a class to import."""
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a JSON object, got {type(config).__name__}")
    for key in _UNSAFE_KEYS:
        if key in config and config[key] not in (None, False, {}, []):
            raise UnsafeLoadError(f"adapter config: key {key!r} is not allowed (value {config[key]!r}); loading never runs remote code")
    if config.get("model_type", "memadapter") != "memadapter":
        raise UnsafeLoadError(f"adapter config: model_type must be 'memadapter', got {config.get('model_type')!r}")


def load_adapter_config(directory: PathLike) -> dict:
    """Read and vet ``adapter_config.json``."""
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"adapter: no {ADAPTER_CONFIG_NAME} in {str(directory)!r}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"adapter: {path} is not valid JSON ({err})") from err
    check_config_safe(config)
    return config


def load_adapter_weights(directory: PathLike) -> dict[str, torch.Tensor]:
    """Read ``adapter_model.safetensors`` (never a pickle: other weight files are ignored)."""
    path = Path(directory) / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        raise ConfigError(f"adapter: no {ADAPTER_WEIGHTS_NAME} in {str(directory)!r}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UnsafeLoadError(f"adapter: {path} is not a valid safetensors file ({err})") from err


def resolve_adapter(
    adapter: PathLike, revision: Optional[str] = None, token: Optional[Union[str, bool]] = None
) -> Path:
    """A local adapter directory as is; otherwise a Hub repo id, fetched file by file.

    Only the config and the safetensors file are downloaded (the card is not needed to load).
    """
    local = Path(adapter)
    if local.is_dir():
        return local
    repo_id = str(adapter)
    if repo_id.count("/") > 1 or not repo_id or repo_id.startswith((".", "/")):
        raise ConfigError(f"adapter: {repo_id!r} is neither a local directory nor a Hub repo id")
    paths = [
        Path(hf_hub_download(repo_id=repo_id, filename=name, revision=revision, token=token))
        for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)
    ]
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
    missing = set(ADAPTER_FILE_NAMES) - {p.name for p in files}
    if missing:
        raise ConfigError(f"folder: missing adapter files {sorted(missing)} in {str(folder)!r}")
    api = api or HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, token=token)
    ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    return api.create_commit(
        repo_id=repo_id, operations=ops, commit_message=commit_message, revision=revision, token=token
    )
