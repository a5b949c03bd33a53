"""The learned reader's features and scorer (modeling/read_scorer.py), on hand-made pools."""

import pytest
import torch

from memadapter.modeling.read_scorer import FEATURES, NUM_FEATURES, ReadPool, ReadScorer, listwise_loss, pool_features, stale_loss


def _pool(key_texts, order, keys=None, slots=None, withdrawn=None, types=None, values=None, match=None):
    n = len(key_texts)
    keys = torch.eye(max(2, n))[:n] if keys is None else keys
    return ReadPool(key_texts=list(key_texts), sentences=[f"{k} is here." for k in key_texts],
                    value_texts=values or ["v"] * n, keys=keys,
                    match=torch.zeros(n) if match is None else torch.tensor(match),
                    order=torch.tensor(order, dtype=torch.float), is_slot=torch.tensor(slots or [False] * n),
                    withdrawn=torch.tensor(withdrawn or [False] * n), event_types=types or ["new"] * n,
                    confidence=torch.ones(n))


def col(f, name):
    return f[:, FEATURES.index(name)].tolist()


def test_names_and_look_alikes_become_features():
    q = "What does the Lumen Mini printer cost?"
    f = pool_features(q, _pool(["the Lumen printer", "The Lumen Mini printer", "Paul Brandt"], [0, 1, 2]))
    assert f.shape == (3, NUM_FEATURES)
    assert col(f, "most_specific") == [0.0, 1.0, 0.0]
    assert col(f, "named_key")[1] > col(f, "named_key")[0] > col(f, "named_key")[2] == 0.0
    assert col(f, "lexical_key")[1] == pytest.approx(1.0)  # scaled to the pool's best
    f = pool_features("Where does Martin Brandt work?", _pool(["Paul Brandt", "Martin Brandt"], [0, 1]))
    assert col(f, "foreign_name") == [1.0, 0.0]
    f = pool_features("What does the Mifaim printer cost?", _pool(["The Mifaim Mini printer", "Mifaim printer"], [0, 1]))
    assert col(f, "inserted_name") == [1.0, 0.0]


def test_stream_order_and_versions():
    keys = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=-1)
    f = pool_features("q", _pool(["a", "b", "c"], [30, 10, 20], keys=keys, match=[0.5, 0.7, 0.1]))
    assert col(f, "position") == [1.0, 0.0, 0.5]
    later, earlier = col(f, "later_version"), col(f, "earlier_version")
    assert later[0] == 0.0 and later[1] == pytest.approx(float(keys[1] @ keys[0]))  # b, then its version a
    assert earlier[0] == pytest.approx(float(keys[0] @ keys[1])) and earlier[1] == 0.0
    assert col(f, "key_match_gap") == pytest.approx([-0.2, 0.0, -0.6])


def test_kinds_of_entries():
    f = pool_features("q", _pool(["a", "b", "c"], [0, 1, 2], slots=[True, False, False], withdrawn=[True, False, True],
                                 types=["", "update", "retract"], values=[None, "x", None]))
    assert col(f, "slot") == [1.0, 0.0, 0.0] and col(f, "withdrawn") == [1.0, 0.0, 1.0]
    assert col(f, "type_update") == [0.0, 1.0, 0.0] and col(f, "type_retract") == [0.0, 0.0, 1.0]
    assert col(f, "has_value") == [0.0, 1.0, 0.0]
    assert pool_features("q", _pool([], [])).shape == (0, NUM_FEATURES)


def test_the_unfitted_scorer_is_the_plain_joint_score():
    x = torch.randn(4, 5, NUM_FEATURES)
    want = x[..., FEATURES.index("key_match")] + 0.3 * x[..., FEATURES.index("lexical_sentence")]
    assert torch.allclose(ReadScorer()(x), want, atol=1e-6)


def test_listwise_loss_wants_the_positive_first_and_skips_pools_without_one():
    valid = torch.tensor([[True, True, False], [True, True, True]])
    pos = torch.tensor([[False, True, False], [False, False, False]])
    good, bad = torch.tensor([[0.0, 5.0, 9.0], [1.0, 2.0, 3.0]]), torch.tensor([[5.0, 0.0, 9.0], [1.0, 2.0, 3.0]])
    assert listwise_loss(good, valid, pos) < 0.01 < listwise_loss(bad, valid, pos)  # padding never counts
    assert float(listwise_loss(good, valid, torch.zeros_like(pos))) == 0.0


def test_stale_loss_wants_little_mass_on_the_stale_entries_and_skips_pools_without_one():
    valid = torch.tensor([[True, True, False], [True, True, True]])
    stale = torch.tensor([[True, False, True], [False, False, False]])
    low, high = torch.tensor([[-5.0, 5.0, 9.0], [1.0, 2.0, 3.0]]), torch.tensor([[5.0, -5.0, -9.0], [1.0, 2.0, 3.0]])
    assert stale_loss(low, valid, stale) < 0.01 < 1.0 < stale_loss(high, valid, stale)  # padding never counts
    assert float(stale_loss(high, valid, torch.zeros_like(stale))) == 0.0
    assert torch.isfinite(stale_loss(torch.tensor([[50.0, -50.0, 0.0]]), valid[:1], stale[:1]))  # all mass stale: capped

def test_pointer_answers_bring_their_margin_and_hedge_score():
    pool = _pool(["a", "b", "c", "d"], [0, 1, 2, 3], types=["new", "answer", "answer", "answer"], values=["v", "v", "v", None])
    f = pool_features("q", pool)
    assert col(f, "answer") == [0.0, 1.0, 1.0, 1.0] and col(f, "answer_margin") == col(f, "answer_hedge") == [0.0] * 4
    pool.answer_margin, pool.answer_hedge = torch.tensor([5.0, 0.0, 2.0, 1.0]), torch.tensor([5.0, -1.0, 3.0, 4.0])
    f = pool_features("q", pool)
    assert col(f, "answer_margin") == pytest.approx([0.0, 0.5] + torch.sigmoid(torch.tensor([2.0, 1.0])).tolist())
    # hedged values: not the slot's, and not the withdrawal's (it states no value)
    assert col(f, "answer_hedge") == pytest.approx([0.0] + torch.sigmoid(torch.tensor([-1.0, 3.0])).tolist() + [0.0])
