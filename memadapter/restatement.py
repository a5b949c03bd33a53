"""A restated sentence: which of its words an earlier sentence said otherwise.

A correction often repeats the sentence it corrects with one part changed ("Correction: The
Rhine is the longest river in Brest." after "... in Germany."); so does a log that restates a
record ("Alice's badge is 5522" after "Alice's badge is 4411"). The changed part is the new
value, however odd it sounds, and an answer pointer trained on plausible answers does not find it
by meaning alone. This module aligns a sentence with the earlier sentence that shares most of
its words (``difflib`` over lowercased words) and marks, per character span of the sentence, the
words that *replace* others of the earlier one and those *inserted* into it. The read path turns
them into the per-token features of :data:`FEATURES`; the answer pointer weighs them with learned
weights (:attr:`memadapter.answer_pointer.AnswerPointer.restated`).

Example:
    >>> old = "The Rhine is the longest river in Germany."
    >>> new = "Correction: The Rhine is the longest river in Brest."
    >>> share, changes = restatement(new, old)
    >>> round(share, 2), [(new[s:e], kind) for s, e, kind in changes]
    (0.78, [('Correction:', 'inserted'), ('Brest.', 'replaced')])
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from typing import Optional, Sequence

_WORD = re.compile(r"\S+")
KINDS = ("replaced", "inserted")
# Per token: in a replaced word, in an inserted word, the first and the last token of a run of
# replaced words (where an answer span starts and ends), each first scaled by the share of the
# sentence the earlier one repeats, then as a plain 0/1 flag: a weight on the flag against one on
# the scaled feature sets how close a restatement must be before its changed words count (a
# correction repeats nearly all of its sentence; another entity's fact in the same template, half).
_CHANNELS = ("replaced", "inserted", "first_replaced", "last_replaced")
FEATURES = _CHANNELS + tuple(f"{c}_flag" for c in _CHANNELS)


def _words(text: str) -> list[tuple[int, int, str]]:
    """(start, end, normalised word) per run of non-space characters; punctuation around a word is
    not part of its identity ("Germany." is "germany")."""
    out = []
    for m in _WORD.finditer(text):
        norm = re.sub(r"^\W+|\W+$", "", m.group().lower())
        out.append((m.start(), m.end(), norm or m.group()))
    return out


@lru_cache(maxsize=4096)
def _word_set(text: str) -> frozenset[str]:
    """The distinct normalised words of ``text``, remembered: a question's candidate sentences are
    each compared with every sentence before them in its chunks, and the next question reads the
    same chunks."""
    return frozenset(w for *_, w in _words(text))


def restatement(sentence: str, earlier: str) -> tuple[float, list[tuple[int, int, str]]]:
    """(share of ``sentence``'s words ``earlier`` repeats, [(start, end, kind)] per run of
    ``sentence``'s words that replace words of ``earlier`` or are inserted into it, kind in :data:`KINDS`)."""
    a, b = _words(earlier), _words(sentence)
    if not b:
        return 0.0, []
    matcher = difflib.SequenceMatcher(None, [w for *_, w in a], [w for *_, w in b], autojunk=False)
    changes, shared = [], 0
    for op, _, _, j0, j1 in matcher.get_opcodes():
        if op == "equal":
            shared += j1 - j0
        elif op in ("replace", "insert"):
            changes.append((b[j0][0], b[j1 - 1][1], "replaced" if op == "replace" else "inserted"))
    return shared / len(b), changes


_EDGE_PUNCT = ".,;:!?"


def replaced_runs(sentence: str, earlier: str) -> tuple[float, list[tuple[int, int]]]:
    """(share of ``sentence``'s words ``earlier`` repeats, [(start, end)] characters of each run of
    ``sentence``'s words that replace words of ``earlier``, without the sentence punctuation at its
    edges): in a correction that restates its sentence, the candidate new values.

    >>> s = "Correction: The Rhine is the longest river in Brest."
    >>> share, runs = replaced_runs(s, "The Rhine is the longest river in Germany.")
    >>> [s[a:b] for a, b in runs]
    ['Brest']
    """
    share, changes = restatement(sentence, earlier)
    runs = []
    for start, end, kind in changes:
        piece = sentence[start:end]
        left = len(piece) - len(piece.lstrip(_EDGE_PUNCT))
        right = len(piece) - len(piece.rstrip(_EDGE_PUNCT))
        if kind == "replaced" and left + right < len(piece):
            runs.append((start + left, end - right))
    return share, runs


def nearest_earlier(sentence: str, earlier: Sequence[str]) -> Optional[int]:
    """Index of the sentence of ``earlier`` that holds the largest share of ``sentence``'s distinct
    words (the first on a tie; a set count, cheap over a whole chunk's sentences); None when none
    holds any.

    >>> nearest_earlier("The Rhine is in Brest.", ["It rained.", "The Rhine is in Germany."])
    1
    """
    words = _word_set(sentence)
    best, best_share = None, 0.0
    for i, other in enumerate(earlier):
        share = len(words & _word_set(other)) / max(1, len(words))
        if share > best_share:
            best, best_share = i, share
    return best


def token_changes(sentence: str, earlier: Optional[str], offsets: Sequence[tuple[int, int]]) -> list[list[float]]:
    """Per token of ``sentence`` (``offsets``: (start, end) characters in ``sentence``), its
    :data:`FEATURES`; all zeros without an earlier sentence.

    >>> feats = token_changes("in Brest now.", "in Germany now.", [(0, 2), (2, 8), (8, 12), (12, 13)])
    >>> [dict(zip(FEATURES, f)) for f in feats][1]["first_replaced"], feats[1][4:]
    (0.6666666666666666, [1.0, 0.0, 1.0, 1.0])
    """
    out = [[0.0] * len(FEATURES) for _ in offsets]
    if not earlier:
        return out
    share, changes = restatement(sentence, earlier)
    half = len(_CHANNELS)
    for c0, c1, kind in changes:
        tokens = [t for t, (s, e) in enumerate(offsets) if e > c0 and s < c1]
        marks = [(t, kind) for t in tokens]
        if kind == "replaced" and tokens:
            marks += [(tokens[0], "first_replaced"), (tokens[-1], "last_replaced")]
        for t, channel in marks:
            out[t][_CHANNELS.index(channel)] = share
            out[t][half + _CHANNELS.index(channel)] = 1.0
    return out
