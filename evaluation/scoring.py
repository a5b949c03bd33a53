"""Scores: RULER's string_match_all / string_match_part, the stale rate, and the Wilson interval.

The metrics are local `evaluate` modules (``metrics/<name>/<name>.py``, loaded by path, offline);
the plain functions here are their references, and a test checks the two agree.

    >>> string_match_all("the numbers are 12 and 7", ["12", "13"])
    0.5
    >>> string_match_part("Paris, France", ["paris", "Lyon"])
    1.0
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from memadapter.errors import ConfigError

__all__ = ["METRICS", "string_match_all", "string_match_part", "is_stale", "metric_dir", "load_metric"]

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Share of ``references`` found in ``prediction`` (case-insensitive substrings)."""
    if not references:
        raise ConfigError("references: a sample needs at least one reference")
    return sum(r.lower() in prediction.lower() for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 when any of ``references`` is found in ``prediction``, else 0.0."""
    if not references:
        raise ConfigError("references: a sample needs at least one reference")
    return float(any(r.lower() in prediction.lower() for r in references))


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def is_stale(prediction: str, stale_values: Sequence[str]) -> bool:
    """True when the prediction holds a value that was overwritten (or a look-alike's)."""
    return any(v.lower() in prediction.lower() for v in stale_values)


def metric_dir(name: str) -> Path:
    if name not in METRICS:
        raise ConfigError(f"metric: expected one of {sorted(METRICS)}, got {name!r}")
    return METRICS_DIR / name


@lru_cache(maxsize=None)
def load_metric(name: str) -> Any:
    """The local `evaluate` module ``name`` (``evaluate.load(path)``: no Hub, no network)."""
    import evaluate

    return evaluate.load(str(metric_dir(name)))
