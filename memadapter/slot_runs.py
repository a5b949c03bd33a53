"""Batched runs of ``SlotMemory.write``: candidates that do not interact, applied in one step.

Ingest hands ``write`` many candidates per chunk, and most of them touch different slots. Applied
one at a time each costs a handful of small tensor operations; ``_run_length`` finds how many of
the next candidates decide against the current state exactly as they would one after another, and
``_apply_run`` applies them together with the same arithmetic, so the state is equal bit for bit
(``tests/test_slots_batched.py`` checks it against ``batched_writes = False``). A candidate that
depends on an earlier one ends the run and goes through ``SlotWritesMixin._write_one``.

``BatchedRunsMixin`` is mixed into ``SlotMemory``; it uses its state tensors, thresholds,
``retention``, and ``_alpha`` / ``_texts_at`` of ``memadapter.slot_writes``.

Example:
    >>> import torch
    >>> from memadapter.slots import SlotMemory
    >>> from memadapter.slot_inputs import prepare_candidates
    >>> mem = SlotMemory(num_slots=4, key_dim=4, value_dim=4)
    >>> keys = torch.eye(4)[None, [0, 1, 0]]   # the third repeats the first: it must see it written
    >>> cand = prepare_candidates(mem, keys, keys)
    >>> mem._run_length(cand, 0)[0]
    2
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .slot_types import (
    AUX_BLOCKED, AUX_CONFLICT, AUX_HITS, AUX_OVERWRITES, EventType, WriteAction, _Candidates, _STATE_TENSORS,
)

# A batched run leaves to the one-at-a-time path any score this close to a threshold or runner-up,
# where a different float summation order could flip the decision.
_RUN_MARGIN = 1e-5
_RUN_WINDOW = 64  # candidates a run looks ahead at: its pairwise checks cost R x R


class BatchedRunsMixin:
    """Planning (``_run_length``, ``_decide_many``) and applying (``_apply_run``) of batched runs,
    mixed into ``SlotMemory`` (see module docstring)."""

    def _run_length(self, cand: _Candidates, n0: int) -> tuple[int, dict[str, torch.Tensor]]:
        """How many candidates from ``n0`` on can be applied at once, and their decisions ([B, R]).

        Candidates n0, n0+1, ... decide against the current state exactly as one at a time while
        none of them depends on an earlier one of the run: each touches a different matched slot,
        no key written in the run comes near a later key, new facts fit in free slots, no
        retraction frees a slot, no revision reads name overlaps, and no score sits within
        ``_RUN_MARGIN`` of a threshold or of the runner-up (float rounding could flip it)."""
        n1 = min(cand.keys.shape[1], n0 + _RUN_WINDOW)
        d = self._decide_many(cand, n0, n1)
        R = n1 - n0
        earlier = torch.ones(R, R, dtype=torch.bool, device=self.device).tril(-1)  # [n, j]: j < n
        touch = d["gate"] & d["matched"]  # [B, R]
        same = (d["matched_slot"][:, :, None] == d["matched_slot"][:, None, :]) & touch[:, None, :] & earlier
        bad = d["unsure"] | (touch & same.any(-1))
        written = d["allocate"] | d["reinforce"]  # these put a key in a slot
        bar = torch.where(d["matched"], d["best"], d["thr"])  # a later key must stay below this
        cross = torch.einsum("bnd,bjd->bnj", cand.keys[:, n0:n1], d["new_key"])  # [B, R, R]
        bad |= d["gate"] & ((cross >= bar[..., None] - _RUN_MARGIN) & written[:, None, :] & earlier).any(-1)
        first = torch.where(bad.any(1), bad.long().argmax(1), torch.full_like(bad[:, 0], R, dtype=torch.long))
        run = int(first.min())
        return run, {k: v[:, :run] for k, v in d.items()}

    def _decide_many(self, cand: _Candidates, n0: int, n1: int) -> dict[str, torch.Tensor]:
        """``_decide`` for candidates n0 .. n1-1 against the current state ([B, R] each), plus
        ``unsure``: the candidates a run must not take (see ``_run_length``)."""
        sl = slice(n0, n1)
        k, v, ev = cand.keys[:, sl], cand.values[:, sl], cand.event[:, sl]  # [B, R, dk], [B, R, dv], [B, R]
        B, R = ev.shape
        retract, update = ev == EventType.RETRACT, ev == EventType.UPDATE
        sims = torch.einsum("bmd,brd->brm", self.keys, k).masked_fill(~self.occupied[:, None, :], -math.inf)
        top = sims.topk(min(2, self._num_slots), dim=-1)
        best, best_m = top.values[..., 0], top.indices[..., 0]  # [B, R]
        thr = torch.where(retract | update, self.update_match_threshold, self.match_threshold).to(self.dtype)
        matched = best >= thr
        m_v = self.values.gather(1, best_m[..., None].expand(B, R, self._value_dim))  # [B, R, dv]
        vcos = F.cosine_similarity(m_v, v, dim=-1, eps=1e-12)
        agree = (vcos >= self.value_threshold) & ~self.retracted.gather(1, best_m)
        prot = self.protected.gather(1, best_m)
        gate = cand.mask[:, sl] & (cand.p_write[:, sl] >= self.write_threshold) & (ev != EventType.IRRELEVANT)
        inferred = gate & matched & ~retract & ~update
        want_new = gate & ~matched & (~retract | self.tombstones)
        free = ~self.occupied
        order = torch.sort(self.occupied.long(), dim=1, stable=True).indices  # free slots first, in slot order
        nth = (want_new.long().cumsum(1) - 1).clamp(min=0)  # [B, R]: which free slot a new fact takes
        near = (best - thr).abs() < _RUN_MARGIN
        if self._num_slots > 1:
            near |= matched & (best - top.values[..., 1] < _RUN_MARGIN)
        near |= inferred & ((vcos - self.value_threshold).abs() < _RUN_MARGIN)
        unsure = gate & (near & torch.isfinite(best) | (retract & matched & (not self.tombstones)))
        unsure |= want_new & (nth >= free.sum(1, keepdim=True))  # would evict or drop
        if self.update_name_weight > 0 and cand.key_text is not None:
            unsure |= gate & (retract | update)
        a = self._alpha().gather(1, best_m)[..., None]  # [B, R, 1]
        m_k = self.keys.gather(1, best_m[..., None].expand(B, R, self._key_dim))
        reinforce = inferred & agree & ~prot
        new_key = torch.where(reinforce[..., None], F.normalize((1 - a) * m_k + a * k, dim=-1, eps=1e-12), k)
        return {"gate": gate, "matched": matched, "best": best, "thr": thr.expand(B, R), "matched_slot": best_m,
                "vcos": vcos, "retract": gate & matched & retract,
                "overwrite": (gate & matched & update) | (inferred & ~agree & ~prot), "reinforce": reinforce,
                "blocked": inferred & prot & ~agree, "allocate": want_new,
                "new_slot": order.gather(1, nth.clamp(max=self._num_slots - 1)),
                "new_key": new_key, "unsure": unsure}

    def _apply_run(self, cand: _Candidates, n0: int, d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply a run from ``_run_length`` at once: every candidate writes a different slot, with the
        same arithmetic as one at a time. Returns (action [B, R], slot [B, R])."""
        R = d["gate"].shape[1]
        sl = slice(n0, n0 + R)
        steps = self.step[:, None] + cand.mask[:, sl].long().cumsum(1)  # [B, R]: the clock at each candidate
        self.step = steps[:, -1].clone()
        for name in _STATE_TENSORS[:-1]:  # written in place below: never alias a snapshot or an earlier result
            setattr(self, name, getattr(self, name).clone())
        at = lambda sel, slot: (*sel.nonzero(as_tuple=True), slot[sel])  # noqa: E731  (b, r, m) of the chosen
        b, r, m = at(d["blocked"], d["matched_slot"])
        self._aux_put(AUX_BLOCKED, b, m, self._aux_get(AUX_BLOCKED, b, m) + 1.0)
        self._aux_put(AUX_CONFLICT, b, m, 1.0 - d["vcos"][b, r])
        self._reinforce_at(cand, n0, *at(d["reinforce"], d["matched_slot"]), steps)
        over = d["overwrite"] | d["retract"]  # a tombstone is an overwrite that is then withdrawn
        self._overwrite_at(cand, n0, *at(over, d["matched_slot"]), steps, d["vcos"])
        b, r, m = at(d["retract"], d["matched_slot"])
        self.retracted[b, m] = True
        for bi, mi in zip(b.tolist(), m.tolist()):
            self.value_text[bi][mi] = None
        self._fill_at(cand, n0, *at(d["allocate"], d["new_slot"]), steps)
        action = torch.full_like(steps, int(WriteAction.SKIPPED))
        slot = torch.full_like(steps, -1)
        for name, act, where in (("reinforce", WriteAction.REINFORCED, "matched_slot"),
                                 ("overwrite", WriteAction.OVERWRITTEN, "matched_slot"),
                                 ("retract", WriteAction.RETRACTED, "matched_slot"),
                                 ("allocate", WriteAction.ALLOCATED, "new_slot")):
            action = torch.where(d[name], int(act), action)
            slot = torch.where(d[name], d[where], slot)
        return action, slot

    def _aux_get(self, feature: int, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.aux[b, m, feature] if feature < self.aux_dim else torch.zeros(len(b), dtype=self.dtype)

    def _aux_put(self, feature: int, b: torch.Tensor, m: torch.Tensor, value: torch.Tensor | float) -> None:
        if feature < self.aux_dim:
            self.aux[b, m, feature] = torch.as_tensor(value, dtype=self.dtype, device=self.device)

    def _reinforce_at(self, cand, n0, b, r, m, steps) -> None:
        """``_reinforce`` on the (b, m) slots from candidates n0 + r."""
        n = n0 + r
        a = self._alpha()[b, m][:, None]  # [P, 1]
        self.values[b, m] = (1 - a) * self.values[b, m] + a * cand.values[b, n]
        self.keys[b, m] = F.normalize((1 - a) * self.keys[b, m] + a * cand.keys[b, n], dim=-1, eps=1e-12)
        self.confidence[b, m] = 1 - (1 - self.confidence[b, m]) * (1 - a[:, 0] * cand.p_write[b, n])
        self.importance[b, m] = torch.maximum(self.importance[b, m], cand.importance[b, n])
        self.hits[b, m] = self.hits[b, m] + 1
        self.time[b, m] = steps[b, r]
        self.protected[b, m] |= cand.protect[b, n]
        self._aux_put(AUX_HITS, b, m, self.hits[b, m])
        self._texts_at(cand, b, n, m, key=False, value=False)

    def _overwrite_at(self, cand, n0, b, r, m, steps, vcos) -> None:
        """``_overwrite`` on the (b, m) slots from candidates n0 + r."""
        n = n0 + r
        self.values[b, m] = cand.values[b, n]
        self.version[b, m] = self.version[b, m] + 1
        self.confidence[b, m] = cand.p_write[b, n]
        self.importance[b, m] = torch.maximum(self.importance[b, m], cand.importance[b, n])
        self.hits[b, m] = 1.0
        self.time[b, m] = steps[b, r]
        self.protected[b, m] |= cand.protect[b, n]
        self.retracted[b, m] = False
        self.chunk_id[b, m] = cand.chunk_id[b, n]
        self.span[b, m] = cand.span[b, n]
        self._aux_put(AUX_OVERWRITES, b, m, self._aux_get(AUX_OVERWRITES, b, m) + 1.0)
        self._aux_put(AUX_CONFLICT, b, m, 1.0 - vcos[b, r])
        self._aux_put(AUX_HITS, b, m, 1.0)
        self._texts_at(cand, b, n, m, key=False, value=True)

    def _fill_at(self, cand, n0, b, r, m, steps) -> None:
        """``_clear_slots`` + ``_fill`` on the free (b, m) slots from candidates n0 + r: version 1."""
        n = n0 + r
        self.keys[b, m], self.values[b, m] = cand.keys[b, n], cand.values[b, n]
        self.aux[b, m] = 0.0
        self.usage[b, m] = 0.0
        self.confidence[b, m], self.importance[b, m] = cand.p_write[b, n], cand.importance[b, n]
        self.hits[b, m] = 1.0
        self.version[b, m] = 1
        self.time[b, m] = steps[b, r]
        self.occupied[b, m] = True
        self.protected[b, m] = cand.protect[b, n]
        self.retracted[b, m] = cand.event[b, n] == EventType.RETRACT
        self.chunk_id[b, m], self.span[b, m] = cand.chunk_id[b, n], cand.span[b, n]
        self._aux_put(AUX_HITS, b, m, 1.0)
        for bi, mi in zip(b.tolist(), m.tolist()):
            self.key_text[bi][mi] = self.value_text[bi][mi] = None
        self._texts_at(cand, b, n, m, key=True, value=True)
