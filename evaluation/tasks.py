"""The task registry of ``memadapter eval`` and the task files the peers read.

Every sample draws from its own seeded generator (``seed/task/length/index``), so sample 3 is the
same sample whether 5 or 50 are asked for and whichever process of a sharded run builds it.
"""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path
from typing import Callable, Sequence, Union

from memadapter._validate import check_choices, check_positive_int
from memadapter.errors import ConfigError

from .babi import babi
from .ruler import NIAH_SHAPES, TaskContext, niah, qa, variable_tracking
from .samples import Sample
from .variants import niah_lookalike, niah_rewritten

__all__ = ["TASKS", "check_tasks", "generate_samples", "write_samples", "read_samples"]

Generator = Callable[[int, int, random.Random, TaskContext], Sample]
TASKS: dict[str, Generator] = {
    **{name: partial(niah, name) for name in NIAH_SHAPES},
    "vt": variable_tracking,
    "qa_1": partial(qa, "qa_1"),
    "qa_2": partial(qa, "qa_2"),
    "niah_rewritten": niah_rewritten,
    "niah_lookalike": niah_lookalike,
    **{f"babilong_qa{i}": partial(babi, f"babilong_qa{i}") for i in range(1, 6)},
}


def check_tasks(tasks: Union[str, Sequence[str]]) -> list[str]:
    """A comma list or sequence of task names -> list; ConfigError naming unknown or repeated ones."""
    return check_choices("tasks", tasks, sorted(TASKS))


def generate_samples(task: str, length: int, num_samples: int, ctx: TaskContext, seed: int = 0,
                     indices: Sequence[int] | None = None) -> list[Sample]:
    """Samples ``indices`` (default ``range(num_samples)``) of ``task`` at ``length`` tokens."""
    check_tasks([task])
    check_positive_int("length", length)
    check_positive_int("num_samples", num_samples)
    picked = range(num_samples) if indices is None else indices
    return [TASKS[task](i, length, random.Random(f"{seed}/{task}/{length}/{i}"), ctx) for i in picked]


def write_samples(path: Union[str, Path], samples: Sequence[Sample]) -> None:
    """One JSON object per line: the task file every method, ours or a peer's, reads."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps(s.to_dict()) + "\n")


def read_samples(path: Union[str, Path]) -> list[Sample]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                out.append(Sample(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as err:
                raise ConfigError(f"{path}: line {n} is not a sample ({err})") from None
    return out
