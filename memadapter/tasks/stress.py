"""The 2M-token stress scenarios (paper section 4.2, Table 2).

Five scenarios reuse the controlled task generators with few events in a very long stream of
filler: a labelled needle, an unlabelled (uniform) needle, an overwrite, a four-version key,
and a protected fact under distractor pollution. One trial is one stream with one question;
the streams of all seeds run side by side as one batch (``StackedBatch``), generated lazily.

Example:
    >>> from memadapter.tasks.vocab import Codebook
    >>> cb = Codebook(dim=16, num_keys=64, num_values=64, num_filler=64)
    >>> batch = scenario_batch("overwrite", tokens=4096, seeds=[0, 1], trials=2, codebook=cb)
    >>> batch.batch_size, batch.length
    (4, 4096)
"""

from __future__ import annotations

from typing import Sequence

from .._validate import check_positive_int
from ..errors import ConfigError
from .controlled import generate
from .stream import StackedBatch
from .vocab import Codebook

SCENARIOS: dict[str, tuple[str, dict]] = {
    "needle": ("associative_recall", {"facts": 8}),
    "uniform": ("uniform_recall", {"facts": 8}),
    "overwrite": ("overwrite_facts", {"facts": 8, "updates": 4}),
    "versioning": ("temporal_versioning", {"keys": 4, "versions": 4}),
    "distractor": ("distractor_pollution", {}),
}


def scenario_batch(name: str, tokens: int, seeds: Sequence[int], trials: int, codebook: Codebook) -> StackedBatch:
    """``len(seeds) * trials`` streams of ``tokens`` tokens for scenario ``name``."""
    if name not in SCENARIOS:
        raise ConfigError(f"name: unknown scenario {name!r}; choose from {sorted(SCENARIOS)}")
    check_positive_int("tokens", tokens)
    check_positive_int("trials", trials)
    if not seeds:
        raise ConfigError("seeds: need at least one seed")
    task, params = SCENARIOS[name]
    return StackedBatch([generate(task, trials, tokens, seed, codebook, **params) for seed in seeds])
