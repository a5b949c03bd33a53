"""Scoring one generated answer against a gold answer: SQuAD-normalised exact match, a whole-word
"contains" companion, and the two kinds of wrong answer counted apart: *stale* (a superseded
value) and *unknown* (the fact called unknown although it was never withdrawn).
:mod:`.generation_eval` scores every prediction with :func:`score_prediction`.
"""

from __future__ import annotations

import re
import string
from typing import Optional, Sequence

from memadapter.modeling.reader import WITHDRAWN

from .lifecycle_data import UNKNOWN

__all__ = ["normalize_answer", "exact_match", "contains_answer", "stale_answer", "unknown_answer", "score_prediction"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, collapse spaces.

    >>> normalize_answer("  The Orion-kettle, in  Lyon! ")
    'orionkettle in lyon'
    """
    s = str(s).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, gold: str) -> bool:
    """Whether ``pred`` and ``gold`` are equal after :func:`normalize_answer`."""
    return normalize_answer(pred) == normalize_answer(gold)


def contains_answer(pred: str, gold: str) -> bool:
    """Whether the normalised gold occurs as whole words in the normalised prediction.

    A lenient companion to exact match: a base model that answers in a sentence
    ("Alice lives in Porto.") is wrong by EM but right by this.
    """
    p, g = normalize_answer(pred), normalize_answer(gold)
    return bool(g) and f" {g} " in f" {p} "


# What an answer that calls the fact unknown starts with: the generators' gold after a retraction,
# and the text a withdrawn memory entry injects (a model that copies it says "no longer known").
_UNKNOWN_TEXTS = tuple(normalize_answer(t) for t in (UNKNOWN, WITHDRAWN))


def stale_answer(pred: str, gold: str, stale: Sequence[str]) -> bool:
    """Whether ``pred`` contains (as whole words, :func:`contains_answer`) a superseded value of
    ``stale`` that the gold does not itself contain. A value inside the gold ("Lyon" when the
    fact is now "Lyon North") is no evidence of a stale read, so it never counts.

    >>> stale_answer("Alice lives in Lyon.", "Porto", ["Lyon"])
    True
    >>> stale_answer("Lyon North", "Lyon North", ["Lyon"])
    False
    """
    return any(contains_answer(pred, old) and not contains_answer(gold, old) for old in stale)


def unknown_answer(pred: str, gold: str) -> bool:
    """Whether ``pred`` calls the fact unknown ("unknown", "no longer known", as its first words)
    although the gold is a value: the fact was never withdrawn.

    >>> unknown_answer("Unknown.", "Porto"), unknown_answer("unknown", "unknown")
    (True, False)
    """
    p = normalize_answer(pred)
    said = any(p == u or p.startswith(u + " ") for u in _UNKNOWN_TEXTS)
    return said and normalize_answer(gold) not in _UNKNOWN_TEXTS


def score_prediction(pred: Optional[str], question: dict) -> dict:
    """``correct``, ``contains``, ``stale`` and ``unknown`` of one prediction (all False when it was
    skipped, ``pred`` None). A question without a ``stale`` list (a user-made stream) is never stale."""
    if pred is None:
        return {"correct": False, "contains": False, "stale": False, "unknown": False}
    gold = str(question["answer"])
    return {"correct": exact_match(pred, gold), "contains": contains_answer(pred, gold),
            "stale": stale_answer(pred, gold, [str(v) for v in question.get("stale") or []]),
            "unknown": unknown_answer(pred, gold)}
