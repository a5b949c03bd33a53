"""training/lifecycle_entities.py: made-up names never collide with a held-out name."""

from __future__ import annotations

from memadapter.training import lifecycle_entities as le


def test_synthetic_words_avoid_held_out_names(monkeypatch):
    draws = iter(["nim", "bus", "basil", "isk", "drev", "ik"])  # two held-out project words, then a free one
    monkeypatch.setattr(le, "_ONSETS", ("",))
    monkeypatch.setattr(le, "_CODAS", ("",))

    class FakeRng:
        def choice(self, seq):
            if seq == le._VOWELS:
                return next(draws)
            return seq[0]

    assert le.synthetic_word(FakeRng()) == "Drevik"
