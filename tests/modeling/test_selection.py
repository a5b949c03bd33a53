import torch

from memadapter.modeling.selection import SelectedRow, sentence_around, stack_selection


def test_stack_selection_pads_rows_and_value_ids():
    rows = [SelectedRow(torch.ones(2, 3), ["a: 1", "b: 2"], [[5, 6, 7, 8], []], "memory"),
            SelectedRow(torch.zeros(0, 3), [], [], "fallback")]
    sel = stack_selection(rows, value_dim=3, value_tokens=3)
    assert sel.values.shape == (2, 2, 3) and sel.valid.tolist() == [[True, True], [False, False]]
    assert sel.value_ids.tolist() == [[[5, 6, 7], [-1, -1, -1]], [[-1, -1, -1], [-1, -1, -1]]]  # cut at 3
    assert sel.branch == ["memory", "fallback"] and sel.memory_text(0) == "Memory: a: 1 ; b: 2"
    assert sel.memory_text(1) is None
    assert stack_selection(rows, value_dim=3, value_tokens=0).value_ids is None


def test_sentence_around_reaches_the_sentence_ends_either_side():
    words = "Rain fell . The deadline for Nimbus is May 2 . Bob left .".split()
    decode = " ".join
    assert sentence_around(decode, words, 5, 10) == "The deadline for Nimbus is May 2 ."  # "The deadline" before the key
    assert sentence_around(decode, words, 5, 7) == "The deadline for Nimbus is May 2 ."
    assert sentence_around(decode, words, 0, 1) == "Rain fell ."
    assert sentence_around(decode, words, 12, 13) == "Bob left ."
    assert sentence_around(decode, words[:-1], 12, 13) == "Bob left"  # no end: the text's end
    assert sentence_around(decode, words, 50, 60) == ""  # out of range: nothing, no error
