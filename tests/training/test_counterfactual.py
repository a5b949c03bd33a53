"""Counterfactual real-text streams: spans, new gold after the stale original, disjoint splits, collator."""

from __future__ import annotations

import random

import datasets
import pytest
import torch

from memadapter.errors import ConfigError
from memadapter.training.collator import MemAdapterCollator
from memadapter.training.counterfactual import (SPLITS, answer_type, build_counterfactual_dataset,
                                                generate_counterfactual_stream, key_span, split_facts)
from memadapter.training.lifecycle_data import QUESTION_KINDS, stream_features
from memadapter.training.open_data import generate_open_stream

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def streams():
    return {sp: [generate_counterfactual_stream(random.Random(i), split=sp, filler_tokens=60) for i in range(3)]
            for sp in SPLITS}


def test_spans_match_text(streams):
    for ss in streams.values():
        for s in ss:
            for e in s["events"]:
                assert s["text"][e["key_start"]:e["key_end"]] == e["key_text"] != ""
                assert s["text"][e["value_start"]:e["value_end"]] == e["value"]
                assert e["key_end"] <= e["value_start"] or e["value_end"] <= e["key_start"]  # no overlap


def test_gold_is_the_new_value_after_the_stale_original(streams):
    for ss in streams.values():
        for s in ss:
            for q in s["questions"]:
                gold = s["events"][q["answer_event"]]
                assert q["kind"] in QUESTION_KINDS and q["kind"] in ("overwrite", "distractor")
                assert (gold["event_type"], gold["version"], gold["value"]) == ("update", 2, q["answer"])
                orig = [e for e in s["events"] if e["attribute"] == q["question"] and e["role"] == "main"
                        and e["version"] == 1]
                assert len(orig) == 1
                assert orig[0]["value"].lower() != q["answer"].lower()
                assert q["stale"] == [orig[0]["value"]]  # the real answer, never the look-alike's value
                assert orig[0]["start"] < gold["start"] and q["answer"] in s["text"][orig[0]["end"]:]
                lookalikes = [e for e in s["events"] if e["attribute"] == q["question"] and e["role"] == "lookalike"]
                assert (q["kind"] == "distractor") == bool(lookalikes)
                assert all(e["key_text"] != gold["key_text"] and e["value"] != q["answer"] for e in lookalikes)


def test_splits_share_no_title_or_question():
    facts = {sp: split_facts(sp)[0] for sp in SPLITS}
    qs = {sp: {f.question for f in fs} for sp, fs in facts.items()}
    docs = {sp: set(split_facts(sp)[1]) for sp in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not (docs[a] & docs[b]), (a, b)
                assert not (qs[a] & qs[b]) or {a, b} == {"val_hotpotqa", "test_hotpotqa"}, (a, b)
    assert not (qs["val_hotpotqa"] & qs["train"]) and not (qs["test_hotpotqa"] & qs["train"])


def test_deterministic_and_schema():
    a = build_counterfactual_dataset("val_squad", 2, seed=1, filler_tokens=20)
    b = build_counterfactual_dataset("val_squad", 2, seed=1, filler_tokens=20)
    assert a.to_list() == b.to_list() and a.features == stream_features()
    assert a.to_list() != build_counterfactual_dataset("val_squad", 2, seed=2, filler_tokens=20).to_list()
    assert isinstance(datasets.Dataset.from_list(a.to_list(), features=stream_features()), datasets.Dataset)


def test_answer_type_and_key_heuristic():
    assert answer_type("1066") == "year" and answer_type("12 March 2024") == "date"
    assert answer_type("42") == "number" and answer_type("Mei Tanaka", "Who founded it?") == "person"
    assert answer_type("Manchester", "What?", "headquarters in ") == "place"
    s = "The bank has its headquarters in Manchester."
    a0 = s.index("Manchester")
    ks, ke = key_span(s, a0, a0 + len("Manchester"), "Where are the bank's headquarters?")
    assert s[ks:ke] == "bank has its headquarters"


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(ConfigError, match="split"):
        build_counterfactual_dataset("test", 1, seed=0)
    with pytest.raises(ConfigError, match="p_lookalike"):
        generate_counterfactual_stream(random.Random(0), p_lookalike=1.5)


def test_collator_batches_an_open_and_a_counterfactual_stream():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rows = [generate_open_stream(random.Random(0), filler_tokens=30),
            generate_counterfactual_stream(random.Random(0), split="train", num_facts=2, filler_tokens=30)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([r["text"] for r in rows], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<s>", pad_token="<s>")
    batch = MemAdapterCollator(tokenizer, max_length=4096)(rows)
    assert batch["input_ids"].shape[0] == 2
    tags = batch["tag_ids"]
    assert ((tags > 0) & (tags < 5)).sum(dim=1).min() > 0  # key and value tags in both streams
