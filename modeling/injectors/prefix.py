"""Soft prefix injection: each selected slot becomes virtual token embeddings before the text.

The prefix enters through ``inputs_embeds``, never ``past_key_values``: the KV cache holds
ordinary keys/values of the prefix positions, so it works with and without the cache, with
batches, left padding, greedy decoding and sampling.

Layout with left padding (the choice documented and tested here): the prefix is placed directly
before the text, and :meth:`SoftPrefixInjector.prepend` then moves every masked position (text
pads *and* invalid slots) to the far left, keeping the order of the rest. Each row is then an
ordinary left-padded sequence ``[pads][valid prefix][text]``; because transformers derives
position ids from the attention mask, such a row generates exactly what the same row without any
padding does.

Example:
    >>> inj = SoftPrefixInjector(value_dim=8, hidden_size=16, tokens_per_slot=2)
    >>> prefix, pmask = inj(torch.randn(1, 3, 8), torch.tensor([[True, False, True]]))
    >>> prefix.shape, pmask.tolist()
    (torch.Size([1, 6, 16]), [[1, 1, 0, 0, 1, 1]])
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from memadapter._validate import check_positive_int, check_tensor
from memadapter.errors import ConfigError, ShapeError

from ..backbones import embed_tokens, token_embedding_rms
from .base import _EPS, Injector, Prepared, built_module, check_mask, rms

if TYPE_CHECKING:
    from ..selection import Selection


class SoftPrefixInjector(nn.Module):
    """Active slot values -> ``tokens_per_slot`` virtual token embeddings each.

    The projection is RMS-normalised and multiplied by a learnable scale that starts at
    ``embed_rms``: pass :func:`memadapter.modeling.backbones.token_embedding_rms` of the backbone
    so that the prefix starts at the magnitude of real token embeddings. That matters for
    Gemma, whose embeddings carry sqrt(H) and whose decoder does not rescale ``inputs_embeds``.

    Example:
        >>> inj = SoftPrefixInjector(value_dim=8, hidden_size=16)
        >>> prefix, pmask = inj(torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))
        >>> prefix.shape, pmask.shape
        (torch.Size([2, 3, 16]), torch.Size([2, 3]))
    """

    def __init__(self, value_dim: int, hidden_size: int, tokens_per_slot: int = 1, embed_rms: float = 1.0) -> None:
        super().__init__()
        self.value_dim = check_positive_int("value_dim", value_dim)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.tokens_per_slot = check_positive_int("tokens_per_slot", tokens_per_slot)
        if not (isinstance(embed_rms, (int, float)) and math.isfinite(embed_rms) and embed_rms > 0):
            raise ConfigError(f"embed_rms: must be a finite number > 0, got {embed_rms!r}")
        self.proj = nn.Linear(value_dim, hidden_size * tokens_per_slot)
        self.scale = nn.Parameter(torch.tensor(float(embed_rms)))

    def _check(self, values: object, valid: object, value_embeds: object = None, value_mask: object = None):
        values = check_tensor("values", values, ndim=3, last_dim=self.value_dim, nonempty=False)
        valid = check_mask("valid", valid, tuple(values.shape[:2]))
        if value_embeds is None:
            if value_mask is not None:
                raise ShapeError("value_mask: given without value_embeds")
            return values, valid, None, None
        value_embeds = check_tensor("value_embeds", value_embeds, ndim=4, last_dim=self.hidden_size, nonempty=False)
        if tuple(value_embeds.shape[:2]) != tuple(values.shape[:2]):
            raise ShapeError(f"value_embeds: expected [B, K] = {tuple(values.shape[:2])} leading dims, "
                             f"got {tuple(value_embeds.shape)}")
        return values, valid, value_embeds, check_mask("value_mask", value_mask, tuple(value_embeds.shape[:3]))

    def forward(self, values: torch.Tensor, valid: torch.Tensor, value_embeds: Optional[torch.Tensor] = None,
                value_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """values [B, K, dv], valid [B, K] bool -> prefix embeds [B, K*t, H], prefix mask [B, K*t] (long).

        With ``value_embeds`` [B, K, L, H] (the backbone's own embeddings of each slot's value
        tokens) and ``value_mask`` [B, K, L], every slot contributes its ``t`` virtual tokens then
        its value tokens: [B, K*(t+L), H]. A pooled vector names the value; the tokens let the
        frozen model copy it exactly.
        """
        values, valid, value_embeds, value_mask = self._check(values, valid, value_embeds, value_mask)
        b, k, _ = values.shape
        t, h = self.tokens_per_slot, self.hidden_size
        x = self.proj(values.to(self.proj.weight.dtype)).view(b, k, t, h)  # [B, K, t, H]
        x = x / rms(x) * self.scale
        mask = valid[:, :, None].expand(b, k, t)  # [B, K, t]
        if value_embeds is not None:
            x = torch.cat([x, value_embeds.to(x.dtype)], dim=2)  # [B, K, t+L, H]
            mask = torch.cat([mask, value_mask & valid[:, :, None]], dim=2)  # [B, K, t+L]
        x = x * mask[..., None].to(x.dtype)  # masked positions become exact zeros
        n = x.shape[2]
        return x.reshape(b, k * n, h), mask.reshape(b, k * n).long()  # slot-major [B, K*n, H], [B, K*n]

    def forward_reference(self, values: torch.Tensor, valid: torch.Tensor, value_embeds: Optional[torch.Tensor] = None,
                          value_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain-loop reference for :meth:`forward` (one slot, one virtual token at a time)."""
        values, valid, value_embeds, value_mask = self._check(values, valid, value_embeds, value_mask)
        b, k, _ = values.shape
        t, h = self.tokens_per_slot, self.hidden_size
        n = t + (0 if value_embeds is None else value_embeds.shape[2])
        prefix = values.new_zeros(b, k * n, h, dtype=self.proj.weight.dtype)
        mask = torch.zeros(b, k * n, dtype=torch.long, device=values.device)
        for i in range(b):
            for j in range(k):
                if not valid[i, j]:
                    continue
                flat = self.proj(values[i, j].to(self.proj.weight.dtype))  # [t*H]
                for s in range(t):
                    tok = flat[s * h:(s + 1) * h]
                    prefix[i, j * n + s] = tok / tok.pow(2).mean().add(_EPS).sqrt() * self.scale
                    mask[i, j * n + s] = 1
                for s in range(n - t):
                    if value_mask[i, j, s]:
                        prefix[i, j * n + t + s] = value_embeds[i, j, s]
                        mask[i, j * n + t + s] = 1
        return prefix, mask

    @staticmethod
    def prepend(
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix: torch.Tensor,
        prefix_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[prefix; text] per row, then left-aligned: every masked position moves to the left.

        inputs_embeds [B, T, H], attention_mask [B, T], prefix [B, P, H], prefix_mask [B, P]
        -> inputs_embeds [B, P+T, H], attention_mask [B, P+T] (dtype of ``attention_mask``),
        ready for ``model.generate(inputs_embeds=..., attention_mask=...)``.
        """
        embeds, mask = _concat_checked(inputs_embeds, attention_mask, prefix, prefix_mask)
        # Stable sort on the mask puts pads first and keeps the order within pads and within tokens.
        order = torch.sort(mask.long(), dim=1, stable=True).indices  # [B, P+T]
        embeds = torch.gather(embeds, 1, order[:, :, None].expand_as(embeds))  # [B, P+T, H]
        return embeds, torch.gather(mask, 1, order).to(attention_mask.dtype)

    @staticmethod
    def prepend_reference(
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix: torch.Tensor,
        prefix_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain-loop reference for :meth:`prepend`."""
        embeds, mask = _concat_checked(inputs_embeds, attention_mask, prefix, prefix_mask)
        rows, masks = [], []
        for i in range(embeds.shape[0]):
            pads = [p for p in range(embeds.shape[1]) if not mask[i, p]]
            toks = [p for p in range(embeds.shape[1]) if mask[i, p]]
            rows.append(embeds[i, pads + toks])
            masks.append(mask[i, pads + toks])
        return torch.stack(rows), torch.stack(masks).to(attention_mask.dtype)


def _concat_checked(
    inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor, prefix_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs_embeds = check_tensor("inputs_embeds", inputs_embeds, ndim=3, finite=False)
    b, t, h = inputs_embeds.shape
    text_mask = check_mask("attention_mask", attention_mask, (b, t))
    prefix = check_tensor("prefix", prefix, ndim=3, last_dim=h, nonempty=False)
    if prefix.shape[0] != b:
        raise ShapeError(f"prefix: batch {prefix.shape[0]} does not match inputs_embeds batch {b}")
    pmask = check_mask("prefix_mask", prefix_mask, tuple(prefix.shape[:2]))
    embeds = torch.cat([prefix.to(inputs_embeds.dtype), inputs_embeds], dim=1)  # [B, P+T, H]
    return embeds, torch.cat([pmask, text_mask], dim=1).long()  # [B, P+T]


class PrefixInjector(Injector):
    """``injection="prefix"``: a :class:`SoftPrefixInjector` (model attribute ``injector``) turns the
    selected values into virtual tokens (plus each value's own token embeddings, with
    ``value_tokens``) placed before the text; logits are gathered back to the text positions."""

    def build(self, model: nn.Module, config: Any, hidden: int) -> dict[str, nn.Module]:
        rms0 = token_embedding_rms(model.backbone)
        return {"injector": SoftPrefixInjector(config.value_dim, hidden, config.prefix_tokens_per_slot, embed_rms=rms0)}

    def prepare(self, model: nn.Module, sel: "Selection", input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> Prepared:
        injector = built_module(model, "injector")
        w = injector.proj.weight
        value_embeds, value_mask = model._value_embeds(sel)
        prefix, pmask = injector(sel.values.to(w.device, w.dtype), sel.valid.to(w.device), value_embeds, value_mask)
        embeds = embed_tokens(model.backbone, input_ids)
        full_embeds, full_mask = injector.prepend(embeds, attention_mask, prefix, pmask)
        # Same stable sort as prepend: where did each original text position go?
        order = torch.sort(torch.cat([pmask, attention_mask.long()], 1), dim=1, stable=True).indices  # [B, P+T]
        where = torch.argsort(order, dim=1)[:, prefix.shape[1]:]  # [B, T]
        return Prepared({"inputs_embeds": full_embeds, "attention_mask": full_mask}, where)
