"""memadapter.training: lifecycle datasets, token labels, losses, collator, Trainer, Accelerate entry.

    accelerate launch -m memadapter.training.train --config training/configs/tiny.json

Names are re-exported lazily so importing the package does not pull in `datasets` or the Trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "generate_stream": "lifecycle_data",
    "build_dataset": "lifecycle_data",
    "build_splits": "lifecycle_data",
    "ATTRIBUTES": "lifecycle_data",
    "AttributeSpec": "lifecycle_data",
    "token_labels": "labels",
    "tokenize_dataset": "labels",
    "filler_sentences": "filler",
    "MemAdapterCollator": "collator",
    "MemAdapterTrainer": "trainer",
    "LossWeights": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memadapter.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
