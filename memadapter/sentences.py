"""Where the sentences of plain English prose start and end, by one regex plus an abbreviation guard.

The read path cuts a retrieved chunk into sentences for the answer pointer
(``memadapter.modeling.read_answers``); the training data cut their filler with the same boundary
(``memadapter.training.filler.split_sentences``).

Example:
    >>> text = "Dr. Lee moved to Oslo. The office is at 5 Main St. It opens at nine."
    >>> [text[s:e] for s, e in sentence_spans(text)]
    ['Dr. Lee moved to Oslo.', 'The office is at 5 Main St. It opens at nine.']
"""

from __future__ import annotations

import re

# A boundary: "." / "!" / "?" (and closing quotes or brackets), whitespace, then a capital, digit or opening quote.
BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
# A piece ending in one of these is joined to the next one.
ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "St.", "vs.", "e.g.", "i.e.", "etc.", "Inc.", "Jr.", "U.S.")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each sentence of ``text``, surrounding whitespace excluded."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in [*BOUNDARY.finditer(text), None]:
        end = len(text) if m is None else m.end()  # the match holds closing quotes, then whitespace (stripped)
        piece = text[start:end]
        a = start + len(piece) - len(piece.lstrip())
        b = start + len(piece.rstrip())
        if b > a:
            if spans and text[spans[-1][0]:spans[-1][1]].endswith(ABBREVIATIONS):
                spans[-1] = (spans[-1][0], b)
            else:
                spans.append((a, b))
        if m is not None:
            start = m.end()
    return spans
