"""Text injection: the selected source text is written into the prompt, before the question.

No trained module: it is the plain retrieval baseline on the same read path, and a trained
adapter can switch to it at read time (generation_eval compares the two on one memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .base import Injector, Prepared

if TYPE_CHECKING:
    from ..selection import Selection


class TextInjector(Injector):
    """``injection="text"``: each row becomes ``"Memory: a ; b .\\n" + question``, left-padded again.

    Example:
        >>> TextInjector().build(None, None, 64), TextInjector.takes_values
        ({}, False)
    """

    takes_values = False  # nothing differentiable to feed: it reads text

    def prepare(self, model: nn.Module, sel: "Selection", input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> Prepared:
        tok = model._tok()
        rows = []
        for b, row in enumerate(model._unpadded(input_ids, attention_mask)):
            text = sel.memory_text(b)
            mem = tok(text + " .\n", add_special_tokens=False)["input_ids"] if text else []
            rows.append(mem + row)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), model._pad_id(), dtype=torch.long, device=input_ids.device)
        mask = torch.zeros(len(rows), width, dtype=attention_mask.dtype, device=input_ids.device)
        where = torch.zeros_like(input_ids)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r):] = 1
            n_text = int(attention_mask[b].sum())
            # Original valid tokens keep their order and land at the end; pads point at column 0.
            where[b, attention_mask[b].bool()] = torch.arange(width - n_text, width, device=input_ids.device)
        return Prepared({"input_ids": ids, "attention_mask": mask}, where)
