import pytest
import torch

from memadapter.errors import DTypeError, ShapeError
from memadapter.heads import (
    TAG_KEY_B,
    TAG_KEY_I,
    TAG_O,
    TAG_VAL_B,
    TAG_VAL_I,
    GroundingHead,
    QueryHead,
    WriteController,
    decode_spans,
    masked_attention_pool,
    masked_attention_pool_reference,
    pair_spans,
    pool_spans,
    pool_spans_reference,
    relation_spans,
    relation_spans_reference,
    sentence_ends,
    snap_to_words,
    word_starts,
)

torch.manual_seed(0)


def test_decode_and_pair_spans():
    tags = [TAG_O, TAG_KEY_B, TAG_KEY_I, TAG_O, TAG_VAL_B, TAG_VAL_I, TAG_KEY_B, TAG_KEY_B, TAG_VAL_I]
    spans = decode_spans(tags)
    assert spans == [("key", 1, 3), ("value", 4, 6), ("key", 6, 7), ("key", 7, 8), ("value", 8, 9)]
    assert pair_spans(spans) == [((1, 3), (4, 6)), ((6, 7), None), ((7, 8), (8, 9))]
    assert decode_spans([TAG_O] * 4) == []


def test_pool_spans_matches_reference():
    h = torch.randn(12, 8)
    spans = torch.tensor([[0, 3], [5, 6], [2, 12], [4, 4]])
    torch.testing.assert_close(pool_spans(h, spans), pool_spans_reference(h, spans))


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


def test_pair_spans_within_a_sentence():
    spans = [("key", 1, 3), ("value", 5, 6), ("key", 7, 8), ("value", 8, 9)]
    ends = [False, False, True, False, True, False, False, False, False]  # a sentence ends at token 4
    assert pair_spans(spans) == [((1, 3), (5, 6)), ((7, 8), (8, 9))]
    assert pair_spans(spans, ends) == [((1, 3), None), ((7, 8), (8, 9))]  # the key's own last token may end it
    assert pair_spans(spans, [False] * 9) == pair_spans(spans)
    pieces = {1: " no", 2: " longer", 3: " valid", 4: ".", 5: " Code", 6: " 80", 7: "?\n"}
    decode = lambda rows: ["".join(pieces[t] for t in r) for r in rows]  # noqa: E731
    assert sentence_ends([[1, 2, 3, 4, 5, 6, 7], []], decode) == [[False] * 3 + [True, False, False, True], []]


def test_snap_to_words_widens_spans_cut_inside_a_word():
    starts = [True, True, False, True, True, False, False, True]  # words: 0 | 1-2 | 3 | 4-6 | 7
    assert snap_to_words([((2, 3), (5, 6))], starts) == [((1, 3), (4, 7))]
    assert snap_to_words([((1, 3), (3, 4)), ((7, 8), None)], starts) == [((1, 3), (3, 4)), ((7, 8), None)]
    # a value tagged inside its key's last word starts after the key (never inside it)
    assert snap_to_words([((4, 5), (5, 6))], starts) == [((4, 7), (7, 8))]
    assert snap_to_words([((5, 6), (6, 7))], starts[:7]) == [((4, 7), None)]
    assert snap_to_words([], starts) == []


def test_word_starts_reads_pieces_after_their_neighbour():
    pieces = {1: " Daniel", 2: "a", 3: " Berger", 4: "'s", 5: " 2", 6: "10", 7: "-", 8: "4", 9: "\ufffd"}
    decode = lambda rows: ["".join(pieces[t] for t in r) for r in rows]  # noqa: E731
    assert word_starts([[1, 2, 3, 4], [5, 6, 7, 8], [2, 9, 2], []], decode) == [
        [True, False, True, True], [True, False, True, True], [True, True, True], []]
    # decode with a space marker dropped at the start of a text (SentencePiece) reads the same
    sp = lambda rows: [decode(rows[i : i + 1])[0].lstrip() for i in range(len(rows))]  # noqa: E731
    assert word_starts([[1, 2, 3]], sp) == [[True, False, True]]


def test_propose_snaps_spans_to_words_before_pooling():
    tags = [TAG_O, TAG_KEY_B, TAG_O, TAG_O, TAG_VAL_B, TAG_O, TAG_O]
    head, hidden = _forced_head(tags)
    starts = [True, True, False, True, True, False, True]
    cands = head.propose(hidden, None, [starts])[0]
    assert [(c.key_span, c.value_span) for c in cands] == [((1, 3), (4, 6))]
    h = head.norm(hidden[0])
    torch.testing.assert_close(cands[0].value, head.value_proj(h[4:6].mean(0)))
    assert [(c.key_span, c.value_span) for c in head.propose(hidden)[0]] == [((1, 2), (4, 5))]
    ends = [[False, False, True, False, False, False, False]]  # the key's sentence ends before the value
    assert [(c.key_span, c.value_span) for c in head.propose(hidden, None, [starts], ends)[0]] == [((1, 3), None)]


def test_type_spans_reach_the_relation_region_only_when_asked():
    keys, values = torch.tensor([[1, 3], [4, 5]]), torch.tensor([[6, 8], [4, 5]])  # the second has no value
    assert GroundingHead(16, 8, 8).type_spans(keys, values, 9).tolist() == [[1, 8], [4, 5]]
    head = GroundingHead(16, 8, 8, type_reads_relation=True)
    assert head.type_spans(keys, values, 9).tolist() == [[1, 8], [4, 9]]  # 6 more tokens, cut at the length
    tags = [TAG_O, TAG_KEY_B, TAG_O, TAG_O, TAG_O]
    forced, hidden = _forced_head(tags)
    forced.type_reads_relation = True
    ev = forced.propose(hidden)[0][0].event_probs
    out = forced.forward(hidden)
    torch.testing.assert_close(ev, out.event_logits[0, 1:5].mean(0).softmax(-1))


def test_lifecycle_layer_types_candidates_and_leaves_the_writers_probabilities():
    tags = [TAG_O, TAG_KEY_B, TAG_KEY_I, TAG_VAL_B, TAG_O, TAG_KEY_B, TAG_O, TAG_O]
    plain, hidden = _forced_head(tags)
    head = GroundingHead(16, 8, 8, type_reads_relation=True, lifecycle_typing=True)
    head.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        head.lifecycle_event.weight.zero_()
        head.lifecycle_event.bias.copy_(torch.tensor([0.0, 0.0, 9.0, 0.0]))  # types everything a retraction
    want = plain.propose(hidden)[0]  # the writer's probabilities: event layer over key .. value
    got = head.propose(hidden)[0]
    assert [c.event_type for c in got] == [2, 2]
    for w, g in zip(want, got):
        torch.testing.assert_close(g.event_probs, w.event_probs)
    out = head.forward(hidden)
    assert out.lifecycle_logits.shape == out.event_logits.shape
    targets = torch.full((1, len(tags)), -100)
    targets[0, 1:4] = 0
    assert head.loss(out, torch.zeros(1, len(tags), dtype=torch.long), targets) > \
        plain.loss(plain.forward(hidden), torch.zeros(1, len(tags), dtype=torch.long), targets)
    assert GroundingHead(16, 8, 8).lifecycle_event is None


def test_propose_key_vector_is_pooled_entity_and_relation():
    tags = [TAG_KEY_B, TAG_KEY_I, TAG_O, TAG_O, TAG_VAL_B]
    head, hidden = _forced_head(tags)
    c = head.propose(hidden)[0][0]
    h = head.norm(hidden[0])
    expected = torch.nn.functional.normalize(head.key_proj(torch.cat([h[0:2].mean(0), h[2:4].mean(0)])), dim=-1)
    torch.testing.assert_close(c.key, expected)
    torch.testing.assert_close(c.value, head.value_proj(h[4:5].mean(0)))


def test_relation_spans_match_reference_and_cases():
    keys = torch.tensor([[2, 4], [5, 7], [8, 10], [12, 14], [0, 0]])
    values = torch.tensor([[6, 8], [5, 7], [10, 11], [15, 16], [0, 0]])  # value after gap / none / adjacent
    got = relation_spans(keys, values, torch.tensor(16))
    assert got.tolist() == relation_spans_reference(keys.tolist(), values.tolist(), 16)
    # relation "between"; a retraction reads the window after its key; adjacent value -> last key token
    assert got.tolist()[:3] == [[4, 6], [7, 13], [9, 10]]
    assert got.tolist()[3] == [14, 15] and got.tolist()[4] == [0, 0]
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        k0 = torch.randint(0, 20, (6,), generator=g)
        k1 = k0 + torch.randint(0, 4, (6,), generator=g)
        v0 = torch.where(torch.rand(6, generator=g) < 0.5, k0, k1 + torch.randint(0, 5, (6,), generator=g))
        ks, vs = torch.stack([k0, k1], -1), torch.stack([v0, v0 + 2], -1)
        assert relation_spans(ks, vs, 22).tolist() == relation_spans_reference(ks.tolist(), vs.tolist(), 22)


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
