"""Feed a ``StreamBatch`` through a ``Method`` chunk by chunk and score its answers.

Both benches use this one loop: the stream is produced lazily (``StreamBatch.chunks``), each
question is asked once the stream has reached its ``query_at`` position, and only then are the
answers compared with the labels.

Example:
    >>> from memadapter.baselines.full_scan import FullScan
    >>> from memadapter.tasks.controlled import generate
    >>> from memadapter.tasks.vocab import Codebook
    >>> cb = Codebook(dim=32, num_keys=64, num_values=64, num_filler=256)
    >>> batch = generate("associative_recall", 4, 512, seed=0, codebook=cb, facts=4)
    >>> score = run_method(FullScan(cb), batch)
    >>> score.total, score.max_active
    (4, 511)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union


from .._validate import check_positive_int
from .stream import StackedBatch, StreamBatch

if TYPE_CHECKING:  # only for hints: tasks stays importable without the baselines
    from ..baselines.base import Method

Batch = Union[StreamBatch, StackedBatch]


@dataclass
class Score:
    """Correct answers out of ``total`` and the largest active set any query used."""

    correct: int
    total: int
    max_active: int

    def add(self, other: "Score") -> "Score":
        return Score(self.correct + other.correct, self.total + other.total, max(self.max_active, other.max_active))


def run_method(method: "Method", batch: Batch, feed: int = 512) -> Score:
    """Stream ``batch`` through ``method`` in ``feed``-token chunks, answering at each ``query_at``."""
    check_positive_int("feed", feed)
    method.reset(batch.batch_size)
    pos, correct, max_active = 0, 0, 0
    for j, at in enumerate(batch.query_at):
        for chunk in batch.chunks(pos, at, feed) if at > pos else ():
            method.observe(chunk)
        pos = at
        pred, active = method.answer(batch.queries[:, j : j + 1])  # [B, 1] each
        correct += int((pred[:, 0] == batch.answers[:, j]).sum())
        max_active = max(max_active, int(active.max()))
    return Score(correct, batch.batch_size * len(batch.query_at), max_active)


def run_methods(methods: list["Method"], batch: Batch, feed: int = 512) -> tuple[list[Score], list[float]]:
    """``run_method`` for several methods in lockstep: each chunk is generated once and fed to all.

    Returns one Score and the seconds spent inside each method (stream generation excluded).
    """
    check_positive_int("feed", feed)
    seconds = [0.0] * len(methods)
    correct, max_active = [0] * len(methods), [0] * len(methods)

    def timed(i: int, fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        seconds[i] += time.perf_counter() - t
        return out

    for i, m in enumerate(methods):
        timed(i, m.reset, batch.batch_size)
    pos = 0
    for j, at in enumerate(batch.query_at):
        for chunk in batch.chunks(pos, at, feed) if at > pos else ():
            for i, m in enumerate(methods):
                timed(i, m.observe, chunk)
        pos = at
        for i, m in enumerate(methods):
            pred, active = timed(i, m.answer, batch.queries[:, j : j + 1])
            correct[i] += int((pred[:, 0] == batch.answers[:, j]).sum())
            max_active[i] = max(max_active[i], int(active.max()))
    total = batch.batch_size * len(batch.query_at)
    return [Score(c, total, a) for c, a in zip(correct, max_active)], seconds


def row(method: str, task: str, score: Score) -> dict:
    """The JSON row both benches write: exactly these six keys."""
    return {"method": method, "task": task, "correct": score.correct, "total": score.total,
            "accuracy": score.correct / score.total if score.total else 0.0, "max_active": score.max_active}


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


