"""The val sweep script keeps importing what it needs, and its imperative rewrite keeps the name."""
from experiments import phase13_val_sweep as sweep
from experiments.phase13_data import make_samples


def test_imperative_rewrites_every_val_question_and_keeps_the_entity():
    draw = make_samples("val", 12, 0, [("recall_64", "recall", 64)], True)["recall_64"]
    for s in draw:
        out = sweep.imperative(s)
        assert out.query.startswith("say which ")
        assert out.target == s.target and out.events == s.events
        template_words = set(" ".join(sweep.IMPERATIVE.values()).split())
        name = set(out.query.split()) - template_words
        assert name and name <= set(s.query.split())
