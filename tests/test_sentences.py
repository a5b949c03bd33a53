"""Sentence splitting in the core (memadapter/sentences.py): what the read path's sentence rows and
the training corpora are cut with."""

from memadapter.sentences import split_sentences


def test_boundaries_need_a_capital_digit_or_quote_after_them():
    assert split_sentences("It rained. Did it stop? \"Yes!\" she said. Then we left.") == [
        "It rained.", "Did it stop?", '"Yes!" she said.', "Then we left."]
    assert split_sentences("Version 2.5 is out. 3 users left.") == ["Version 2.5 is out.", "3 users left."]
    assert split_sentences("lower case. never splits.") == ["lower case. never splits."]


def test_abbreviations_join_the_next_piece_and_blank_text_has_none():
    assert split_sentences("Dr. Lee met Mr. Park. They talked.") == ["Dr. Lee met Mr. Park.", "They talked."]
    assert split_sentences("") == [] and split_sentences("   ") == []


def test_the_training_filler_reads_the_same_function():
    from memadapter.training import filler

    assert filler.split_sentences is split_sentences
