"""Scoring a predictions file reproduces the rows of the run; the figures render."""

import json

import pytest

from memadapter.evaluation.methods import LM, BM25Retrieval, TailWindow
from memadapter.evaluation.runner import run_eval
from memadapter.evaluation.score import main as score_main, read_predictions, rows_from_predictions


@pytest.fixture(scope="module")
def run(tiny_lm, tok, ctx):
    lm = LM(tiny_lm, tok)
    return run_eval(["niah_rewritten", "babilong_qa4"], [128, 200], 2, [TailWindow(lm, 40), BM25Retrieval(lm, 1, 40)],
                    tok, progress=False, backend="plain", ctx=ctx)


def test_a_predictions_file_scores_to_the_same_rows(run, tmp_path):
    rows, preds = run
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    assert rows_from_predictions(read_predictions(str(path)), backend="plain") == rows
    assert score_main([str(path), "--json", str(tmp_path / "rows.json"), "--metrics", "plain"]) == 0
    assert json.loads((tmp_path / "rows.json").read_text()) == rows


def test_figures_render(run, tmp_path):
    pytest.importorskip("matplotlib")
    from memadapter.evaluation.plot import plot_accuracy, plot_stale

    rows, _ = run
    plot_accuracy(rows, tmp_path / "a.png")
    assert plot_stale(rows, tmp_path / "s.png")  # niah_rewritten has a stale value
    assert (tmp_path / "a.png").stat().st_size > 5000 and (tmp_path / "s.png").stat().st_size > 3000
    assert not plot_stale([r for r in rows if r["task"] == "babilong_qa4"], tmp_path / "none.png")
