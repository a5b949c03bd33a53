"""Read stage 3, version resolution: the scorer's pick -> the newest version of its fact.

A pool can hold several versions of one fact: the slot the write path kept and, from the retrieved
chunks, events it never wrote (a missed update, an old statement re-read). The read resolves them
the way the write path would have: a later entry is a newer version of the pick when writing it
would have overwritten the pick's slot, i.e. their key cosine reaches ``match_threshold``, or
``update_match_threshold`` for an update or a retraction (which claim an earlier version exists).
The walk follows such links to the last one in stream order; a retraction at the end of the chain
makes the answer "withdrawn".

Example:
    >>> import torch
    >>> from memadapter.modeling.read_scorer import ReadPool
    >>> keys = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # 0 and 1: one fact; 2: another
    >>> pool = ReadPool(["Ada city", "Ada city", "Bo city"], ["", "", ""], ["Paris", "Rome", "Oslo"], keys,
    ...                 torch.zeros(3), torch.tensor([1.0, 5.0, 9.0]), torch.tensor([True, False, False]),
    ...                 torch.zeros(3, dtype=torch.bool), ["", "update", "new"], torch.ones(3))
    >>> newest_version(pool, 0, match_threshold=0.8, update_match_threshold=0.6)
    1
"""

from __future__ import annotations

from typing import Optional

import torch

from .read_scorer import ReadPool

CLAIMS_EARLIER = ("update", "retract")  # event types that say an earlier version exists


def newer_versions(pool: ReadPool, i: int, match_threshold: float, update_match_threshold: Optional[float]) -> torch.Tensor:
    """[N] bool: the entries later than ``i`` that the write path would have written over ``i``."""
    update = match_threshold if update_match_threshold is None else update_match_threshold
    keys = pool.keys.float()
    cos = keys @ keys[i]  # [N]
    claims = torch.tensor([t in CLAIMS_EARLIER for t in pool.event_types], dtype=torch.bool)
    same = (cos >= match_threshold) | (claims & (cos >= update))
    return same & (pool.order.float() > float(pool.order[i]))


def newest_version(pool: ReadPool, pick: int, match_threshold: float,
                   update_match_threshold: Optional[float] = None) -> int:
    """Follow newer versions of entry ``pick`` to the last one; ``pick`` when it has none. Each step
    moves forward in stream order, so the walk ends within ``len(pool)`` steps."""
    while True:
        newer = newer_versions(pool, pick, match_threshold, update_match_threshold)
        if not bool(newer.any()):
            return pick
        order = pool.order.float().masked_fill(~newer, float("inf"))
        pick = int(order.argmin())  # the next version, not the last: a chain can drift from the pick's key
