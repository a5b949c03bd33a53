"""How ``MemAdapterForCausalLM.from_pretrained`` reads its arguments and loads what they name: the
Auto class's keyword arguments, a local adapter folder given as the base, the saved adapter config,
and the base model (never with remote code).

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> is_adapter_folder(folder)
    False
    >>> open(os.path.join(folder, hub.ADAPTER_CONFIG_NAME), "w").close()
    >>> is_adapter_folder(folder)
    True
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from memadapter.errors import ConfigError, MemAdapterError

from . import hub
from .configuration_memadapter import MemAdapterConfig

__all__ = ["auto_kwargs", "is_adapter_folder", "load_base", "saved_config"]

# What transformers' Auto classes pass on to from_pretrained besides the path (auto_factory, 5.x).
# Loading an adapter has no use for these: the adapter's config is adapter_config.json, proxies are
# huggingface_hub's settings, and remote code is never run, whatever trust_remote_code says.
_AUTO_KWARGS = ("config", "proxies", "trust_remote_code", "adapter_kwargs")
# ... and these go on to the adapter's download and the base's load, as the user set them.
_AUTO_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "local_files_only")


def auto_kwargs(kwargs: dict, dtype: Any) -> tuple[Any, dict]:
    """Take the Auto class's keyword arguments out of ``kwargs``; returns the dtype asked for and
    the download options that were set."""
    if kwargs.pop("subfolder", "") not in ("", None):
        raise ConfigError("subfolder: an adapter is loaded from its folder or repo root; subfolders are not supported")
    for name in _AUTO_KWARGS:
        kwargs.pop(name, None)
    download = {name: kwargs.pop(name, None) for name in _AUTO_DOWNLOAD_KWARGS}
    torch_dtype = kwargs.pop("torch_dtype", None)
    return (dtype if dtype is not None else torch_dtype), {k: v for k, v in download.items() if v not in (None, False)}


def is_adapter_folder(path: Any) -> bool:
    """A local folder holding an adapter_config.json: from_pretrained(folder) then loads it as the adapter."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    try:
        return os.path.isfile(os.path.join(os.fspath(path), hub.ADAPTER_CONFIG_NAME))
    except (TypeError, ValueError):  # a bytes path, a NUL in it: not a folder we load; resolve_adapter says why
        return False


def saved_config(folder: Any) -> MemAdapterConfig:
    """The adapter's config; a ConfigError names the file it came from."""
    try:
        return MemAdapterConfig.from_dict(hub.load_adapter_config(folder))
    except ConfigError as err:
        if type(err) is not ConfigError:
            raise
        raise ConfigError(f"adapter: {os.path.join(os.fspath(folder), hub.ADAPTER_CONFIG_NAME)}: {err}") from err


def load_base(base: Any, config: MemAdapterConfig, tokenizer: Any, dtype: Any, token: Any, download: dict):
    """A loaded model is used as is; a path or repo id loads without remote code, ever.
    ``download``: cache_dir / force_download / local_files_only given to the Auto class, or none."""
    if isinstance(base, nn.Module):
        return base, tokenizer
    from .real_models import REAL_MODELS, load_real_model

    if isinstance(base, str) and base in REAL_MODELS and not os.path.isdir(base):
        # a real model of ours ("smollm2"): its packaged GGUF, converted once and cached, offline
        real_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype  # "bfloat16"; "auto": fp32
        backbone, own_tokenizer = load_real_model(base, dtype=real_dtype if real_dtype is not None else torch.float32)
        return backbone, tokenizer if tokenizer is not None else own_tokenizer
    is_path = isinstance(base, os.PathLike)
    if is_path:
        base = os.fspath(base)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"base: expected a repo id, a local directory or a loaded model, got {base!r}")
    if os.path.isfile(base):
        raise ConfigError(f"base: {base!r} is a file; expected a model folder or a Hub repo id")
    if (is_path or hub._looks_like_path(base)) and not os.path.isdir(base):
        raise ConfigError(f"base: no model folder at {base!r}")
    from transformers import AutoTokenizer

    kwargs = dict(download, revision=config.base_model_revision, trust_remote_code=False, token=token)
    if hub.hub_offline():  # transformers reads HF_HUB_OFFLINE at import only
        kwargs["local_files_only"] = True
    try:
        backbone = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:  # not found, offline, no weights, unknown model type
        if isinstance(err, MemAdapterError):
            raise
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"base: cannot load {base!r} ({type(err).__name__}: {first_line})") from err
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(base, **kwargs)
        except (OSError, ValueError):
            tokenizer = None  # ids-only use still works; text methods will ask for one
    return backbone, tokenizer

