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


def test_query_coverage_is_absolute_stemmed_and_takes_background_weights():
    from memadapter.bm25 import background_idf, query_coverage

    texts = ["note : Ines Aldo lives in Paris .", "update : Ines Aldo moved to Rome .", "Bex Fisk lives in Oslo .", None]
    cov = query_coverage("Where does Ines Aldo live?", texts)
    assert cov[0] == 1.0 and cov[3] == 0.0 and all(0.0 <= c <= 1.0 for c in cov)
    assert cov[2] < cov[1] < cov[0]  # "live" meets "lives"; the names weigh more than it
    only_other = query_coverage("Where does Ines Aldo live?", texts[2:3])
    assert only_other == [1.0]  # the question's names are in no text: they do not count
    idf = background_idf(["x lives in y .", "z lives in w .", "q moved to r ."])
    assert idf("zeno") > idf("live")
    weighted = query_coverage("Where does Ines Aldo live?", texts, idf)
    assert weighted[1] > cov[1] and weighted[2] < cov[2]  # a common template word weighs less
    assert query_coverage("?", texts) == [0.0, 0.0, 0.0, 0.0]
