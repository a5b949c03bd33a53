"""training/answer_scoring.py: exact match after SQuAD normalisation, whole-word containment, and
the stale and unknown kinds of wrong answer."""

from __future__ import annotations

import pytest

from memadapter.training.answer_scoring import (
    contains_answer, exact_match, normalize_answer, score_prediction, stale_answer, unknown_answer,
)
from memadapter.training.generation_eval import score_prediction as reexported


@pytest.mark.parametrize("pred,gold,em", [
    ("Porto", "Porto", True), ("  porto. ", "Porto", True), ("The Orion kettle", "orion kettle", True),
    ("555-0112", "555-0112", True), ("an  olive   green", "Olive Green", True), ("Porto Lyon", "Porto", False),
    ("", "Porto", False), ("theatre", "atre", False),
])
def test_exact_match_on_normalised_strings(pred, gold, em):
    assert exact_match(pred, gold) is em


def test_normalize_and_contains():
    assert normalize_answer("  The Orion-kettle, in  Lyon! ") == "orionkettle in lyon"
    assert normalize_answer("A an THE") == ""
    assert contains_answer("Alice lives in Porto.", "Porto")
    assert not contains_answer("Alice lives in Portonovo.", "Porto")
    assert not contains_answer("anything", "the")  # an empty normalised gold never matches


@pytest.mark.parametrize("pred,gold,stale,want", [
    ("Lyon", "Porto", ["Lyon"], dict(correct=False, stale=True, unknown=False)),  # the superseded value
    ("She lives in lyon.", "Porto", ["Graz", "Lyon"], dict(correct=False, stale=True, contains=False)),
    ("Lyon North", "Lyon North", ["Lyon"], dict(correct=True, stale=False)),  # the old value inside the gold
    ("Lyon", "Lyon North", ["Lyon"], dict(correct=False, stale=False)),  # no evidence of a stale read
    ("Portobello", "Graz", ["Porto"], dict(stale=False)),  # whole words only
    ("Porto", "Porto", [], dict(correct=True, stale=False)),
    ("unknown", "unknown", ["Lyon"], dict(correct=True, stale=False, unknown=False)),  # a withdrawn fact
    ("No longer known.", "unknown", ["Lyon"], dict(correct=False, unknown=False)),
    ("Unknown.", "Porto", ["Lyon"], dict(correct=False, stale=False, unknown=True)),  # never withdrawn
    ("no longer known", "Porto", [], dict(unknown=True)),
    ("unknown since 2020", "Porto", [], dict(unknown=True)),
    ("unknowns", "Porto", [], dict(unknown=False)), ("Lyon is unknown", "Porto", [], dict(unknown=False)),
])
def test_stale_and_unknown_scores(pred, gold, stale, want):
    got = score_prediction(pred, {"answer": gold, "stale": stale})
    assert {k: got[k] for k in want} == want
    assert got["stale"] == stale_answer(pred, gold, stale) and got["unknown"] == unknown_answer(pred, gold)


def test_without_a_stale_list_or_a_prediction_nothing_is_stale():
    assert not score_prediction("Lyon", {"answer": "Porto"})["stale"]  # a user-made stream
    assert not score_prediction("Lyon", {"answer": "Porto", "stale": None})["stale"]
    assert score_prediction(None, {"answer": "Porto", "stale": ["Lyon"]}) == dict(
        correct=False, contains=False, stale=False, unknown=False)  # skipped


def test_generation_eval_keeps_the_scoring_names():
    assert reexported is score_prediction
