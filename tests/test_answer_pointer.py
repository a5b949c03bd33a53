"""The answer pointer's head and its batched span decoding, against the plain-loop reference."""

import pytest
import torch

from memadapter.answer_pointer import MAX_SPAN, AnswerPointer, best_spans, best_spans_reference, withdraws
from memadapter.errors import ShapeError


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
