"""Small statistics and output helpers shared by every bench.

    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.49, 0.943)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import CapacityError, ConfigError, DTypeError


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (better than the normal one near 0 and 1)."""
    for name, value in (("correct", correct), ("total", total)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise DTypeError(f"{name}: expected an int, got {type(value).__name__}")
    if total <= 0 or not 0 <= correct <= total:
        raise CapacityError(f"correct/total: need 0 <= correct <= total and total > 0, got {correct}/{total}")
    if not (isinstance(z, (int, float)) and z > 0 and math.isfinite(z)):
        raise ConfigError(f"z: expected a finite number > 0, got {z!r}")
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def write_rows_json(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
                    required: Iterable[str] = ("method", "task")) -> None:
    """Write bench rows as a JSON list; atomic (temp file + rename) so a failure leaves no half file.
    Every row must hold the ``required`` keys (generation_eval's rows name a question ``kind``)."""
    rows = [dict(row) for row in rows]
    for i, row in enumerate(rows):
        missing = set(required) - set(row)
        if missing:
            raise ConfigError(f"rows[{i}]: missing keys {sorted(missing)}")
    text = json.dumps(rows, indent=2, allow_nan=False)  # raises before anything is written
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
