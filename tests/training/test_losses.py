"""Each loss: equals its plain-loop reference, is ~0 for a perfect prediction and larger for a wrong one,
and rejects bad input with a typed error naming the argument."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memadapter.errors import ConfigError, DTypeError, ShapeError
from memadapter.training import losses as L

torch.set_num_threads(1)


def _one_hot_logits(ids: torch.Tensor, vocab: int, scale: float = 50.0) -> torch.Tensor:
    return F.one_hot(ids.clamp(min=0), vocab).float() * scale


def test_answer_loss_matches_reference_and_can_fail():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[:, :2] = -100
    labels[2] = -100
    assert torch.allclose(L.answer_loss(logits, labels), L.answer_loss_reference(logits, labels), atol=1e-5)
    # Perfect teacher-forced prediction: position t predicts label t+1.
    nxt = torch.cat([labels[:, 1:], labels[:, :1]], 1)
    perfect = _one_hot_logits(nxt, 11)
    assert float(L.answer_loss(perfect, labels)) < 1e-4
    wrong = _one_hot_logits((nxt + 1) % 11, 11)
    assert float(L.answer_loss(wrong, labels)) > 10
    assert L.answer_token_correct(perfect, labels).tolist() == [1.0, 1.0, 0.0]  # row 2 has no labels
    assert L.answer_token_correct(wrong, labels).tolist() == [0.0, 0.0, 0.0]


def test_answer_loss_without_labels_is_zero_with_grad():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss = L.answer_loss(logits, torch.full((2, 4), -100))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_answer_loss_bad_input():
    with pytest.raises(ShapeError, match="labels"):
        L.answer_loss(torch.randn(2, 4, 5), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(DTypeError, match="labels"):
        L.answer_loss(torch.randn(2, 4, 5), torch.zeros(2, 4))


def test_grounding_loss_reference_perfect_and_wrong():
    g = torch.Generator().manual_seed(1)
    tags = torch.randint(0, 5, (2, 7), generator=g)
    tags[1, 5:] = -100
    ev = torch.full((2, 7), -100)
    ev[0, 1:4] = 2
    tl, el = torch.randn(2, 7, 5, generator=g), torch.randn(2, 7, 4, generator=g)
    assert torch.allclose(L.grounding_loss(tl, tags, el, ev), L.grounding_loss_reference(tl, tags, el, ev), atol=1e-5)
    good = L.grounding_loss(_one_hot_logits(tags, 5), tags, _one_hot_logits(ev, 4), ev)
    bad = L.grounding_loss(_one_hot_logits((tags + 1) % 5, 5), tags, _one_hot_logits((ev + 1) % 4, 4), ev)
    assert float(good) < 1e-4 < 10 < float(bad)
    with pytest.raises(ShapeError, match="event_targets"):
        L.grounding_loss(tl, tags, el, ev[:, :3])


def test_write_aux_loss_lite_weight_reference_and_mask():
    p = torch.tensor([[0.9, 0.2, 0.7], [0.1, 0.99, 0.5]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    m = torch.tensor([[True, True, True], [True, True, False]])
    got = L.write_aux_loss(p, y, m)
    assert torch.allclose(got, L.write_aux_loss_reference(p, y, m).float(), atol=1e-6)
    # The lite weight is 0.25 of the plain BCE.
    assert torch.allclose(got, 0.25 * F.binary_cross_entropy(p[m], y[m]), atol=1e-6)
    assert float(L.write_aux_loss(y, y)) < 1e-4 < 1 < float(L.write_aux_loss(1 - y, y))
    with pytest.raises(ShapeError, match="write_targets"):
        L.write_aux_loss(p, y[:, :2])
    with pytest.raises(ConfigError, match="weight"):
        L.write_aux_loss(p, y, weight=-1.0)


def test_write_budget_penalty_reference_and_zero_within_budget():
    p = torch.tensor([[0.9, 0.9, 0.9, 0.1], [0.2, 0.1, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()
    got = L.write_budget_penalty(p, m, budget=1.0)
    assert torch.allclose(got, L.write_budget_penalty_reference(p, m, 1.0).float(), atol=1e-6)
    assert float(got) == pytest.approx((2.8 - 1.0) / 4 / 2, abs=1e-6)  # row 1 is within budget
    assert float(L.write_budget_penalty(p, m, budget=4.0)) == 0.0
    with pytest.raises(ConfigError, match="budget"):
        L.write_budget_penalty(p, m, budget=-1)


def _matching_case():
    keys = F.normalize(torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    pos = torch.tensor([1, 3])
    kinds = torch.tensor([[1, 0, 2, 0], [3, 0, 1, 0]])
    return keys, mask, pos, kinds


def test_contrastive_matching_matches_reference():
    keys, mask, pos, kinds = _matching_case()
    q = F.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    for kw in ({}, {"temperature": 0.5, "margin": 0.3, "hard_weight": 2.0}):
        got = L.contrastive_matching_loss(q, keys, mask, pos, kinds, **kw)
        ref = L.contrastive_matching_loss_reference(q, keys, mask, pos, kinds, **kw)
        assert torch.allclose(got, ref.float(), atol=1e-4)


def test_contrastive_matching_perfect_query_beats_hard_negative_query():
    keys, mask, pos, kinds = _matching_case()
    perfect = keys[torch.arange(2), pos]  # the query equals the answer event's key
    confused = keys[torch.arange(2), torch.tensor([0, 0])]  # the query equals a hard negative's key
    good = L.contrastive_matching_loss(perfect, keys, mask, pos, kinds, temperature=0.05)
    bad = L.contrastive_matching_loss(confused, keys, mask, pos, kinds, temperature=0.05)
    assert float(bad) > float(good) + 1.0
    assert L.matching_accuracy(perfect, keys, mask, pos).tolist() == [1.0, 1.0]
    assert L.matching_accuracy(confused, keys, mask, pos).tolist() == [0.0, 0.0]
    # The hinge alone separates them too (InfoNCE off by a huge temperature).
    h_good = L.contrastive_matching_loss(perfect, keys, mask, pos, kinds, temperature=1e6, margin=2.0)
    h_bad = L.contrastive_matching_loss(confused, keys, mask, pos, kinds, temperature=1e6, margin=2.0)
    assert float(h_bad) > float(h_good)


def test_contrastive_matching_bad_input():
    keys, mask, pos, kinds = _matching_case()
    q = keys[:, 0]
    with pytest.raises(ShapeError, match="positive"):
        L.contrastive_matching_loss(q, keys, mask, torch.tensor([3, 0]))  # row 0 event 3 is padding
    with pytest.raises(DTypeError, match="event_mask"):
        L.contrastive_matching_loss(q, keys, mask.long(), pos)
    with pytest.raises(ConfigError, match="temperature"):
        L.contrastive_matching_loss(q, keys, mask, pos, temperature=0.0)
    with pytest.raises(ShapeError, match="event_keys"):
        L.contrastive_matching_loss(q[:1], keys, mask, pos)


def test_grounding_confidence_term_reference_and_direction():
    g = torch.Generator().manual_seed(4)
    tags = torch.randint(0, 5, (2, 5), generator=g)
    ev = torch.full((2, 5), -100)
    conf_t = torch.full((2, 5), float("nan"))
    conf_t[0, :3] = torch.tensor([1.0, 0.0, 1.0])
    tl, el, cl = torch.randn(2, 5, 5, generator=g), torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, generator=g)
    got = L.grounding_loss(tl, tags, el, ev, cl, conf_t)
    assert torch.allclose(got, torch.as_tensor(L.grounding_loss_reference(tl, tags, el, ev, cl, conf_t)).float(), atol=1e-5)
    base = L.grounding_loss(tl, tags, el, ev)
    right = torch.where(torch.isnan(conf_t), 0.0, (conf_t * 2 - 1) * 20)
    assert float(L.grounding_loss(tl, tags, el, ev, right, conf_t) - base) < 1e-4
    assert float(L.grounding_loss(tl, tags, el, ev, -right, conf_t) - base) > 10


def test_key_consistency_matches_reference_and_pulls_same_facts_together():
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(2, 5, 8, generator=g), dim=-1)
    groups = torch.tensor([[0, 1, 0, -1, 2], [0, 0, 1, 1, 0]])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    got = L.key_consistency_loss(keys, groups, mask)
    torch.testing.assert_close(got, L.key_consistency_loss_reference(keys, groups, mask).float(), atol=1e-5, rtol=0)
    keys = keys.clone().requires_grad_(True)
    opt = torch.optim.SGD([keys], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        L.key_consistency_loss(F.normalize(keys, dim=-1), groups, mask).backward()
        opt.step()
    k = F.normalize(keys.detach(), dim=-1)
    assert float(k[0, 0] @ k[0, 2]) > 0.85 and float(k[0, 0] @ k[0, 1]) < 0.65  # same fact / other fact
    with pytest.raises(ShapeError, match="groups"):
        L.key_consistency_loss(k, groups[:, :3], mask)
