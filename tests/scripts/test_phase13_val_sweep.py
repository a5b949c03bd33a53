"""The val sweep script keeps importing what it needs, and its imperative rewrite keeps the name."""
import importlib.util
from pathlib import Path

from memadapter.training.phase13_data import make_samples

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "phase13_val_sweep.py"


def _load():
    spec = importlib.util.spec_from_file_location("phase13_val_sweep", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_imperative_rewrites_every_val_question_and_keeps_the_entity():
    sweep = _load()
    draw = make_samples("val", 12, 0, [("recall_64", "recall", 64)], True)["recall_64"]
    for s in draw:
        out = sweep.imperative(s)
        assert out.query.startswith("say which ")
        assert out.target == s.target and out.events == s.events
        template_words = set(" ".join(sweep.IMPERATIVE.values()).split())
        name = set(out.query.split()) - template_words
        assert name and name <= set(s.query.split())
