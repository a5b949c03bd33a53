"""Read stage 4, injection: what a picked entry puts in front of the backbone.

A slot (with up to ``top_k - 1`` more), one grounded event, or, for an empty pool, the retrieved
chunks' summaries, each as a :class:`~memadapter.modeling.selection.SelectedRow`: value vectors
(prefix / cross-attention), "key: value" texts (text injection) and value token ids (copying).
"""

from __future__ import annotations

from typing import Optional

import torch

from memadapter.request_memory import RequestMemory
from memadapter.router import FALLBACK, MEMORY

from .selection import GroundedEvent, SelectedRow

WITHDRAWN = "no longer known"  # the text of a withdrawn entry (a tombstone or a retraction), for text injection


class InjectionMixin:
    """Row building, mixed into the model through :class:`~memadapter.modeling.reader.MemoryReaderMixin`;
    it uses the model's config, grounding and tokenizer."""

    def _credit_usage(self, memory: RequestMemory, b: int, idx: list[int]) -> None:
        """A read keeps a slot alive: each selected slot of row ``b`` gets an equal share of one use."""
        mem = memory.slots
        mem.usage = mem.usage.index_put((torch.full((len(idx),), b), torch.tensor(idx)),
                                        torch.full((len(idx),), 1.0 / len(idx), dtype=mem.usage.dtype), accumulate=True)

    def _slot_row(self, memory: RequestMemory, b: int, idx: list[int]) -> SelectedRow:
        """Slots ``idx`` of row ``b`` as entries "key: value" (a withdrawn one: "no longer known",
        copying ``withdrawn_text``)."""
        key_text = [memory.slots.key_text[b][m] or "" for m in idx]
        value_text = [memory.slots.value_text[b][m] for m in idx]
        return SelectedRow(memory.slots.values[b, idx],
                           [f"{k}: {WITHDRAWN if v is None else v}" for k, v in zip(key_text, value_text)],
                           [self.value_token_ids(self.config.read.withdrawn_text if v is None else v) for v in value_text],
                           MEMORY, key_text)

    def _event_row(self, event: GroundedEvent) -> SelectedRow:
        """A grounded event as a one-entry fallback row ("key: value", its value ids; a retraction
        reads "no longer known" and copies ``withdrawn_text``)."""
        value = WITHDRAWN if event.value_text is None else event.value_text
        ids = self.value_token_ids(self.config.read.withdrawn_text if event.value_text is None else event.value_text)
        return SelectedRow(event.value[None], [f"{event.key_text}: {value}"], [ids], FALLBACK, [event.key_text])

    def _chunk_row(self, memory: RequestMemory, b: int, ids: list[int]) -> SelectedRow:
        """Nothing to score: the retrieved chunks' summaries, with no value span to copy."""
        vecs = memory.indexes[b].vectors[ids] if ids else torch.zeros(0, self.config.hidden_size)
        return SelectedRow(self._chunk_values(vecs), [memory.indexes[b].text(i) or "" for i in ids],
                           [[] for _ in ids], FALLBACK)

    def value_token_ids(self, value_text: Optional[str]) -> list[int]:
        """A slot's value text -> its first ``value_tokens`` ids, tokenised as it reads mid-sentence
        (leading space), the way training takes them from the stream; [] without text or tokenizer."""
        n = self.config.value_tokens
        if n == 0 or not value_text or not value_text.strip() or self.tokenizer is None:
            return []
        return list(self.tokenizer(" " + value_text.strip(), add_special_tokens=False)["input_ids"])[:n]

    def _chunk_values(self, vecs: torch.Tensor) -> torch.Tensor:
        """Chunk summaries [k, H] -> value space [k, dv] through the grounding head's value path."""
        if vecs.shape[0] == 0:
            return torch.zeros(0, self.config.value_dim)
        w = self.grounding.value_proj.weight
        return self.grounding.value_proj(self.grounding.norm(vecs.to(w.device, w.dtype))).float().cpu()
