"""Plain English prose -> sentences, with one regex and an abbreviation guard (no model, no data).

The read path's sentence fallback cuts retrieved chunks with it, and the training corpora cut their
filler with it, so both see the same sentences.

Example:
    >>> split_sentences('It rained. Dr. Lee said "Stay!" Then we left.')
    ['It rained.', 'Dr. Lee said "Stay!"', 'Then we left.']
"""

from __future__ import annotations

import re

__all__ = ["split_sentences"]

# A boundary: ./!/? (and closing quotes or brackets), whitespace, then a capital, digit or opening quote.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "St.", "vs.", "e.g.", "i.e.", "etc.", "Inc.", "Jr.", "U.S.")


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped; a piece ending in a known abbreviation ("Dr.", "e.g.")
    is joined to the next one."""
    pieces: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        pieces.append(text[start:m.end()].strip())
        start = m.end()
    pieces.append(text[start:].strip())
    out: list[str] = []
    for piece in pieces:
        if not piece:
            continue
        if out and out[-1].endswith(_ABBREVIATIONS):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out
