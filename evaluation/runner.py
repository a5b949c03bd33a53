"""Run methods over samples, sharded across processes, and summarise one row per task, length, method.

Under ``accelerate launch`` each process builds and answers its own share of the samples (every
sample is seeded on its own, so a share is the same samples a single process would build); the
predictions are gathered on the main process, which scores and summarises them. One process or
two, the rows are the same except for latency.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

from tqdm.auto import tqdm

from memadapter.bench.stats import wilson_interval

from .methods import Method
from .ruler import TaskContext
from .samples import Sample
from .scoring import METRICS, is_stale, load_metric
from .tasks import generate_samples

__all__ = ["sample_keys", "predict", "score_predictions", "summarize", "run_eval"]


def sample_keys(tasks: Sequence[str], lengths: Sequence[int], num_samples: int) -> list[tuple[str, int, int]]:
    """Every (task, length, index) of a run, in the order the rows come out."""
    return [(t, n, i) for t in tasks for n in lengths for i in range(num_samples)]


def _record(sample: Sample, method: Method, answer: Any, latency: float) -> dict:
    return {"id": sample.id, "task": sample.task, "length": sample.length, "method": method.name,
            "prediction": answer.text, "references": sample.references, "stale_values": sample.stale_values,
            "metric": sample.metric, "active": answer.active, "note": answer.note, "latency_s": latency}


def predict(samples: Sequence[Sample], methods: Sequence[Method], progress: bool = True) -> list[dict]:
    """Every method's answer to every sample (unscored), with its latency in seconds."""
    out = []
    for sample in tqdm(samples, desc="eval", unit="sample", disable=not progress):
        for method in methods:
            start = time.perf_counter()
            answer = method.answer(sample)
            # A memory method reuses the sample's ingest across injections: each row pays for it.
            latency = time.perf_counter() - start + getattr(method, "ingest_s", 0.0) * (answer.text is not None)
            out.append(_record(sample, method, answer, latency))
    return out


def score_predictions(preds: list[dict], backend: str = "evaluate") -> None:
    """Add ``score`` (RULER's metric of the sample) and ``stale`` to each answered prediction.
    ``backend="evaluate"`` scores through the local `evaluate` modules, ``"plain"`` through the
    reference functions (same numbers; the tests check that)."""
    for name, plain in METRICS.items():
        group = [p for p in preds if p["metric"] == name and p["prediction"] is not None]
        if not group:
            continue
        if backend == "evaluate":
            scores = load_metric(name).compute(predictions=[p["prediction"] for p in group],
                                               references=[p["references"] for p in group])["scores"]
        else:
            scores = [plain(p["prediction"], p["references"]) for p in group]
        for p, s in zip(group, scores):
            p["score"] = float(s)
    for p in preds:
        p.setdefault("score", None)
        p["stale"] = bool(p["stale_values"]) and p["prediction"] is not None and is_stale(p["prediction"], p["stale_values"])


def _row(task: str, length: int, method: str, preds: list[dict]) -> dict:
    done = [p for p in preds if p["prediction"] is not None]
    total = len(done)
    correct = sum(p["score"] == 1.0 for p in done)
    lo, hi = wilson_interval(correct, total) if total else (None, None)
    has_stale = any(p["stale_values"] for p in done)
    notes = sorted({p["note"] for p in preds if p["note"]})
    return {"task": task, "length": length, "method": method, "correct": correct, "total": total,
            "accuracy": correct / total if total else None, "ci_low": lo, "ci_high": hi,
            "score": sum(p["score"] for p in done) / total if total else None,
            "stale": sum(p["stale"] for p in done) / total if total and has_stale else None,
            "mean_latency_s": sum(p["latency_s"] for p in done) / total if total else None,
            "skipped": len(preds) - total, "note": "; ".join(notes)[:300]}


def summarize(preds: Sequence[dict], tasks: Sequence[str], lengths: Sequence[int], methods: Sequence[str]) -> list[dict]:
    """One row per task, length and method (in that order). ``accuracy`` = samples fully right
    (every reference found) / answered, with its Wilson 95% interval; ``score`` = RULER's mean
    metric (partial credit on multi-reference tasks); ``stale`` = answers holding a stale value."""
    return [_row(t, n, m, [p for p in preds if (p["task"], p["length"], p["method"]) == (t, n, m)])
            for t in tasks for n in lengths for m in methods]


def run_eval(tasks: Sequence[str], lengths: Sequence[int], num_samples: int, methods: Sequence[Method],
             tokenizer: Any, seed: int = 0, progress: bool = True, backend: str = "evaluate",
             state: Optional[Any] = None, ctx: Optional[TaskContext] = None) -> tuple[list[dict], list[dict]]:
    """(rows, predictions) on the main process; ([], []) on the others. ``state`` is an accelerate
    ``PartialState`` (None: one process); ``ctx`` the task context (default: the essays)."""
    ctx = ctx if ctx is not None else TaskContext.create(tokenizer)
    keys = sample_keys(tasks, lengths, num_samples)
    if state is not None and state.num_processes > 1:
        with state.split_between_processes(keys) as mine:
            mine = list(mine)
    else:
        mine = keys
    samples = [generate_samples(t, n, num_samples, ctx, seed, indices=[i])[0] for t, n, i in mine]
    main = state is None or state.is_main_process
    preds = predict(samples, methods, progress=progress and main)
    for p in preds:
        p["process"] = 0 if state is None else state.process_index  # which shard answered it
    if state is not None and state.num_processes > 1:
        from accelerate.utils import gather_object

        preds = gather_object(preds)
    if not main:
        return [], []
    order = {k: j for j, k in enumerate(keys)}
    rank = {m.name: j for j, m in enumerate(methods)}
    preds.sort(key=lambda p: (order[(p["task"], p["length"], int(p["id"].rsplit("/", 1)[1]))], rank[p["method"]]))
    score_predictions(preds, backend)
    return summarize(preds, tasks, lengths, [m.name for m in methods]), preds
