import pytest

from memadapter.errors import ConfigError
from memadapter.evaluation.samples import RULER_DEPTHS, EssayHaystack, insert_at_depths, prompt_ids

from eval_helpers import HAYSTACK_WORDS


def test_ruler_depths_are_forty_even_steps():
    assert len(RULER_DEPTHS) == 40 and RULER_DEPTHS[0] == 0 and RULER_DEPTHS[-1] == 100
    assert RULER_DEPTHS[:4] == (0, 3, 5, 8)  # round(100 * i / 39)


def test_insert_at_depths_places_inserts_in_order_at_their_sentence():
    sents = [f"s{i}." for i in range(10)]
    out = insert_at_depths(sents, ["A", "B", "C"], [50, 0, 100]).split()
    assert out.index("A") == 0 and out.index("B") == 6 and out[-1] == "C"  # depths sorted, inserts keep order
    with pytest.raises(ConfigError, match="depths"):
        insert_at_depths(sents, ["A"], [1, 2])


def test_haystack_context_fits_the_budget_and_keeps_every_insert(tok):
    hay = EssayHaystack(tok, HAYSTACK_WORDS.split())
    for budget in (40, 97, 300):
        text = hay.context(budget, ["NEEDLE one.", "NEEDLE two."], [10, 90])
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        assert budget - 25 <= n <= budget  # full up to about one sentence
        assert text.count("NEEDLE") == 2 and text.index("one.") < text.index("two.")


def test_prompt_without_chat_template_is_the_plain_text(tok):
    ids = prompt_ids(tok, "The sky is", " blue.")
    assert tok.decode(ids) == "The sky is blue."
