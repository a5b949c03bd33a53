"""Text through the frozen backbone, as the heads read it: tokenizer access, right-padded id rows,
hidden states at the read layer, word marks for whole-word spans, and ``encode_text`` (free text ->
key or value vectors, as ingest makes them). A mixin of :class:`MemAdapterForCausalLM`: it uses the
model's ``tokenizer``, ``backbone``, ``config``, ``grounding`` and ``_check_token_ids``."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from memadapter.errors import ConfigError, DTypeError, EmptyInputError
from memadapter.heads import masked_attention_pool, word_starts

from .backbones import check_pad_token, read_hidden_states


class BackboneTextMixin:
    """Helpers shared by ingest, the read and ``encode_text``."""

    def _tok(self) -> Any:
        if self.tokenizer is None:
            raise ConfigError("tokenizer: this operation needs text; pass tokenizer= to from_pretrained or set model.tokenizer")
        return self.tokenizer

    def _decode(self, ids: Sequence[int]) -> str:
        # Without a tokenizer, ids as words still give BM25 an exact-token lexical channel.
        if self.tokenizer is None:
            return " ".join(str(i) for i in ids)
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _word_marks(self, rows: list[list[int]]) -> Optional[list[list[bool]]]:
        """Per token of ``rows``: does it begin a word (for ``snap_spans``)? None when the setting is
        off or there is no tokenizer."""
        if self.tokenizer is None or not self.config.ingest.snap_spans:
            return None
        return word_starts(rows, self._decode_rows)

    def _decode_rows(self, rows: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(rows, clean_up_tokenization_spaces=False)

    def _propose(self, hidden: torch.Tensor, mask: torch.Tensor, rows: list[list[int]]) -> list:
        """The GroundingHead's candidates for ``rows`` (token lists behind ``hidden``), with the
        word marks the config asks for."""
        return self.grounding.propose(hidden, mask, self._word_marks(rows))

    def _pad_id(self) -> int:
        pad = check_pad_token(self.backbone)
        return 0 if pad is None else int(pad)

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def _right_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token lists -> ids [B, T], mask [B, T] (right padding: spans stay row-relative)."""
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, : len(r)] = 1
        return ids.to(self._device()), mask.to(self._device())

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return read_hidden_states(self.backbone, ids, mask, self.config.read_layer)

    def _mean(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over tokens: [B, T, H] -> [B, H]."""
        return masked_attention_pool(hidden, torch.zeros(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device), mask.bool())

    @torch.no_grad()
    def encode_text(self, texts: list[str], kind: str) -> torch.Tensor:
        """Texts -> key vectors [N, dk] (unit norm) or value vectors [N, dv], as ingest makes them."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise DTypeError(f"texts: expected a list of str, got {type(texts).__name__}")
        if not texts:
            raise EmptyInputError("texts: the list is empty")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise DTypeError(f"texts[{bad}]: expected a str, got {type(texts[bad]).__name__}")
        if kind not in ("key", "value"):
            raise ConfigError(f"kind: expected 'key' or 'value', got {kind!r}")
        rows = [self._tok()(t, add_special_tokens=False)["input_ids"] for t in texts]
        if any(len(r) == 0 for r in rows):
            raise EmptyInputError("texts: a text has no tokens")
        self._check_token_ids("texts (the tokenizer's ids)", torch.tensor(sum(rows, []), dtype=torch.long))
        ids, mask = self._right_pad(rows)
        pooled = self.grounding.norm(self._mean(self._hidden(ids, mask), mask))  # [N, H]
        if kind == "key":
            # A free-text key ("Alice's city") names entity and relation at once: it fills both halves.
            return self.grounding.key(pooled, pooled).float().cpu()
        return self.grounding.value_proj(pooled).float().cpu()
