"""Plain-loop reference of ``SlotMemory``: loops over requests b, candidates n and slots m.

It shares the constructor, input validation and the trivial edits (forget, protect, snapshot) with
``SlotMemory`` and re-implements the decisions and arithmetic of write, read, match and retention
one scalar at a time, so the tests can drive both with the same random operations and compare every
state tensor and result. It is slow on purpose; use it only to check the vectorised path.

Example:
    >>> import torch
    >>> from memadapter.slots_reference import ReferenceSlotMemory
    >>> ref = ReferenceSlotMemory(num_slots=2, key_dim=4, value_dim=4)
    >>> ref.write(torch.eye(4)[:1], torch.eye(4)[1:2]).action.tolist()
    [[1]]
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .bm25 import word_overlap
from .slots import (
    AUX_BLOCKED, AUX_CONFLICT, AUX_HITS, AUX_OVERWRITES, EventType, ReadResult, SlotMemory, WriteAction,
    _Candidates,
)


def _cosine(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return torch.dot(x, y) / (max(float(x.norm()), eps) * max(float(y.norm()), eps))


class ReferenceSlotMemory(SlotMemory):
    """Same semantics as ``SlotMemory``, written as loops (see module docstring)."""

    batched_writes = False  # candidates one at a time, through the loops below

    # ------------------------------------------------------------- scalar helpers
    def _recency(self, b: int, m: int) -> float:
        return 1.0 / (1.0 + max(int(self.step[b]) - int(self.time[b, m]), 0))

    def retention(self) -> torch.Tensor:
        w_c, w_u, w_r, w_i = self.retention_weights
        out = torch.zeros_like(self.confidence)
        for b in range(self.batch_size):
            for m in range(self.num_slots):
                u = float(self.usage[b, m])
                out[b, m] = (w_c * float(self.confidence[b, m]) + w_u * u / (1.0 + u)
                             + w_r * self._recency(b, m) + w_i * float(self.importance[b, m]))
        return out

    def _set_aux(self, b: int, m: int, feature: int, value: float) -> None:
        if feature < self.aux_dim:
            self.aux[b, m, feature] = value

    # ------------------------------------------------------------- write
    def _write_one(self, cand: _Candidates, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        action = torch.full((self.batch_size,), int(WriteAction.SKIPPED), dtype=torch.long)
        slot = torch.full((self.batch_size,), -1, dtype=torch.long)
        for b in range(self.batch_size):
            if not bool(cand.mask[b, n]):
                continue
            self.step[b] += 1
            act, m = self._write_row(cand, b, n)
            action[b], slot[b] = int(act), m
        return action.to(self.device), slot.to(self.device)

    def _best_match(self, b: int, key: torch.Tensor, key_text: Optional[str] = None) -> tuple[float, int]:
        best, best_m = -math.inf, -1
        for m in range(self.num_slots):
            if bool(self.occupied[b, m]):
                cos = float(torch.dot(self.keys[b, m], key))
                if key_text and self.update_name_weight > 0:
                    cos += self.update_name_weight * word_overlap(key_text, [self.key_text[b][m]])[0]
                if cos > best:
                    best, best_m = cos, m
        return best, best_m

    def _write_row(self, cand: _Candidates, b: int, n: int) -> tuple[WriteAction, int]:
        key, value, ev = cand.keys[b, n], cand.values[b, n], int(cand.event[b, n])
        if float(cand.p_write[b, n]) < self.write_threshold or ev == EventType.IRRELEVANT:
            return WriteAction.SKIPPED, -1
        revises = ev in (EventType.UPDATE, EventType.RETRACT)
        key_text = cand.key_text[b][n] if revises and cand.key_text is not None else None
        best, m = self._best_match(b, key, key_text)
        bar = self.update_match_threshold if revises else self.match_threshold
        matched = m >= 0 and best >= bar
        if ev == EventType.RETRACT:
            if not matched:
                return self._place_row(cand, b, n) if self.tombstones else (WriteAction.SKIPPED, -1)
            if not self.tombstones:
                self._clear_slots(self._one(b, m))
                return WriteAction.RETRACTED, m
            self._overwrite_row(cand, b, n, m, float(_cosine(self.values[b, m], value)))
            self.retracted[b, m] = True
            self.value_text[b][m] = None
            return WriteAction.RETRACTED, m
        if matched:
            vcos = float(_cosine(self.values[b, m], value))
            agree = vcos >= self.value_threshold and not bool(self.retracted[b, m])
            prot = bool(self.protected[b, m])
            if ev == EventType.UPDATE or (not agree and not prot):
                self._overwrite_row(cand, b, n, m, vcos)
                return WriteAction.OVERWRITTEN, m
            if agree and not prot:
                self._reinforce_row(cand, b, n, m)
                return WriteAction.REINFORCED, m
            if not agree:  # protected: record the rejected conflict, change nothing else
                if self.aux_dim > AUX_BLOCKED:
                    self.aux[b, m, AUX_BLOCKED] += 1.0
                self._set_aux(b, m, AUX_CONFLICT, 1.0 - vcos)
            return WriteAction.SKIPPED, -1
        return self._place_row(cand, b, n)

    def _one(self, b: int, m: int) -> torch.Tensor:
        sel = torch.zeros_like(self.occupied)
        sel[b, m] = True
        return sel

    def _place_row(self, cand: _Candidates, b: int, n: int) -> tuple[WriteAction, int]:
        for m in range(self.num_slots):
            if not bool(self.occupied[b, m]):
                self._fill_row(cand, b, n, m)
                return WriteAction.ALLOCATED, m
        retention = self.retention()
        victim, low = -1, math.inf
        for m in range(self.num_slots):
            if not bool(self.protected[b, m]) and float(retention[b, m]) < low:
                victim, low = m, float(retention[b, m])
        if victim < 0:
            return WriteAction.DROPPED, -1
        self._clear_slots(self._one(b, victim))
        self._fill_row(cand, b, n, victim)
        return WriteAction.EVICTED, victim

    def _texts(self, cand: _Candidates, b: int, n: int, m: int, *, key: bool, value: bool) -> None:
        kt = None if cand.key_text is None else cand.key_text[b][n]
        vt = None if cand.value_text is None else cand.value_text[b][n]
        if kt is not None and (key or self.key_text[b][m] is None):
            self.key_text[b][m] = kt
        if vt is not None and (value or self.value_text[b][m] is None):
            self.value_text[b][m] = vt

    def _fill_row(self, cand: _Candidates, b: int, n: int, m: int) -> None:
        self.keys[b, m], self.values[b, m] = cand.keys[b, n], cand.values[b, n]
        self.confidence[b, m], self.importance[b, m] = cand.p_write[b, n], cand.importance[b, n]
        self.hits[b, m], self.version[b, m], self.time[b, m] = 1.0, 1, self.step[b]
        self.occupied[b, m], self.protected[b, m] = True, cand.protect[b, n]
        self.retracted[b, m] = int(cand.event[b, n]) == EventType.RETRACT
        self.chunk_id[b, m], self.span[b, m] = cand.chunk_id[b, n], cand.span[b, n]
        self._set_aux(b, m, AUX_HITS, 1.0)
        self._texts(cand, b, n, m, key=True, value=True)

    def _overwrite_row(self, cand: _Candidates, b: int, n: int, m: int, vcos: float) -> None:
        self.values[b, m] = cand.values[b, n]
        self.version[b, m] += 1
        self.confidence[b, m] = cand.p_write[b, n]
        self.importance[b, m] = max(float(self.importance[b, m]), float(cand.importance[b, n]))
        self.hits[b, m], self.time[b, m] = 1.0, self.step[b]
        self.protected[b, m] = bool(self.protected[b, m]) or bool(cand.protect[b, n])
        self.retracted[b, m] = False
        self.chunk_id[b, m], self.span[b, m] = cand.chunk_id[b, n], cand.span[b, n]
        if self.aux_dim > AUX_OVERWRITES:
            self.aux[b, m, AUX_OVERWRITES] += 1.0
        self._set_aux(b, m, AUX_CONFLICT, 1.0 - vcos)
        self._set_aux(b, m, AUX_HITS, 1.0)
        self._texts(cand, b, n, m, key=False, value=True)

    def _reinforce_row(self, cand: _Candidates, b: int, n: int, m: int) -> None:
        a = self.alpha if self.alpha is not None else 1.0 / (float(self.hits[b, m]) + 1.0)
        self.values[b, m] = (1 - a) * self.values[b, m] + a * cand.values[b, n]
        mixed = (1 - a) * self.keys[b, m] + a * cand.keys[b, n]
        self.keys[b, m] = mixed / max(float(mixed.norm()), 1e-12)
        c, p = float(self.confidence[b, m]), float(cand.p_write[b, n])
        self.confidence[b, m] = 1 - (1 - c) * (1 - a * p)
        self.importance[b, m] = max(float(self.importance[b, m]), float(cand.importance[b, n]))
        self.hits[b, m] += 1.0
        self.time[b, m] = self.step[b]
        self.protected[b, m] = bool(self.protected[b, m]) or bool(cand.protect[b, n])
        self._set_aux(b, m, AUX_HITS, float(self.hits[b, m]))
        self._texts(cand, b, n, m, key=False, value=False)

    # ------------------------------------------------------------- match and read
    def _match(self, q: torch.Tensor, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
        B, Q = q.shape[0], q.shape[1]
        best = torch.full((B, Q), -1.0, dtype=self.dtype, device=self.device)
        slot = torch.full((B, Q), -1, dtype=torch.long, device=self.device)
        for b in range(B):
            for i in range(Q):
                for m in range(self.num_slots):
                    if bool(self.occupied[b, m]):
                        s = float(torch.dot(q[b, i], self.keys[b, m])) + (0.0 if bias is None else float(bias[b, i, m]))
                        if slot[b, i] < 0 or s > float(best[b, i]):
                            best[b, i], slot[b, i] = s, m
        return best, slot

    def _row_scores(self, b: int, query: torch.Tensor, bias_row=None) -> list[tuple[float, int]]:
        """(score, slot) of every occupied slot of request b (bias_row [M]: evidence per slot)."""
        out = []
        for m in range(self.num_slots):
            if bool(self.occupied[b, m]):
                u = float(self.usage[b, m])
                s = (float(torch.dot(query, self.keys[b, m])) + (0.0 if bias_row is None else float(bias_row[m]))
                     + self.read_lambda * float(self.confidence[b, m])
                     + self.read_gamma * u / (1.0 + u) + self.recency_beta * self._recency(b, m))
                out.append((s, m))
        return out

    def read(self, query: torch.Tensor, top_k: int, *, update_usage=True, bias=None) -> ReadResult:
        q = self._check_query(query)
        K = self._check_top_k(top_k)
        credit = self._check_update_usage(update_usage)
        bias = self._check_bias(bias, q)
        B, Q, dv = q.shape[0], q.shape[1], self.value_dim
        idx = torch.full((B, Q, K), -1, dtype=torch.long)
        scores = torch.full((B, Q, K), -math.inf, dtype=self.dtype)
        weights = torch.zeros(B, Q, K, dtype=self.dtype)
        values = torch.zeros(B, Q, K, dv, dtype=self.dtype)
        usage_add = torch.zeros_like(self.usage)
        for b in range(B):
            for i in range(Q):
                ranked = sorted(self._row_scores(b, q[b, i], bias[b, i]), key=lambda sm: -sm[0])[:K]  # stable
                if not ranked:
                    continue
                top = ranked[0][0]
                total = sum(math.exp(s - top) for s, _ in ranked)
                for j, (s, m) in enumerate(ranked):
                    w = math.exp(s - top) / total
                    idx[b, i, j], scores[b, i, j], weights[b, i, j] = m, s, w
                    values[b, i, j] = self.values[b, m]
                    if bool(credit[b]):
                        usage_add[b, m] += w
        best, _ = self._match(q, bias)
        self.usage = self.usage + usage_add
        return ReadResult(indices=idx, scores=scores, weights=weights, values=values,
                          valid=idx >= 0, match=best)
