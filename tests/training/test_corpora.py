"""training/corpora.py: the real corpora as documents, stable halves, usable filler sentences."""

from __future__ import annotations

import pytest

from memadapter.errors import ConfigError, EmptyInputError
from memadapter.training.corpora import corpus_documents, filler_documents, stable_half, usable_sentence


def test_stable_half_is_a_fixed_bit_of_the_name():
    assert stable_half("Normans") == stable_half("Normans") and stable_half("x") in (0, 1)
    assert {stable_half(f"title {i}") for i in range(20)} == {0, 1}


def test_usable_sentences_are_one_capitalised_line_with_an_end_mark():
    assert usable_sentence("The river froze early that winter.")
    assert not usable_sentence("too short.") and not usable_sentence("lower case start of a sentence here.")
    assert not usable_sentence("A sentence that never ends with a mark") and not usable_sentence("A line\nbreak here.")


def test_documents_of_each_corpus_and_halves_of_the_filler():
    for corpus in ("essays", "squad", "hotpotqa"):
        docs = corpus_documents(corpus)
        assert docs and all(title and text for title, text in docs[:20])
    halves = [filler_documents((("hotpotqa", h),)) for h in (0, 1)]
    both = filler_documents((("hotpotqa", None),))
    assert all(halves) and len(halves[0]) + len(halves[1]) == len(both)  # each document sits in one half
    assert all(usable_sentence(s) for doc in halves[0][:20] for s in doc)


def test_bad_corpus_names_are_refused():
    with pytest.raises(ConfigError, match="corpus"):
        corpus_documents("wikipedia")
    with pytest.raises(EmptyInputError, match="filler_source"):
        filler_documents(())
