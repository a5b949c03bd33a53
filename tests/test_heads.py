import pytest
import torch

from memadapter.errors import DTypeError, ShapeError
from memadapter.heads import (
    TAG_KEY_B,
    TAG_KEY_I,
    TAG_O,
    TAG_VAL_B,
    GroundingHead,
    QueryHead,
    WriteController,
    masked_attention_pool,
    masked_attention_pool_reference,
)

torch.manual_seed(0)


def test_attention_pool_matches_reference():
    h, s = torch.randn(3, 6, 5), torch.randn(3, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [0] * 6], dtype=torch.bool)
    torch.testing.assert_close(masked_attention_pool(h, s, mask), masked_attention_pool_reference(h, s, mask))


def _forced_head(tags_row):
    """A head whose tagger emits ``tags_row`` regardless of content (bias on position via input)."""
    head = GroundingHead(16, 8, 8)
    with torch.no_grad():
        head.norm.weight.fill_(1.0)
        head.norm.bias.zero_()
        head.tagger.weight.zero_()
        head.tagger.bias.zero_()
        head.tagger.weight[:, :5] = torch.eye(5) * 10
    hidden = torch.zeros(1, len(tags_row), 16)
    for t, tag in enumerate(tags_row):
        hidden[0, t, tag] = 5.0
        hidden[0, t, 5 + t % 5] = 1.0  # varies tokens so pooled vectors differ
    return head, hidden


def test_propose_decodes_forced_tags_and_ignores_padding():
    tags = [TAG_O, TAG_KEY_B, TAG_KEY_I, TAG_VAL_B, TAG_O, TAG_KEY_B, TAG_VAL_B]
    head, hidden = _forced_head(tags)
    mask = torch.ones(1, len(tags), dtype=torch.bool)
    cands = head.propose(hidden, mask)[0]
    assert [(c.key_span, c.value_span) for c in cands] == [((1, 3), (3, 4)), ((5, 6), (6, 7))]
    for c in cands:
        assert c.key.shape == (8,) and abs(float(c.key.norm()) - 1) < 1e-5
        assert c.value.shape == (8,) and 0 < c.confidence < 1
        assert c.event_probs.shape == (4,) and c.event_type == int(c.event_probs.argmax())
    mask[0, 5:] = False  # padding can never open a span
    assert [(c.key_span, c.value_span) for c in head.propose(hidden, mask)[0]] == [((1, 3), (3, 4))]


def test_propose_snaps_spans_to_words_before_pooling():
    tags = [TAG_O, TAG_KEY_B, TAG_O, TAG_O, TAG_VAL_B, TAG_O, TAG_O]
    head, hidden = _forced_head(tags)
    starts = [True, True, False, True, True, False, True]
    cands = head.propose(hidden, None, [starts])[0]
    assert [(c.key_span, c.value_span) for c in cands] == [((1, 3), (4, 6))]
    h = head.norm(hidden[0])
    torch.testing.assert_close(cands[0].value, head.value_proj(h[4:6].mean(0)))
    assert [(c.key_span, c.value_span) for c in head.propose(hidden)[0]] == [((1, 2), (4, 5))]


def test_propose_key_vector_is_pooled_entity_and_relation():
    tags = [TAG_KEY_B, TAG_KEY_I, TAG_O, TAG_O, TAG_VAL_B]
    head, hidden = _forced_head(tags)
    c = head.propose(hidden)[0][0]
    h = head.norm(hidden[0])
    expected = torch.nn.functional.normalize(head.key_proj(torch.cat([h[0:2].mean(0), h[2:4].mean(0)])), dim=-1)
    torch.testing.assert_close(c.key, expected)
    torch.testing.assert_close(c.value, head.value_proj(h[4:5].mean(0)))


def test_grounding_rows_are_independent():
    head = GroundingHead(16, 8, 8)
    hidden = torch.randn(3, 9, 16)
    batched = head.propose(hidden)
    for b in range(3):
        single = head.propose(hidden[b : b + 1])[0]
        assert [(c.key_span, c.value_span) for c in single] == [(c.key_span, c.value_span) for c in batched[b]]


def test_grounding_loss_backprops_and_ignores():
    head = GroundingHead(16, 8, 8)
    out = head(torch.randn(2, 5, 16))
    tags = torch.randint(0, 5, (2, 5))
    tags[1, 3:] = -100
    events = torch.full((2, 5), -100)
    conf = torch.full((2, 5), float("nan"))
    conf[0, 0] = 1.0
    loss = head.loss(out, tags, events, conf)
    loss.backward()
    assert torch.isfinite(loss) and head.tagger.weight.grad is not None
    with pytest.raises(ShapeError, match="tag_targets"):
        head.loss(out, tags[:, :3], events)


def test_grounding_bad_input():
    head = GroundingHead(16, 8, 8)
    with pytest.raises(ShapeError, match="hidden"):
        head.propose(torch.randn(2, 5, 15))
    with pytest.raises(ShapeError, match="mask"):
        head.propose(torch.randn(2, 5, 16), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(DTypeError, match="hidden"):
        head.propose(torch.ones(2, 5, 16, dtype=torch.long))


def test_write_controller_uses_features_once_trained():
    wc = WriteController(key_dim=4)
    keys = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    ev = torch.softmax(torch.randn(6, 4), -1)
    feats = torch.rand(6, 4)
    p = wc(keys, ev, feats)
    # Untrained: last layer weight is zero so p is the init bias for every row.
    torch.testing.assert_close(p, torch.full((6,), torch.sigmoid(torch.tensor(2.0)).item()))
    targets = (feats[:, 0] > 0.5).float()  # write iff confident
    opt = torch.optim.Adam(wc.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        WriteController.loss(wc(keys, ev, feats), targets).backward()
        opt.step()
    assert ((wc(keys, ev, feats) > 0.5).float() == targets).all()
    with pytest.raises(ShapeError, match="row counts"):
        wc(keys, ev[:2], feats)


def test_query_head_shapes_padding_and_contrastive():
    qh = QueryHead(16, 8)
    h = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6], dtype=torch.bool)
    q = qh(h, mask)
    assert q.shape == (2, 8)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(2))
    h2 = h.clone()
    h2[0, 3:] = 99.0  # padded tokens must not move the query
    torch.testing.assert_close(qh(h2, mask)[0], q[0])
    loss = QueryHead.contrastive_loss(q, q.detach())
    loss.backward()
    assert qh.proj.weight.grad is not None


def test_context_tagger_sees_the_next_tokens_but_not_padding():
    torch.manual_seed(0)
    head = GroundingHead(16, 8, 8, context_size=12)
    h = torch.randn(1, 7, 16)
    base = head(h).tag_logits
    later = h.clone()
    later[0, 3] = torch.randn(16)  # change token 3: tokens 1..5 (window 2) see it, token 0 and 6 do not
    diff = (head(later).tag_logits - base).abs().sum(-1)[0].detach()
    assert bool((diff[1:6] > 0).all()) and float(diff[0]) == 0 and float(diff[6]) == 0
    padded = torch.cat([h, torch.randn(1, 3, 16)], 1)
    mask = torch.tensor([[True] * 7 + [False] * 3])
    torch.testing.assert_close(head(padded, mask).tag_logits[:, :7], base)  # what follows the row is not read
    assert GroundingHead(16, 8, 8).context is None  # context_size 0: each token alone, as before
