"""The answer pointer's head and its batched span decoding, against the plain-loop reference."""

import pytest
import torch

from memadapter.answer_pointer import MAX_SPAN, AnswerPointer, best_spans, best_spans_reference, withdraws
from memadapter.errors import ShapeError
from memadapter.restatement import FEATURES as RESTATEMENT_FEATURES


@pytest.mark.parametrize("max_span", [1, 3, MAX_SPAN])
def test_best_spans_match_the_plain_loops(max_span):
    torch.manual_seed(0)
    logits = torch.randn(6, 12, 2)
    text = torch.zeros(6, 12, dtype=torch.bool)
    for b, (a, z) in enumerate([(1, 12), (3, 7), (5, 6), (2, 11), (8, 12), (0, 0)]):
        text[b, a:z] = True  # row 5 has no text
    null = torch.tensor([0, 2, 4, 1, 7, 3])
    start, end, margin = best_spans(logits, text, null, max_span)
    ref = best_spans_reference(logits, text, null, max_span)
    assert start.tolist() == ref[0] and end.tolist() == ref[1]
    assert torch.allclose(margin[:5], torch.tensor(ref[2][:5]), atol=1e-5)
    assert float(margin[5]) == float("-inf") and int(start[5]) == int(end[5]) == 3


def test_the_margin_is_the_span_over_the_null():
    logits = torch.full((1, 4, 2), -1.0)
    logits[0, 0] = 2.0  # the null: start 2, end 2
    logits[0, 2, 0], logits[0, 3, 1] = 5.0, 4.0
    text = torch.tensor([[False, True, True, True]])
    start, end, margin = best_spans(logits, text, torch.tensor([0]))
    assert (int(start), int(end), float(margin)) == (2, 3, 5.0)  # 5 + 4 - (2 + 2)


def test_the_head_and_the_shapes_it_refuses():
    head = AnswerPointer(8, hidden=0)
    assert head(torch.randn(3, 5, 8)).shape == (3, 5, 3) and isinstance(head.net, torch.nn.Linear)
    with pytest.raises(ShapeError, match="logits"):
        best_spans(torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ShapeError, match="text_mask"):
        best_spans(torch.randn(2, 5, 2), torch.ones(2, 4, dtype=torch.bool), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ShapeError, match="logits"):
        withdraws(torch.randn(2, 5, 2), torch.ones(2, 5, dtype=torch.bool))


def test_the_withdrawal_score_is_read_at_the_last_text_token():
    logits = torch.randn(3, 6, 3)
    text = torch.zeros(3, 6, dtype=torch.bool)
    text[0, 1:6], text[1, 2:4] = True, True  # row 2 has no text
    score = withdraws(logits, text)
    assert score[:2].tolist() == [float(logits[0, 5, 2]), float(logits[1, 3, 2])] and float(score[2]) == float("-inf")


def test_word_bounded_spans_match_the_plain_loops_and_fall_back_when_none_fits():
    torch.manual_seed(1)
    for _ in range(20):
        logits = torch.randn(4, 10, 2)
        text = torch.zeros(4, 10, dtype=torch.bool)
        text[:3, 2:] = True  # row 3 has no text
        starts, ends = torch.rand(4, 10) > 0.6, torch.rand(4, 10) > 0.6
        starts[0], ends[0] = False, False  # row 0: no bounded span at all -> any text tokens
        null = torch.ones(4, dtype=torch.long)
        got = best_spans(logits, text, null, 4, starts=starts, ends=ends)
        ref = best_spans_reference(logits, text, null, 4, starts=starts, ends=ends)
        assert got[0].tolist() == ref[0] and got[1].tolist() == ref[1]
        assert torch.allclose(got[2][:3], torch.tensor(ref[2][:3]), atol=1e-5) and float(got[2][3]) == float("-inf")
        free = best_spans(logits, text, null, 4)
        assert (int(got[0][0]), int(got[1][0])) == (int(free[0][0]), int(free[1][0]))
        for r in (1, 2):  # a bounded span was found: it starts and ends where allowed
            if (starts[r] & text[r]).any() and (ends[r] & text[r]).any() and bool(torch.isfinite(got[2][r])):
                if ref[0][r] != free[0][r] or ref[1][r] != free[1][r]:
                    assert bool(starts[r, got[0][r]]) and bool(ends[r, got[1][r]])


@pytest.mark.parametrize("text, cut, whole", [
    (" the code is D-21 now", "-21", "D-21"),
    (" magic number: 2856496.", "28564", "2856496"),
    (" mail zhipedak.s@yrouvopro.com today", "zhipedak.s@yrouvopro", "zhipedak.s@yrouvopro.com"),
    (" Wilson's geographer", "Wil", "Wilson"),  # before a possessive "'s" is a word's end
    (' she said "Porto", then', "Port", "Porto"),  # inside quotes and before a comma
])
def test_word_bounds_refuse_a_cut_word_and_keep_a_whole_one(text, cut, whole):
    import re

    from memadapter.answer_pointer import word_bounds

    offsets = [m.span() for m in re.finditer(r"\s?\w|[^\w\s]|\w", text)]  # one character (with its space) a token
    starts, ends = word_bounds(text, offsets)

    def allowed(span):
        i = text.index(span)
        s = next(k for k, (a, b) in enumerate(offsets) if a <= i < b)
        e = next(k for k, (a, b) in enumerate(offsets) if a < i + len(span) <= b)
        return starts[s] and ends[e]

    assert allowed(whole) and not allowed(cut)


def test_restatement_features_add_their_weighted_sum_to_the_start_and_end_scores_only():
    head = AnswerPointer(8, hidden=0)
    hidden, changes = torch.randn(2, 5, 8), torch.rand(2, 5, len(RESTATEMENT_FEATURES))
    assert torch.equal(head(hidden, changes), head(hidden))  # the weights start at zero
    with torch.no_grad():
        head.restated[:2] = torch.tensor([[1.0, 2.0], [3.0, -1.0]])  # the first two features only
    delta = head(hidden, changes) - head(hidden)
    assert torch.allclose(delta[..., 0], changes[..., 0] + 3 * changes[..., 1])
    assert torch.allclose(delta[..., 1], 2 * changes[..., 0] - changes[..., 1])
    assert float(delta[..., 2].detach().abs().max()) == 0.0  # the withdrawal score is not a span's


def test_the_hedge_score_is_read_at_the_last_text_token_and_starts_at_zero():
    head = AnswerPointer(4, hidden=0)
    hidden = torch.randn(3, 6, 4)
    text = torch.zeros(3, 6, dtype=torch.bool)
    text[0, 1:6], text[1, 2:4] = True, True  # row 2 has no text
    assert head.hedges(hidden, text)[:2].tolist() == [0.0, 0.0]  # unfitted: no sentence is hedged
    with torch.no_grad():
        head.hedge.weight.copy_(torch.tensor([[1.0, -2.0, 0.0, 0.5]]))
        head.hedge.bias.fill_(0.25)
    score = head.hedges(hidden, text)
    expect = [float(hidden[0, 5] @ head.hedge.weight[0]) + 0.25, float(hidden[1, 3] @ head.hedge.weight[0]) + 0.25]
    assert score[:2].tolist() == pytest.approx(expect) and float(score[2]) == float("-inf")
    assert torch.equal(head(hidden), head.net(hidden))  # the span and withdrawal scores ignore it
