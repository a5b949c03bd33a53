"""Lifecycle streams: label spans, answer semantics, held-out split disjointness, determinism, datasets."""

from __future__ import annotations

import random
import re

import pytest

from memadapter.errors import CapacityError, ConfigError, DTypeError
from memadapter.training import lifecycle_data as ld
from memadapter.training import lifecycle_vocab as vocab
from memadapter.training.lifecycle_data import (
    ATTRIBUTES, SPLITS, UNKNOWN, AttributeSpec, build_dataset, build_splits, generate_stream,
)

SMALL = dict(num_entities=4, num_updates=3, num_distractors=4, num_uniform=2)


def streams(split: str, n: int = 40, seed: int = 0, **kw) -> list[dict]:
    rng = random.Random(seed)
    return [generate_stream(rng, split=split, **{**SMALL, **kw}) for _ in range(n)]


@pytest.fixture(scope="module")
def by_split() -> dict[str, list[dict]]:
    return {s: streams(s, n=30, seed=i) for i, s in enumerate(SPLITS)}


def test_spans_point_at_the_right_substrings(by_split):
    for split, rows in by_split.items():
        for s in rows:
            aliases = {e["name"]: [a.lower() for a in e["aliases"]] for e in s["entities"]}
            for ev in s["events"]:
                text = s["text"]
                assert ev["start"] <= ev["key_start"] < ev["key_end"] <= ev["end"]
                assert text[ev["key_start"]:ev["key_end"]] == ev["key_text"]
                assert ev["key_text"].lower() in aliases[ev["entity"]]
                if ev["event_type"] == "retract":
                    assert ev["value"] is None and ev["value_start"] == ev["value_end"] == -1
                else:
                    assert ev["key_end"] <= ev["value_start"] < ev["value_end"] <= ev["end"]
                    assert text[ev["value_start"]:ev["value_end"]] == ev["value"]
                    assert ev["value"] in ATTRIBUTES[ev["attribute"]].values
                sentence = text[ev["start"]:ev["end"]]
                assert (sentence[0].isupper() or sentence[0] == "[") and sentence.endswith((".", "?", "!"))


def test_answers_are_the_latest_unretracted_version(by_split):
    """Re-derive every answer by replaying the lifecycle events in order (independent of the planner)."""
    for rows in by_split.values():
        for s in rows:
            state: dict[tuple[str, str], tuple[str, int]] = {}
            for i, ev in enumerate(s["events"]):
                if ev["event_type"] in ("new", "update"):
                    state[(ev["entity"], ev["attribute"])] = (ev["value"], i)
                elif ev["event_type"] == "retract":
                    state[(ev["entity"], ev["attribute"])] = (UNKNOWN, i)
            assert s["questions"]
            for q in s["questions"]:
                assert (q["answer"], q["answer_event"]) == state[(q["entity"], q["attribute"])]
                assert "{" not in q["question"] and q["question"].endswith(("?", "."))


def test_stale_lists_the_earlier_versions_of_the_asked_fact_only(by_split):
    """Re-derive each question's ``stale`` list from the events: earlier values of the same fact
    (entity + attribute, same role), oldest first, never the gold or a rumour of the fact; a question
    about a look-alike has none (the look-alike's one value is its gold)."""
    seen = {"overwrite": 0, "retraction": 0, "lookalike": 0}
    for rows in by_split.values():
        for s in rows:
            for q in s["questions"]:
                answer_ev = s["events"][q["answer_event"]]
                earlier = [e["value"] for e in s["events"][:q["answer_event"]]
                           if (e["entity"], e["attribute"]) == (q["entity"], q["attribute"])
                           and e["role"] == answer_ev["role"] and e["value"] is not None]
                assert q["stale"] == earlier and q["answer"] not in q["stale"]
                rumours = {e["value"] for e in s["events"]  # wrong values said of this very fact
                           if e["role"] == "noise" and (e["entity"], e["attribute"]) == (q["entity"], q["attribute"])}
                assert not rumours & set(q["stale"])
                if q["kind"] == "overwrite":  # one update: the stale list is the value it replaced
                    assert len(q["stale"]) == 1 and q["stale"][0] != q["answer"]
                    seen["overwrite"] += 1
                if q["kind"] == "retraction":  # every value the fact ever held is stale now
                    assert q["answer"] == UNKNOWN and q["stale"]
                    seen["retraction"] += 1
                if answer_ev["role"] == "lookalike":
                    assert q["stale"] == []
                    seen["lookalike"] += 1
    assert min(seen.values()) > 5, seen


def test_stale_values_keep_order_and_drop_the_gold_and_repeats():
    from types import SimpleNamespace as P

    chain = [P(value="Lyon"), P(value="Porto"), P(value="Lyon"), P(value="Graz")]
    assert ld.stale_values(chain, "Graz") == ["Lyon", "Porto"]
    assert ld.stale_values(chain[:2] + [P(value="Lyon")], "Lyon") == ["Porto"]  # a revert: the gold is not stale
    assert ld.stale_values(chain[:1], "Lyon") == []


def test_versions_and_signals(by_split):
    for s in by_split["train"]:
        last: dict[tuple[str, str], int] = {}
        for ev in s["events"]:
            k = (ev["entity"], ev["attribute"])
            if ev["role"] == "main":
                assert ev["signal"] and ev["version"] == last.get(k, 0) + 1
                last[k] = ev["version"]
            elif ev["role"] == "uniform":
                assert not ev["signal"] and ev["version"] == 1 and ev["event_type"] == "new"
            elif ev["role"] == "noise":
                assert ev["event_type"] == "irrelevant" and not ev["signal"] and ev["version"] == 0
            if ev["signal"]:
                # the explicit write signal is text before the key: a marker, a date or a timestamp
                prefix = s["text"][ev["start"]:ev["key_start"]]
                assert re.match(r"(Note:|Record:|Update:|Correction:|Revision \d+:|\[\d{4}-|On \d|As of \d)", prefix)


def test_distractors_are_lookalikes_with_their_own_values(by_split):
    seen_lookalike = 0
    for s in by_split["train"]:
        answers = {(q["entity"], q["attribute"]): q["answer"] for q in s["questions"]}
        for ev in s["events"]:
            if ev["role"] != "lookalike":
                continue
            seen_lookalike += 1
            mains = [e for e in s["events"] if e["role"] == "main" and e["attribute"] == ev["attribute"]
                     and e["entity"] != ev["entity"] and e["entity"].split()[-1] == ev["entity"].split()[-1]
                     or e["role"] == "main" and ev["entity"].startswith(e["entity"] + " ")]
            assert mains, ev  # a main entity that looks alike exists
            main = mains[0]["entity"]
            assert main != ev["entity"]
            assert ev["value"] != answers.get((main, ev["attribute"]))
        for ev in s["events"]:
            if ev["role"] == "noise":  # a rumour never states the real answer
                assert ev["value"] != answers[(ev["entity"], ev["attribute"])]
    assert seen_lookalike > 10


def test_every_question_kind_occurs(by_split):
    kinds = {q["kind"] for rows in by_split.values() for s in rows for q in s["questions"]}
    assert kinds == set(ld.QUESTION_KINDS)


def test_aliases_are_unambiguous_and_questions_use_them(by_split):
    aliased = 0
    for s in by_split["train"]:
        surfaces = {}
        for e in s["entities"]:
            for a in e["aliases"]:
                assert surfaces.setdefault(a.lower(), e["name"]) == e["name"]
        for q in s["questions"]:
            assert q["key_text"] in q["question"] or q["key_text"][0].upper() + q["key_text"][1:] in q["question"]
            aliased += q["key_text"] != q["entity"]
    assert aliased > 0


def test_entity_names_of_the_unseen_entity_split_never_occur_in_train(by_split):
    def names(rows):
        return {e["name"] for s in rows for e in s["entities"]}

    def words(rows):
        return {w for n in names(rows) for w in n.split() if w[0].isupper() and w not in ("Project", "Mini", "II", "Next")}

    train = by_split["train"] + by_split["validation"] + by_split["test_long"]
    assert names(train).isdisjoint(names(by_split["test_unseen_entities"]))
    assert words(train).isdisjoint(words(by_split["test_unseen_entities"]))
    for pools in (vocab.FIRST_NAME_PAIRS, vocab.LAST_NAMES, vocab.PROJECT_WORDS, vocab.PRODUCT_BRANDS):
        assert set(map(str, pools["train"])).isdisjoint(map(str, pools["heldout"]))


def _fragments(template: str) -> list[str]:
    return [f.strip() for f in re.split(r"\{\w+\}", template) if len(f.strip()) > 3]


def test_unseen_templates_never_appear_in_train(by_split):
    used = lambda rows: {x["template"] for s in rows for x in s["events"] + s["questions"]}  # noqa: E731
    train, held = used(by_split["train"] + by_split["validation"]), used(by_split["test_unseen_templates"])
    assert train and held and train.isdisjoint(held)
    # Stronger: the longest literal piece of each held-out template is in no train template.
    train_pool = {t for a in ATTRIBUTES.values() for t in a.new + a.update + a.questions}
    train_pool |= set(vocab.RETRACT_TEMPLATES[0] + vocab.NOISE_TEMPLATES[0])
    held_pool = {t for a in ATTRIBUTES.values() for t in a.heldout_new + a.heldout_update + a.heldout_questions}
    held_pool |= set(vocab.RETRACT_TEMPLATES[1] + vocab.NOISE_TEMPLATES[1])
    for t in held_pool:
        longest = max(_fragments(t), key=len)
        assert not any(longest in u for u in train_pool), (t, longest)
    assert held <= held_pool


def test_unseen_attribute_types_never_appear_in_train(by_split):
    attrs = lambda rows: {x["attribute"] for s in rows for x in s["events"] + s["questions"]}  # noqa: E731
    train = attrs(by_split["train"] + by_split["validation"] + by_split["test_unseen_templates"])
    held = attrs(by_split["test_unseen_attributes"])
    assert held and train.isdisjoint(held)
    assert held == {a.name for a in ATTRIBUTES.values() if a.heldout}


def test_generation_is_deterministic_under_a_seed():
    a = streams("train", n=3, seed=11, filler_tokens=100)
    assert a == streams("train", n=3, seed=11, filler_tokens=100)
    assert a != streams("train", n=3, seed=12, filler_tokens=100)


def test_filler_pads_between_events_and_never_names_an_entity():
    s = generate_stream(random.Random(2), filler_tokens=600, filler_source="embedded", **SMALL)
    bare = generate_stream(random.Random(2), filler_tokens=0, **SMALL)
    assert len(s["text"]) > len(bare["text"]) + 1500
    covered = [False] * len(s["text"])
    for ev in s["events"]:
        covered[ev["start"]:ev["end"]] = [True] * (ev["end"] - ev["start"])
    gaps = "".join(" " if c else ch for c, ch in zip(covered, s["text"]))
    for e in s["entities"]:
        for a in e["aliases"]:
            assert a not in gaps


def test_no_retraction_when_disabled_and_counts_respected():
    for s in streams("train", n=10, retractions=False):
        assert all(ev["event_type"] != "retract" for ev in s["events"])
        assert sum(ev["event_type"] == "update" for ev in s["events"]) == SMALL["num_updates"]
        assert sum(ev["role"] == "main" and ev["version"] == 1 for ev in s["events"]) == SMALL["num_entities"]
        assert sum(ev["role"] in ("lookalike", "noise") for ev in s["events"]) == SMALL["num_distractors"]
        assert sum(ev["role"] == "uniform" for ev in s["events"]) == SMALL["num_uniform"]


def test_bad_arguments_raise_typed_errors():
    rng = random.Random(0)
    with pytest.raises(ConfigError, match="split"):
        generate_stream(rng, split="dev")
    with pytest.raises(CapacityError, match="num_entities"):
        generate_stream(rng, num_entities=0)
    with pytest.raises(DTypeError, match="num_updates"):
        generate_stream(rng, num_updates=1.0)
    with pytest.raises(ConfigError, match="rng"):
        generate_stream(42)
    with pytest.raises(CapacityError, match="num_updates"):  # more versions than the value pool holds
        generate_stream(rng, num_entities=1, num_updates=40)
    with pytest.raises(ConfigError, match="template"):
        AttributeSpec("x", "x", ("person",), ("a", "b", "c", "d"), ("{value} is {key}.",), (), ())


def test_build_dataset_and_splits():
    ds = build_dataset("train", 5, seed=1, filler_tokens=50)
    assert ds.num_rows == 5 and set(ds.column_names) == {"id", "split", "text", "events", "questions", "entities"}
    assert ds[0] == build_dataset("train", 5, seed=1, filler_tokens=50)[0]
    assert ds[0]["events"][0]["value_start"] >= 0
    sizes = {s: 3 for s in SPLITS}
    dd = build_splits(seed=0, sizes=sizes, shapes={"test_long": {"filler_tokens": 1500}}, filler_tokens=20)
    assert set(dd) == set(SPLITS) and all(dd[s].num_rows == 3 for s in SPLITS)
    mean = lambda s: sum(map(len, dd[s]["text"])) / 3  # noqa: E731
    assert mean("test_long") > 3 * mean("train")
    assert all(r == s for s in SPLITS for r in dd[s]["split"])
    with pytest.raises(ConfigError, match="sizes"):
        build_splits(sizes={"dev": 3})
    with pytest.raises(ConfigError, match="split"):
        build_dataset("dev", 3, seed=0)


def test_synthetic_names_are_made_up_never_held_out_and_only_for_training_splits():
    rows = [ld.generate_stream(random.Random(i), synthetic_names=1.0, filler_tokens=0) for i in range(20)]
    names = {e["name"] for s in rows for e in s["entities"]}
    pools = {w for pool in (vocab.LAST_NAMES, vocab.PROJECT_WORDS, vocab.PRODUCT_BRANDS) for p in pool.values() for w in p}
    pools |= {f for p in vocab.FIRST_NAME_PAIRS.values() for pair in p for f in pair}
    words = {w for n in names for w in n.split() if w[0].isupper() and w not in ("Project", "Mini", "II", "Next")}
    assert len(words) > 40 and words.isdisjoint(pools)  # every name is made up, none from any pool
    for s in rows:  # labels stay right: every event's key text is in the text at its span
        for e in s["events"]:
            assert s["text"][e["key_start"]:e["key_end"]] == e["key_text"]
    # a share of 0 draws no extra random numbers: old streams are unchanged
    assert ld.generate_stream(random.Random(3))["text"] == ld.generate_stream(random.Random(3), synthetic_names=0.0)["text"]
    with pytest.raises(ConfigError, match="synthetic_names"):
        ld.generate_stream(random.Random(0), split="test_unseen_entities", synthetic_names=0.5)
    with pytest.raises(ConfigError, match="synthetic_names"):
        ld.generate_stream(random.Random(0), synthetic_names=1.5)
