"""memadapter.restatement: which words of a restated sentence changed, and the earlier sentence it restates."""

import pytest

from memadapter.restatement import FEATURES, nearest_earlier, replaced_runs, restatement, token_changes


def test_a_correction_marks_its_new_value_replaced_and_its_signal_inserted():
    old = "Setanta Sports was awarded two of the six Premier League packages."
    new = "Update: Setanta Sports was awarded Wilson's geographer of the six Premier League packages."
    share, changes = restatement(new, old)
    assert [(new[s:e], kind) for s, e, kind in changes] == [("Update:", "inserted"), ("Wilson's geographer", "replaced")]
    assert share == 10 / 13  # 10 of its 13 words are repeated in order


def test_a_sentence_that_restates_nothing_is_one_replaced_run_and_shares_nothing():
    share, changes = restatement("Bob lives in Rome.", "It rained all day")
    assert share == 0.0 and [kind for *_, kind in changes] == ["replaced"]
    assert restatement("", "anything") == (0.0, [])


def test_token_changes_mark_a_replaced_run_its_first_and_last_token_and_inserted_words_scaled_and_as_flags():
    text = " Update: the code is D-21 now."
    offsets = [(0, 7), (7, 8), (8, 12), (12, 17), (17, 20), (20, 22), (22, 23), (23, 25), (25, 29), (29, 30)]
    feats = [dict(zip(FEATURES, f)) for f in token_changes(text, "The code is C-7 now.", offsets)]
    share = 4 / 6  # "the code is ... now." repeated; "Update:" inserted, "D-21" replaces "C-7"
    assert [t for t, f in enumerate(feats) if f["inserted_flag"]] == [0, 1] and feats[0]["inserted"] == share
    assert [t for t, f in enumerate(feats) if f["replaced_flag"]] == [5, 6, 7]  # " D", "-", "21"
    assert [t for t, f in enumerate(feats) if f["first_replaced"]] == [5] and \
        [t for t, f in enumerate(feats) if f["last_replaced"]] == [7]
    assert feats[5]["replaced"] == share and feats[5]["first_replaced_flag"] == 1.0 and feats[8]["replaced"] == 0.0
    assert token_changes(text, None, offsets) == [[0.0] * len(FEATURES)] * len(offsets)


def test_nearest_earlier_prefers_the_sentence_holding_most_of_its_words():
    earlier = ["Alice moved to Oslo.", "The Rhine flows north.", "The Rhine is the longest river in Germany."]
    assert nearest_earlier("The Rhine is the longest river in Brest.", earlier) == 2
    assert nearest_earlier("Nothing shared here", earlier) is None
    assert nearest_earlier("anything", []) is None


def test_replaced_runs_are_the_replaced_words_without_sentence_punctuation_at_their_edges():
    new = 'Correction: the band was formed in "Time", Tennessee in 1999.'
    share, runs = replaced_runs(new, "The band was formed in Knoxville, Tennessee in 1999.")
    assert [new[a:b] for a, b in runs] == ['"Time"'] and share == pytest.approx(8 / 10)
    assert replaced_runs("Alice lives in Paris.", "Alice lives in Paris.") == (1.0, [])  # nothing changed
    assert replaced_runs("Update: Alice lives in Paris.", "Alice lives in Paris.")[1] == []  # inserted only
