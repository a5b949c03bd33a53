"""experiments/restated_drop_signal.py: the count of restating sentences by entity and dropped question words."""

from experiments.restated_drop_signal import count


def _event(text, sentence, entity):
    start = text.index(sentence)
    return {"start": start, "end": start + len(sentence), "entity": entity}


def test_a_look_alike_restating_the_asked_sentence_drops_its_name_and_a_correction_does_not():
    s1, s2, s3 = "Anna Brandt lives in Bergen.", "Anne Brandt lives in Bergen.", "Anna Brandt lives in Oslo now."
    text = " ".join((s1, s2, s3))
    stream = {"text": text, "events": [_event(text, s, e) for s, e in ((s1, "Anna"), (s2, "Anne"), (s3, "Anna"))],
              "questions": [{"question": "Where does Anna Brandt live?", "entity": "Anna"}]}
    assert count([stream]) == {("other", True): 1, ("same", False): 1}
