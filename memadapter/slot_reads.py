"""The read path of ``SlotMemory``: ``match``, ``scores`` and the top-K ``read``.

Read score = q.k + bias + lambda * c + gamma * u/(1+u) + b(tau): the key match plus ``read_bias``
(defined with ``retention`` in ``memadapter.slots``). ``SlotReadsMixin`` is mixed into
``SlotMemory`` and works on its keys, values, usage and occupancy; only ``read`` changes the state
(it credits usage to the slots it read).

Example:
    >>> import torch
    >>> from memadapter.slots import SlotMemory
    >>> mem = SlotMemory(num_slots=4, key_dim=4, value_dim=4)
    >>> _ = mem.write(torch.eye(4)[None, :2], torch.eye(4)[None, 2:])
    >>> best, slot = mem.match(torch.eye(4)[1:2])
    >>> round(float(best), 4), slot.tolist()
    (1.0, [[1]])
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ._validate import check_positive_int, check_tensor
from .errors import CapacityError, NonFiniteError, ShapeError
from .slot_inputs import _check_side, normalize_keys
from .slot_types import ReadResult


class SlotReadsMixin:
    """Queries against the slots, mixed into ``SlotMemory`` (see module docstring)."""

    def _check_query(self, query: Any, name: str = "query") -> torch.Tensor:
        """Validate and normalise a query; returns [B, Q, dk]."""
        query = check_tensor(name, query, ndim=(2, 3), last_dim=self._key_dim)
        if query.shape[0] != self._batch_size:
            raise ShapeError(f"{name}: expected batch size {self._batch_size}, got shape {tuple(query.shape)}")
        if query.dim() == 2:
            query = query.unsqueeze(1)  # [B, 1, dk]
        return normalize_keys(query.to(self.device, self.dtype), name)

    def _check_top_k(self, top_k: Any) -> int:
        top_k = check_positive_int("top_k", top_k)
        if top_k > self._num_slots:
            raise CapacityError(f"top_k: {top_k} exceeds num_slots {self._num_slots}")
        return top_k

    def _check_bias(self, bias: Any, q: torch.Tensor) -> torch.Tensor:
        """None, [B, M] or [B, Q, M] finite evidence per slot -> [B, Q, M] (zeros for None)."""
        B, Q, M = q.shape[0], q.shape[1], self._num_slots
        if bias is None:
            return torch.zeros(B, Q, M, dtype=self.dtype, device=self.device)
        bias = check_tensor("bias", bias, ndim=(2, 3))
        if bias.dim() == 2:
            bias = bias.unsqueeze(1)  # [B, M] -> [B, 1, M]
        if bias.shape[0] != B or bias.shape[2] != M or bias.shape[1] not in (1, Q):
            raise ShapeError(f"bias: expected [B, M] = {(B, M)} or [B, Q, M] = {(B, Q, M)}, got {tuple(bias.shape)}")
        if not bool(torch.isfinite(bias).all()):
            raise NonFiniteError("bias: contains NaN or inf")
        return bias.to(self.device, self.dtype).expand(B, Q, M)

    def match(self, query: torch.Tensor, bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """No side effects: (best cosine [B, Q], slot [B, Q]) over occupied slots; (-1.0, -1) if none.

        ``bias`` [B, M] or [B, Q, M]: evidence added to every slot's cosine (e.g. the words a
        question shares with the slot's key text); the read scores take the same bias."""
        q = self._check_query(query)
        return self._match(q, self._check_bias(bias, q))

    def _match(self, q: torch.Tensor, bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        sims = torch.einsum("bqd,bmd->bqm", q, self.keys)
        sims = sims if bias is None else sims + bias
        sims = sims.masked_fill(~self.occupied[:, None, :], -math.inf)
        best, slot = sims.max(dim=-1)  # [B, Q]
        none = ~self.occupied.any(dim=1)[:, None].expand_as(best)
        return best.masked_fill(none, -1.0), slot.masked_fill(none, -1)

    def scores(self, query: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, Q, M] read scores q.k + bias + lambda*c + gamma*u/(1+u) + b(tau); -inf on free slots."""
        q = self._check_query(query)
        return self._scores(q, self._check_bias(bias, q))

    def _scores(self, q: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        s = torch.einsum("bqd,bmd->bqm", q, self.keys) + bias + self.read_bias()[:, None, :]
        return s.masked_fill(~self.occupied[:, None, :], -math.inf)

    def _check_update_usage(self, update_usage: Any) -> torch.Tensor:
        """bool or [B] bool tensor -> [B] bool: the rows whose usage a read credits."""
        if isinstance(update_usage, bool):
            return torch.full((self._batch_size,), update_usage, dtype=torch.bool, device=self.device)
        return _check_side("update_usage", update_usage, (self._batch_size,), "bool", self.device)

    def read(self, query: torch.Tensor, top_k: int, *, update_usage: bool | torch.Tensor = True,
             bias: Optional[torch.Tensor] = None) -> ReadResult:
        """Top-K active set per query, softmax weights over it; usage += weight of each read slot.

        query [B, dk] or [B, Q, dk]; results are [B, Q, K] (Q = 1 for a 2-D query).
        update_usage: bool, or [B] bool to credit usage only in some rows (e.g. those a router
        sends to the memory branch); bias as in :meth:`match`. Raises CapacityError if top_k > num_slots.
        """
        q = self._check_query(query)
        K = self._check_top_k(top_k)
        credit = self._check_update_usage(update_usage)  # [B]
        bias = self._check_bias(bias, q)  # [B, Q, M]
        B, Q = q.shape[0], q.shape[1]
        # a stable sort keeps ties (and the -inf of free slots) in slot order: deterministic active sets
        order = torch.sort(self._scores(q, bias), dim=-1, descending=True, stable=True)
        scores, idx = order.values[..., :K], order.indices[..., :K]  # [B, Q, K]
        valid = torch.isfinite(scores)
        top = scores.masked_fill(~valid, -math.inf).amax(dim=-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        expo = torch.where(valid, torch.exp(scores - top), torch.zeros_like(scores))
        weights = expo / expo.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(self.dtype).tiny)
        idx = idx.masked_fill(~valid, -1)
        gather = idx.clamp(min=0).reshape(B, Q * K)  # [B, Q*K]
        values = self.values.gather(1, gather.unsqueeze(-1).expand(B, Q * K, self._value_dim))
        values = values.reshape(B, Q, K, self._value_dim).masked_fill(~valid.unsqueeze(-1), 0.0)
        best, _ = self._match(q, bias)
        if bool(credit.any()):
            added = (weights * credit[:, None, None]).reshape(B, Q * K)
            self.usage = self.usage.scatter_add(1, gather, added)
        return ReadResult(indices=idx, scores=scores, weights=weights, values=values, valid=valid, match=best)

