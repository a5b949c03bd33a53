import random

import torch

from memadapter.modeling.selection import (SelectedRow, latest_version, most_specific, sentence_around, slot_versions,
                                           stack_selection)


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


def test_latest_version_takes_the_newest_version_and_only_with_a_margin():
    keys = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])  # 2 is another fact
    scores, order = [0.9, 0.85, 0.88, 0.4], [10, 30, 50, 60]
    assert latest_version(scores, order, keys, None, 0.7) == 0  # best score
    assert latest_version(scores, order, keys, 0.0, 0.7) == 0  # no near tie
    assert latest_version(scores, order, keys, 0.1, 0.7) == 1  # 2 is later but not a version; 3 too far below
    assert latest_version(scores, order, keys, 1.0, 0.7) == 3
    assert latest_version(scores, order, keys, 1.0, -1.0) == 3
    assert latest_version(scores, order, keys, 0.1, 0.7, eligible=[True, False, True, True]) == 0
    assert latest_version([0.5, 0.7, 0.7], [5, 5, 5], keys[:3] * 0 + 1, 0.5, 0.0) == 1  # equal order: score, then first


def test_slot_versions_agrees_with_the_plain_latest_version():
    """The batched rule finds, per row, the same newest version that latest_version reads, and
    marks exactly the best slot and the slots that pass its version test."""
    rng = random.Random(0)
    for _ in range(300):
        m, margin, min_cos = rng.randint(1, 7), rng.choice([0.0, 0.05, 0.2, 1.0]), rng.choice([-1.0, 0.0, 0.5])
        scores = [rng.choice([float("-inf"), rng.uniform(-1, 1)]) for _ in range(m)]
        scores[rng.randrange(m)] = rng.uniform(-1, 1)  # at least one occupied slot
        time = [rng.randrange(5) for _ in range(m)]  # repeats: ties go to the score
        keys = torch.nn.functional.normalize(torch.randn(m, 3), dim=-1)
        versions, newest = slot_versions(torch.tensor([scores]), torch.tensor([time]), keys[None], margin, min_cos)
        live = [i for i in range(m) if scores[i] != float("-inf")]
        pick = live[latest_version([scores[i] for i in live], [time[i] for i in live], keys[live], margin, min_cos)]
        assert int(newest[0]) == pick
        best = max(live, key=lambda i: scores[i])
        want = [i in live and (i == best or (scores[i] >= scores[best] - margin and float(keys[i] @ keys[best]) >= min_cos))
                for i in range(m)]
        assert versions[0].tolist() == want
    versions, newest = slot_versions(torch.full((1, 3), float("-inf")), torch.zeros(1, 3, dtype=torch.long),
                                     torch.zeros(1, 3, 2), 0.1, 0.7)
    assert not versions.any() and newest.tolist() == [-1]


def test_most_specific_drops_entries_that_name_fewer_of_the_questions_words():
    q = "What does the Lumen Mini printer cost?"
    assert most_specific(q, ["the Lumen printer", "The Lumen Mini printer", "the Lumen Mini printer", ""]) == [1, 2]
    assert most_specific(q, ["the Lumen printer", "the Acme Mini kettle"]) == [0, 1]  # neither set holds the other
    assert most_specific(q, ["x", "y"]) == [0, 1] and most_specific(q, []) == []
    # a key span cut inside a name names it only with fragments (4+ letters, at the word's start or end)
    q = "What is the public name of Project Toumuchol?"
    keys = ["Project Toumuch", "oumuchol", "Project Toumuchol", "Project Tou"]
    assert most_specific(q, keys) == [2]
    assert most_specific(q, keys, fragments=True) == [0, 2]
    assert most_specific("Where does Steidim Faikrous work?", ["idim Faikrous", "Steidim Faikrous"], fragments=True) == [0, 1]


def test_most_specific_foreign_names_drops_look_alikes():
    q = "Which company does Martin Brandt work for?"
    keys = ["Paul Brandt", "Paula Brandt", "Brandt", "Louis Hughes"]
    assert most_specific(q, keys) == [0, 1, 2]
    assert most_specific(q, keys, foreign_names=True) == [2]
    # a look-alike stays when no entry names as many of the question's words without a foreign name
    assert most_specific(q, ["Paul Brandt", "Paula Brandt"], foreign_names=True) == [0, 1]
    assert most_specific(q, ["Paul Brandt", "Martin"], foreign_names=True) == [1]  # as many, no foreign name
    assert most_specific(q, ["Paul Brandt", "Martin Brandt"], foreign_names=True) == [1]
    # a name the key adds is no substitute for one the question names ("Who employs Staigous?")
    assert most_specific("Who employs Staigous?", ["Staigous Hahul", "Staigous"], foreign_names=True) == [0, 1]
    assert most_specific("Who employs Staigous Hahul?", ["Staigous Hahul", "Staigous Dobos"], foreign_names=True) == [0]
    # only capitalised words are names: a lower-case word the key leaves out or adds is none
    q = "When is the Glacier project due?"
    assert most_specific(q, ["Project Glacier's deadline", "Project Glacier II", "the Glacier project"],
                         foreign_names=True) == [0, 1, 2]
    # with fragments "Daniel" names "Daniela": no longer foreign
    q = "What is Daniela Berger's home city?"
    assert most_specific(q, ["Daniela", "Daniel Berger"], foreign_names=True) == [0]
    assert most_specific(q, ["Daniela", "Daniel Berger"], fragments=True, foreign_names=True) == [1]


