"""Read stage 3: the pick moves to the newest version of its fact, as the write path would have."""

import torch

from memadapter.modeling.read_scorer import ReadPool
from memadapter.modeling.read_versions import newer_versions, newest_version


def _pool(keys, order, types):
    n = len(order)
    keys = torch.nn.functional.normalize(torch.tensor(keys, dtype=torch.float), dim=-1)
    return ReadPool([f"k{i}" for i in range(n)], [""] * n, [f"v{i}" for i in range(n)], keys, torch.zeros(n),
                    torch.tensor(order, dtype=torch.float), torch.tensor([t == "" for t in types]),
                    torch.tensor([t == "retract" for t in types]), list(types), torch.ones(n))


def test_a_later_entry_with_the_same_key_is_the_newer_version():
    pool = _pool([[1, 0], [1, 0], [0, 1]], [0.5, 7, 3], ["", "new", "new"])
    assert newest_version(pool, 0, 0.8) == 1
    assert newest_version(pool, 1, 0.8) == 1  # nothing after it
    assert newest_version(pool, 2, 0.8) == 2  # another fact's key: untouched


def test_an_earlier_entry_is_never_a_newer_version():
    pool = _pool([[1, 0], [1, 0]], [9, 2], ["new", "new"])
    assert newest_version(pool, 0, 0.8) == 0


def test_updates_and_retractions_match_at_the_update_threshold_only():
    # cosine 0.7 between the pick and entry 1: below match (0.8), above update (0.6)
    keys = [[1, 0], [0.7, 0.714], [0, 1]]  # 2: cosine 0 with 0, 0.71 with 1
    assert not newer_versions(_pool(keys, [0, 5, 6], ["", "new", "new"]), 0, 0.8, 0.6).any()
    assert newer_versions(_pool(keys, [0, 5, 6], ["", "update", "new"]), 0, 0.8, 0.6).tolist() == [False, True, False]
    assert newest_version(_pool(keys, [0, 5, 6], ["", "retract", "new"]), 0, 0.8, 0.6) == 1
    assert newest_version(_pool(keys, [0, 5, 6], ["", "update", "new"]), 0, 0.8, None) == 0  # None: match for all


def test_a_look_alike_below_the_threshold_does_not_take_over():
    pool = _pool([[1, 0], [0.5, 0.866]], [0, 4], ["", "update"])  # cosine 0.5
    assert newest_version(pool, 0, 0.8, 0.6) == 0


def test_the_walk_follows_a_chain_step_by_step():
    # 0 -> 1 -> 2: each step is close to the one before; 2 is far from 0 (cosine ~0.5)
    keys = [[1, 0], [0.866, 0.5], [0.5, 0.866]]
    pool = _pool(keys, [0, 3, 6], ["", "update", "update"])
    assert newer_versions(pool, 0, 0.95, 0.8).tolist() == [False, True, False]
    assert newest_version(pool, 0, 0.95, 0.8) == 2
