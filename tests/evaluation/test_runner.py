"""Rows from predictions (counts, Wilson interval, stale rate, skips) and a one-process run."""

import pytest

from memadapter.evaluation.methods import LM, BM25Retrieval, FullContext, TailWindow
from memadapter.evaluation.runner import run_eval, sample_keys, score_predictions, summarize


def pred(pid, prediction, refs, stale=(), metric="string_match_all", method="m", latency=1.0):
    task, length, _ = pid.split("/")
    return {"id": pid, "task": task, "length": int(length), "method": method, "prediction": prediction,
            "references": list(refs), "stale_values": list(stale), "metric": metric, "active": [], "note": "",
            "latency_s": latency}


def test_rows_count_full_answers_stale_values_and_skips():
    preds = [pred("a/8/0", "it is 111", ["111"], ["999"]), pred("a/8/1", "999 then 111", ["111"], ["999"]),
             pred("a/8/2", "999", ["111"], ["999"], latency=4.0), pred("a/8/3", None, ["111"], ["999"]),
             pred("b/8/0", "x 1 2", ["1", "2", "3"])]
    preds[3]["note"] = "too long"
    score_predictions(preds, backend="plain")
    assert [p["score"] for p in preds] == [1.0, 1.0, 0.0, None, pytest.approx(2 / 3)]
    a, b = summarize(preds, ["a", "b"], [8], ["m"])
    assert (a["correct"], a["total"], a["skipped"], a["note"]) == (2, 3, 1, "too long")
    assert a["accuracy"] == pytest.approx(2 / 3) and a["stale"] == pytest.approx(2 / 3)
    assert a["mean_latency_s"] == pytest.approx(2.0) and a["ci_low"] < 2 / 3 < a["ci_high"]
    assert (b["correct"], b["score"], b["stale"]) == (0, pytest.approx(2 / 3), None)


def test_a_single_process_run_gives_one_row_per_task_length_and_method(tiny_lm, tok, ctx):
    lm = LM(tiny_lm, tok)
    methods = [FullContext(lm), TailWindow(lm, 32), BM25Retrieval(lm, 2, 32)]
    tasks, lengths = ["niah_single", "babilong_qa1"], [128, 400]
    rows, preds = run_eval(tasks, lengths, 2, methods, tok, progress=False, backend="plain", ctx=ctx)
    assert [(r["task"], r["length"], r["method"]) for r in rows] == [
        (t, n, m) for t in tasks for n in lengths for m in ("full_context", "tail", "bm25")]
    assert len(preds) == len(sample_keys(tasks, lengths, 2)) * 3
    full_400 = [r for r in rows if r["method"] == "full_context" and r["length"] == 400]
    assert all(r["total"] == 0 and r["skipped"] == 2 and "window 256" in r["note"] for r in full_400)
    assert all(r["total"] == 2 for r in rows if r["method"] != "full_context")
    assert all(p["score"] is not None for p in preds if p["prediction"] is not None)
