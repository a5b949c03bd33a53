import pytest

from memadapter.errors import ConfigError
from memadapter.evaluation.scoring import is_stale, load_metric, string_match_all, string_match_part

PREDS = ["The numbers are 1234567 and 7654321.", "paris", "nothing here", "BRITISH troops came"]
REFS = [["1234567", "7654321", "1111111"], ["Paris", "Lyon"], ["x1"], ["British troops", "militia"]]


def test_plain_metrics_follow_ruler():
    assert string_match_all(PREDS[0], REFS[0]) == pytest.approx(2 / 3)
    assert string_match_part(PREDS[0], REFS[0]) == 1.0
    assert [string_match_part(p, r) for p, r in zip(PREDS, REFS)] == [1.0, 1.0, 0.0, 1.0]
    assert string_match_all(PREDS[1], REFS[1]) == 0.5
    with pytest.raises(ConfigError, match="references"):
        string_match_all("a", [])


def test_stale_is_a_superseded_value_in_the_answer():
    assert is_stale("it is 5541020", ["5541020"]) and not is_stale("it is 2755786", ["5541020"])
    assert not is_stale("anything", [])


@pytest.mark.parametrize("name,plain", [("string_match_all", string_match_all), ("string_match_part", string_match_part)])
def test_local_evaluate_modules_load_offline_and_agree(name, plain, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = load_metric(name).compute(predictions=PREDS, references=REFS)
    want = [plain(p, r) for p, r in zip(PREDS, REFS)]
    assert out["scores"] == pytest.approx(want) and out[name] == pytest.approx(sum(want) / len(want))
