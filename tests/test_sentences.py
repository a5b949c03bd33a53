"""Sentence spans of plain prose: the boundary the read path and the training filler share."""

from memadapter.sentences import sentence_spans
from memadapter.training.filler import split_sentences


def test_spans_cut_at_sentence_ends_and_keep_abbreviations_and_quotes():
    text = '  He said "Go." Then (it) ended.  Mr. X left!\nWhy? 3 cats. e.g. Dogs. '
    got = [text[s:e] for s, e in sentence_spans(text)]
    assert got == ['He said "Go."', "Then (it) ended.", "Mr. X left!", "Why?", "3 cats. e.g. Dogs."]
    assert split_sentences(text) == got


def test_no_boundary_without_a_capital_or_digit_after_it():
    assert sentence_spans("alice lives in paris . bob lives in rome") == [(0, 40)]
    assert sentence_spans("") == [] and sentence_spans("   ") == []
