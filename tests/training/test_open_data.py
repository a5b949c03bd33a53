"""Open-text lifecycle streams: spans, answers, determinism, disjoint held-out pools, schema, collator."""

from __future__ import annotations

import random
import re

import datasets
import pytest

from memadapter.errors import ConfigError
from memadapter.training import open_vocab as V
from memadapter.training.lifecycle_data import QUESTION_KINDS, UNKNOWN, stream_features
from memadapter.training.open_data import (SPLITS, build_open_dataset, corpus_documents, generate_open_stream,
                                           open_split_style, stable_half)

SHAPE = dict(num_entities=4, num_updates=3, num_distractors=4, num_uniform=2)


@pytest.fixture(scope="module")
def by_split():
    """Six small streams per split, with a little real filler."""
    return {sp: [generate_open_stream(random.Random(f"t{i}"), split=sp, filler_tokens=40, **SHAPE)
                 for i in range(6)] for sp in SPLITS}


def _families(streams):
    return {e["template"].split("|")[0] for s in streams for e in s["events"]} | \
        {q["template"].split("|")[0] for s in streams for q in s["questions"]}


def _attributes(streams):
    return {e["attribute"] for s in streams for e in s["events"]}


def test_spans_point_at_keys_and_whole_values(by_split):
    for streams in by_split.values():
        for s in streams:
            for e in s["events"]:
                assert s["text"][e["start"]:e["end"]].strip()
                assert s["text"][e["key_start"]:e["key_end"]] == e["key_text"] != ""
                if e["event_type"] == "retract":
                    assert e["value_start"] == -1 and e["value"] is None
                else:
                    assert s["text"][e["value_start"]:e["value_end"]] == e["value"]
                    # the span is the whole value: never glued to a neighbouring letter or digit
                    assert not re.match(r"\w", s["text"][e["value_end"]:e["value_end"] + 1] or " ")


def test_answers_are_the_answer_events_value_or_unknown(by_split):
    kinds = set()
    for streams in by_split.values():
        for s in streams:
            for q in s["questions"]:
                ev = s["events"][q["answer_event"]]
                kinds.add(q["kind"])
                assert q["kind"] in QUESTION_KINDS
                assert (ev["entity"], ev["attribute"]) == (q["entity"], q["attribute"])
                assert q["answer"] == (UNKNOWN if ev["event_type"] == "retract" else ev["value"])
                later = [e for e in s["events"][q["answer_event"] + 1:]
                         if (e["entity"], e["attribute"]) == (q["entity"], q["attribute"]) and e["role"] == "main"]
                assert not later, "the answer is the latest version of its fact"
    assert {"overwrite", "distractor", "uniform", "retraction"} <= kinds


def test_stale_lists_the_earlier_versions_of_the_asked_fact_only(by_split):
    seen = {"overwrite": 0, "retraction": 0, "lookalike": 0}
    for streams in by_split.values():
        for s in streams:
            for q in s["questions"]:
                answer_ev = s["events"][q["answer_event"]]
                earlier = []
                for e in s["events"][:q["answer_event"]]:
                    if (e["entity"], e["attribute"]) == (q["entity"], q["attribute"]) and \
                            e["role"] == answer_ev["role"] and e["value"] not in (None, q["answer"], *earlier):
                        earlier.append(e["value"])
                assert q["stale"] == earlier and q["answer"] not in q["stale"]
                assert not {e["value"] for e in s["events"] if e["role"] == "noise"  # rumours of this very fact
                            and (e["entity"], e["attribute"]) == (q["entity"], q["attribute"])} & set(q["stale"])
                if q["kind"] == "overwrite":
                    assert q["stale"] and q["answer"] not in q["stale"]
                    seen["overwrite"] += 1
                if q["kind"] == "retraction":
                    assert q["answer"] == UNKNOWN and q["stale"]
                    seen["retraction"] += 1
                if answer_ev["role"] == "lookalike":
                    assert q["stale"] == []
                    seen["lookalike"] += 1
    assert min(seen.values()) > 2, seen


def test_deterministic_per_seed():
    a = build_open_dataset("train", 2, seed=3, filler_tokens=30)
    b = build_open_dataset("train", 2, seed=3, filler_tokens=30)
    c = build_open_dataset("train", 2, seed=4, filler_tokens=30)
    assert a.to_list() == b.to_list() and a.to_list() != c.to_list()
    assert isinstance(a, datasets.Dataset) and a.features == stream_features()


def test_held_out_template_families_are_disjoint_and_never_in_train(by_split):
    train = _families(by_split["train"] + by_split["validation"])
    val, test = _families(by_split["val_unseen_templates"]), _families(by_split["test_unseen_templates"])
    assert val <= set(V.FAMILY_SPLITS["val"]) and test <= set(V.FAMILY_SPLITS["test"])
    assert not (val & test) and not (train & (val | test))
    assert "chat" in train  # the first-person chat family trains


def test_held_out_attributes_are_disjoint_and_never_in_train(by_split):
    pools = {k: {a.name for a in V.attribute_pool(k)} for k in ("train", "val", "test")}
    assert len(pools["train"]) >= 300 and not (pools["val"] & pools["test"]) and not (pools["train"] & pools["val"])
    assert any(a.made_up for a in V.attribute_pool("test")) and not (pools["train"] & pools["test"])
    assert _attributes(by_split["train"]) <= pools["train"]
    assert _attributes(by_split["val_unseen_attributes"]) <= pools["val"]
    assert _attributes(by_split["test_unseen_attributes"]) <= pools["test"]


def test_held_out_splits_use_unseen_names(by_split):
    """Held-out names come from onsets that no train word uses."""
    held_onset = re.compile(r"\b(?:" + "|".join(o.capitalize() for o in V._HELD_ONSETS) + r")[a-z]")
    for s in by_split["train"] + by_split["validation"]:
        assert not any(held_onset.search(e["name"]) for e in s["entities"])
    for s in by_split["test_unseen_templates"]:
        assert all(held_onset.search(e["name"]) for e in s["entities"] if e["kind"] in ("person", "org"))


def test_corpus_split_filler_is_held_out():
    assert open_split_style("train").filler == open_split_style("test_unseen_templates").filler
    assert all(c != "hotpotqa" for c, _ in open_split_style("train").filler)
    val, test = open_split_style("val_unseen_corpus").filler, open_split_style("test_unseen_corpus").filler
    assert val == (("hotpotqa", 0),) and test == (("hotpotqa", 1),)
    titles = [t for t, _ in corpus_documents("hotpotqa")[:200]]
    assert {stable_half(t) for t in titles} == {0, 1}
    s = generate_open_stream(random.Random(0), split="test_unseen_corpus", filler_tokens=80, hard_negatives=0)
    test_docs = " ".join(x for t, x in corpus_documents("hotpotqa") if stable_half(t) == 1)
    filler = [p for p in _filler_pieces(s)]
    assert filler and all(p in test_docs for p in filler)


def _filler_pieces(s):
    """Text between event sentences, split back into sentences (the filler)."""
    spans = sorted((e["start"], e["end"]) for e in s["events"])
    out, pos = [], 0
    for a, b in spans + [(len(s["text"]), len(s["text"]))]:
        out += [p for p in re.split(r"(?<=[.!?]) (?=[A-Z\"'(])", s["text"][pos:a].strip()) if p]
        pos = b
    return out


def test_hard_negatives_are_planted_as_unlabelled_filler():
    s = generate_open_stream(random.Random(1), filler_source="none", hard_negatives=6)
    labelled = [(e["start"], e["end"]) for e in s["events"]]
    hn = [m.start() for m in re.finditer(r"(?:was replaced|no longer|changed to|withdrawn|cancelled|now run|updated)",
                                         s["text"])]
    free = [p for p in hn if not any(a <= p < b for a, b in labelled)]
    assert len(free) >= 6


def test_chat_streams_speak_in_the_first_person():
    s = generate_open_stream(random.Random(2), p_chat=1.0, num_updates=4, filler_source="none")
    user = [e for e in s["events"] if e["entity"] == V.CHAT_USER]
    assert user and all(e["key_text"].lower() in ("my", "i") for e in user)
    assert all(s["text"][e["start"]:e["end"]].startswith("User:") for e in user if e["signal"])
    qs = [q for q in s["questions"] if q["entity"] == V.CHAT_USER]
    assert qs and all(re.search(r"\b(?:my|I)\b", q["question"]) for q in qs)


def test_lookalikes_edit_a_name_and_keep_most_of_it():
    rng = random.Random(0)
    from memadapter.training.open_data import _lookalike, _new_entity
    for kind in ("person", "project", "product", "org", "place"):
        for _ in range(20):
            ent = _new_entity(rng, kind, "train")
            other = _lookalike(rng, ent, "train")
            assert other.name != ent.name
            assert len(set(other.parts) & set(ent.parts)) >= len(ent.parts) - 1


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(ConfigError, match="split"):
        generate_open_stream(random.Random(0), split="test_unseen_entities")
    with pytest.raises(ConfigError, match="rng"):
        generate_open_stream(0)
    with pytest.raises(ConfigError, match="filler_source"):
        generate_open_stream(random.Random(0), filler_source="web")
    with pytest.raises(ConfigError, match="p_chat"):
        generate_open_stream(random.Random(0), p_chat=2)
    with pytest.raises(ConfigError, match="seed"):
        build_open_dataset("train", 1, seed="0")


def test_train_mix_builder_concatenates_and_shuffles_deterministically():
    from memadapter.training.train import build_datasets

    cfg = {"builder": "mix", "seed": 1, "builder_kwargs": {
        "mix": {"lifecycle": 2, "open": 2, "counterfactual": 1},
        "lifecycle": {"filler_tokens": 10, "filler_source": "embedded"}, "open": {"filler_tokens": 10},
        "counterfactual": {"filler_tokens": 10}}}
    ds = build_datasets(cfg)
    ids = [r["id"] for r in ds]
    assert len(ids) == 5 and ids == [r["id"] for r in build_datasets(cfg)]
    assert sum(i.startswith("open-") for i in ids) == 2 and sum(i.startswith("cf-") for i in ids) == 1
    assert len(build_datasets({"builder": "open", "num_streams": 2, "builder_kwargs": {"filler_tokens": 10}})) == 2
    with pytest.raises(ConfigError, match="data.builder"):
        build_datasets({"builder": "web"})
    with pytest.raises(ConfigError, match="mix"):
        build_datasets({"builder": "mix", "builder_kwargs": {"mix": {"essays": 3}}})


def test_generation_eval_builder_flag_picks_the_generator():
    from memadapter.training.generation_eval import _parser, _streams

    args = _parser().parse_args(["--adapter", "x", "--builder", "open", "--split", "val_unseen_corpus",
                                 "--num-streams", "1", "--filler-tokens", "20"])
    assert _streams(args)[0]["split"] == "val_unseen_corpus"
    args = _parser().parse_args(["--adapter", "x", "--builder", "counterfactual", "--split", "val_squad",
                                 "--num-streams", "1", "--filler-tokens", "20"])
    assert _streams(args)[0]["id"].startswith("cf-val_squad")
    with pytest.raises(ConfigError, match="split"):
        _streams(_parser().parse_args(["--adapter", "x", "--builder", "open"]))  # default split is lifecycle's
