"""lexical_agreement: the question's words against candidate key texts (BM25 scaled to [0, 1])."""

from __future__ import annotations

import pytest

from memadapter.bm25 import bm25_reference, lexical_agreement, tokenize

KEYS = ["The Lumen printer", "the Lumen Mini printer", "Project Mosaic", None, ""]


def test_scaled_bm25_over_the_candidates():
    q = "Which colour does the Lumen Mini printer come in now?"
    raw = bm25_reference(tokenize([k or "" for k in KEYS]), tokenize([q])[0])
    assert lexical_agreement(q, KEYS) == pytest.approx([r / max(raw) for r in raw])


def test_lookalikes_are_told_apart_in_both_directions():
    mini = lexical_agreement("Which colour does the Lumen Mini printer come in now?", KEYS)
    plain = lexical_agreement("Which colour does the Lumen printer come in now?", KEYS)
    assert mini[1] == 1.0 and mini[0] < 1.0  # the rare word decides
    assert plain[0] == 1.0 and plain[1] < 1.0  # the key with no extra word wins
    assert mini[2:] == plain[2:] == [0.0, 0.0, 0.0]  # other entity, no text, empty text


def test_no_shared_word_or_no_candidates_gives_zeros():
    assert lexical_agreement("Where does Nina live?", ["The Nova heater", "Paul Keller"]) == [0.0, 0.0]
    assert lexical_agreement("anything", []) == []
    assert lexical_agreement("", ["Paul Keller"]) == [0.0]
