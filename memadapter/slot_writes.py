"""The write path of ``SlotMemory``: ``write`` applies candidates in order n = 0..N-1, each decided
against the state its predecessors left (the rules are in ``memadapter.slots``' docstring).

``SlotWritesMixin`` is mixed into ``SlotMemory`` and works on its state tensors, thresholds,
``retention`` and ``_clear_slots``. A run of candidates that do not interact is handed to the
batched planner (``memadapter.slot_runs``, same results bit for bit); every other candidate goes
through ``_write_one``: ``_decide`` picks each row's action, the edits below apply it.

Example:
    >>> import torch
    >>> from memadapter.slots import SlotMemory, WriteAction
    >>> mem = SlotMemory(num_slots=2, key_dim=4, value_dim=4)
    >>> keys = torch.eye(4)[None, [0, 1, 2]]   # three new facts for two slots
    >>> [WriteAction(a).name for a in mem.write(keys, keys).action[0].tolist()]
    ['ALLOCATED', 'ALLOCATED', 'EVICTED']
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .bm25 import word_overlap
from .slot_inputs import prepare_candidates
from .slot_types import (
    AUX_BLOCKED, AUX_CONFLICT, AUX_HITS, AUX_OVERWRITES, EventType, WriteAction, WriteResult, _Candidates,
)


class SlotWritesMixin:
    """``write`` and the one-candidate-at-a-time path, mixed into ``SlotMemory`` (see module docstring)."""

    # Apply runs of candidates that do not interact in one step (``_run_length``); False: one at a
    # time, the plain order the rules are written in (the reference path, and the check in tests).
    batched_writes: bool = True

    def write(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        p_write: Optional[torch.Tensor] = None,
        *,
        event: Optional[torch.Tensor] = None,
        importance: Optional[torch.Tensor] = None,
        protect: Optional[torch.Tensor] = None,
        chunk_id: Optional[torch.Tensor] = None,
        span: Optional[torch.Tensor] = None,
        key_text: Optional[list] = None,
        value_text: Optional[list] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> WriteResult:
        """Apply N candidates per request in order n = 0..N-1 (vectorised over the batch).

        keys [B, N, dk] or [B, dk]; values [B, N, dv]; p_write [B, N] in [0, 1] (default 1);
        event [B, N] long EventType, -1 or None: infer; importance [B, N] in [0, 1] (default 0);
        protect [B, N] bool: protect the written slot; chunk_id [B, N], span [B, N, 2] long
        provenance; key_text/value_text B lists of N str|None; mask [B, N] bool (False: ignore).
        Every input is validated before anything changes.
        """
        cand = prepare_candidates(self, keys, values, p_write, event, importance, protect, chunk_id, span,
                                  key_text, value_text, mask)
        actions, slots = [], []
        n, N = 0, cand.keys.shape[1]
        while n < N:
            run, decided = self._run_length(cand, n) if self.batched_writes else (0, {})
            if run:  # candidates that do not interact: all at once
                action, slot = self._apply_run(cand, n, decided)
            else:  # the next candidate depends on an earlier one (or batching is off): on its own
                action, slot = (x[:, None] for x in self._write_one(cand, n))
            actions.append(action)
            slots.append(slot)
            n += action.shape[1]
        B = self._batch_size
        if not actions:
            return WriteResult(action=torch.zeros(B, 0, dtype=torch.long), slot=torch.zeros(B, 0, dtype=torch.long))
        return WriteResult(action=torch.cat(actions, dim=1), slot=torch.cat(slots, dim=1))

    def _decide(self, cand: _Candidates, n: int) -> dict[str, torch.Tensor]:
        """Which action each row takes for candidate n ([B] masks), given the current state."""
        k, v, ev = cand.keys[:, n], cand.values[:, n], cand.event[:, n]  # [B, dk], [B, dv], [B]
        rows = torch.arange(self._batch_size, device=self.device)
        retract, update = ev == EventType.RETRACT, ev == EventType.UPDATE
        sims = torch.einsum("bmd,bd->bm", self.keys, k)  # [B, M]
        if self.update_name_weight > 0 and cand.key_text is not None:
            sims = sims + self.update_name_weight * self._name_overlap(cand, n, (retract | update) & cand.mask[:, n])
        sims = sims.masked_fill(~self.occupied, -math.inf)
        best, best_m = sims.max(dim=1)  # [B]
        matched = best >= torch.where(retract | update, self.update_match_threshold, self.match_threshold)
        vcos = F.cosine_similarity(self.values[rows, best_m], v, dim=-1, eps=1e-12)  # [B]
        agree = (vcos >= self.value_threshold) & ~self.retracted[rows, best_m]
        slot_protected = self.protected[rows, best_m]
        gate = cand.mask[:, n] & (cand.p_write[:, n] >= self.write_threshold) & (ev != EventType.IRRELEVANT)
        inferred_hit = gate & matched & ~retract & ~update
        free = ~self.occupied
        evictable = self.occupied & ~self.protected
        evict_m = self.retention().masked_fill(~evictable, math.inf).argmin(dim=1)
        want_new = gate & ~matched & (~retract | self.tombstones)  # an unmatched tombstone is placed
        return {
            "matched_slot": best_m, "vcos": vcos,
            "retract": gate & matched & retract,
            "overwrite": (gate & matched & update) | (inferred_hit & ~agree & ~slot_protected),
            "reinforce": inferred_hit & agree & ~slot_protected,
            "blocked": inferred_hit & slot_protected & ~agree,
            "allocate": want_new & free.any(dim=1),
            "evict": want_new & ~free.any(dim=1) & evictable.any(dim=1),
            "drop": want_new & ~free.any(dim=1) & ~evictable.any(dim=1),
            "new_slot": torch.where(free.any(dim=1), free.long().argmax(dim=1), evict_m),
        }

    def _name_overlap(self, cand: _Candidates, n: int, rows: torch.Tensor) -> torch.Tensor:
        """[B, M]: word overlap of candidate n's key text with each slot's, in the ``rows`` [B] given."""
        out = torch.zeros(self._batch_size, self._num_slots, dtype=self.dtype, device=self.device)
        for b in rows.nonzero().flatten().tolist():
            if cand.key_text[b][n]:
                out[b] = torch.tensor(word_overlap(cand.key_text[b][n], self.key_text[b]), dtype=self.dtype)
        return out

    def _write_one(self, cand: _Candidates, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply candidate n to every row; returns (action [B], slot [B])."""
        self.step = self.step + cand.mask[:, n].long()  # the clock ticks before anything is decided
        d = self._decide(cand, n)
        M = self._num_slots
        on_match = F.one_hot(d["matched_slot"], M).bool()  # [B, M]
        on_new = F.one_hot(d["new_slot"], M).bool()
        # branches are skipped when no row takes them: most candidates take one or two
        if bool(d["blocked"].any()):
            self._aux_add(AUX_BLOCKED, on_match & d["blocked"][:, None], 1.0)
            self._aux_set(AUX_CONFLICT, on_match & d["blocked"][:, None], 1.0 - d["vcos"][:, None])
        if bool(d["reinforce"].any()):
            self._reinforce(on_match & d["reinforce"][:, None], cand, n)
        if bool(d["overwrite"].any()):
            self._overwrite(on_match & d["overwrite"][:, None], cand, n, d["vcos"])
        if bool(d["retract"].any()):
            if self.tombstones:
                self._withdraw(on_match & d["retract"][:, None], cand, n, d["vcos"])
            else:
                self._clear_slots(on_match & d["retract"][:, None])
        if bool((d["allocate"] | d["evict"]).any()):
            new_sel = on_new & (d["allocate"] | d["evict"])[:, None]
            self._clear_slots(new_sel)  # an evicted slot starts from scratch
            self._fill(new_sel, cand, n)
        action = torch.full_like(d["matched_slot"], int(WriteAction.SKIPPED))
        slot = torch.full_like(d["matched_slot"], -1)
        for name, act, where in (("reinforce", WriteAction.REINFORCED, "matched_slot"),
                                 ("overwrite", WriteAction.OVERWRITTEN, "matched_slot"),
                                 ("retract", WriteAction.RETRACTED, "matched_slot"),
                                 ("allocate", WriteAction.ALLOCATED, "new_slot"),
                                 ("evict", WriteAction.EVICTED, "new_slot")):
            action = torch.where(d[name], int(act), action)
            slot = torch.where(d[name], d[where], slot)
        action = torch.where(d["drop"], int(WriteAction.DROPPED), action)
        return action, slot

    # ----------------------------------------------------------------- edits of one candidate
    def _aux_set(self, feature: int, sel: torch.Tensor, value: torch.Tensor | float) -> None:
        if feature < self.aux_dim:
            col = self.aux[..., feature]
            self.aux[..., feature] = torch.where(sel, torch.as_tensor(value, dtype=self.dtype), col)

    def _aux_add(self, feature: int, sel: torch.Tensor, value: float) -> None:
        if feature < self.aux_dim:
            self.aux[..., feature] = torch.where(sel, self.aux[..., feature] + value, self.aux[..., feature])

    def _alpha(self) -> torch.Tensor:
        """[B, M] step size of the next reinforcement: fixed alpha, or 1/(hits+1) (sum = inf)."""
        if self.alpha is not None:
            return torch.full_like(self.hits, self.alpha)
        return 1.0 / (self.hits + 1.0)

    def _set_texts(self, sel: torch.Tensor, cand: _Candidates, n: int, *, key: bool, value: bool) -> None:
        """Copy candidate n's strings into the selected slots; False keeps an existing string."""
        b, m = sel.nonzero().unbind(-1)
        self._texts_at(cand, b, torch.full_like(b, n), m, key=key, value=value)

    def _texts_at(self, cand, b, n, m, *, key: bool, value: bool) -> None:
        """``_set_texts`` for the (b, m) slots from candidates n (batched runs use it too): the
        strings are Python lists, so this loops."""
        for bi, ni, mi in zip(b.tolist(), n.tolist(), m.tolist()):
            kt = None if cand.key_text is None else cand.key_text[bi][ni]
            vt = None if cand.value_text is None else cand.value_text[bi][ni]
            if kt is not None and (key or self.key_text[bi][mi] is None):
                self.key_text[bi][mi] = kt
            if vt is not None and (value or self.value_text[bi][mi] is None):
                self.value_text[bi][mi] = vt

    def _fill(self, sel: torch.Tensor, cand: _Candidates, n: int) -> None:
        """Write candidate n into the (empty) slots selected by ``sel`` [B, M]: version 1."""
        s3 = sel.unsqueeze(-1)
        self.keys = torch.where(s3, cand.keys[:, n, None, :], self.keys)
        self.values = torch.where(s3, cand.values[:, n, None, :], self.values)
        self.confidence = torch.where(sel, cand.p_write[:, n, None], self.confidence)
        self.importance = torch.where(sel, cand.importance[:, n, None], self.importance)
        self.hits = torch.where(sel, torch.ones_like(self.hits), self.hits)
        self.version = torch.where(sel, torch.ones_like(self.version), self.version)
        self.time = torch.where(sel, self.step[:, None], self.time)
        self.occupied = self.occupied | sel
        self.protected = torch.where(sel, cand.protect[:, n, None], self.protected)
        self.retracted = torch.where(sel, cand.event[:, n, None] == EventType.RETRACT, self.retracted)
        self.chunk_id = torch.where(sel, cand.chunk_id[:, n, None], self.chunk_id)
        self.span = torch.where(s3, cand.span[:, n, None, :], self.span)
        self._aux_set(AUX_HITS, sel, 1.0)
        self._set_texts(sel, cand, n, key=True, value=True)

    def _overwrite(self, sel: torch.Tensor, cand: _Candidates, n: int, vcos: torch.Tensor) -> None:
        """Newer version: replace the value (no averaging), bump version, restart the hit count."""
        s3 = sel.unsqueeze(-1)
        self.values = torch.where(s3, cand.values[:, n, None, :], self.values)
        self.version = self.version + sel.long()
        self.confidence = torch.where(sel, cand.p_write[:, n, None], self.confidence)
        self.importance = torch.where(sel, torch.maximum(self.importance, cand.importance[:, n, None]), self.importance)
        self.hits = torch.where(sel, torch.ones_like(self.hits), self.hits)
        self.time = torch.where(sel, self.step[:, None], self.time)
        self.protected = self.protected | (sel & cand.protect[:, n, None])
        self.retracted = self.retracted & ~sel  # a newer version revives a withdrawn fact
        self.chunk_id = torch.where(sel, cand.chunk_id[:, n, None], self.chunk_id)
        self.span = torch.where(s3, cand.span[:, n, None, :], self.span)
        self._aux_add(AUX_OVERWRITES, sel, 1.0)
        self._aux_set(AUX_CONFLICT, sel, 1.0 - vcos[:, None])
        self._aux_set(AUX_HITS, sel, 1.0)
        self._set_texts(sel, cand, n, key=False, value=True)

    def _withdraw(self, sel: torch.Tensor, cand: _Candidates, n: int, vcos: torch.Tensor) -> None:
        """Tombstone: the retraction is the slot's newest version; its old value text is gone."""
        self._overwrite(sel, cand, n, vcos)
        self.retracted = self.retracted | sel
        for b, m in sel.nonzero().tolist():
            self.value_text[b][m] = None

    def _reinforce(self, sel: torch.Tensor, cand: _Candidates, n: int) -> None:
        """Same version seen again: v <- (1-a) v + a v_t, key likewise (re-normalised), c raised."""
        a = self._alpha()  # [B, M]
        a3 = a.unsqueeze(-1)
        s3 = sel.unsqueeze(-1)
        new_v = (1 - a3) * self.values + a3 * cand.values[:, n, None, :]
        new_k = F.normalize((1 - a3) * self.keys + a3 * cand.keys[:, n, None, :], dim=-1, eps=1e-12)
        new_c = 1 - (1 - self.confidence) * (1 - a * cand.p_write[:, n, None])
        self.values = torch.where(s3, new_v, self.values)
        self.keys = torch.where(s3, new_k, self.keys)
        self.confidence = torch.where(sel, new_c, self.confidence)
        self.importance = torch.where(sel, torch.maximum(self.importance, cand.importance[:, n, None]), self.importance)
        self.hits = self.hits + sel.to(self.dtype)
        self.time = torch.where(sel, self.step[:, None], self.time)
        self.protected = self.protected | (sel & cand.protect[:, n, None])
        self._aux_set(AUX_HITS, sel, self.hits)
        self._set_texts(sel, cand, n, key=False, value=False)

