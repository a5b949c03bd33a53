"""The collator: shapes, padding, spans from tags, hard-negative kinds, question/answer layout.

``make_features`` hand-writes token-labelled lifecycle streams in the contract of
``lifecycle_data.token_labels`` (plus the generator's ``events`` / ``questions``); the trainer
tests import it from here.
"""

from __future__ import annotations

import pytest
import torch

from memadapter.errors import ConfigError, EmptyInputError, ShapeError
from memadapter.heads import TAG_KEY_B, TAG_KEY_I, TAG_O, TAG_VAL_B, TAG_VAL_I
from memadapter.training.collator import MemAdapterCollator, event_type_id, looks_alike, negative_kinds
from memadapter.training.losses import NEG_LOOKALIKE, NEG_NONE, NEG_OLDER_VERSION, NEG_SAME_ENTITY
from memadapter.training.train import build_word_tokenizer

torch.set_num_threads(1)

# (sentence, key word range, value word range, event type, write label, entity, attribute, version)
_E = tuple
STREAMS = [
    dict(events=[
        _E(("the city of alice is paris .", (1, 4), (5, 6), "new", 1, "alice", "city", 0)),
        _E(("it rained all day in the valley .", None, None, None, 0, None, None, None)),
        _E(("the color of alice is red .", (1, 4), (5, 6), "new", 1, "alice", "color", 0)),
        _E(("the city of alicia is rome .", (1, 4), (5, 6), "new", 1, "alicia", "city", 0)),
        _E(("update : the city of alice is now london .", (3, 6), (8, 9), "update", 1, "alice", "city", 1)),
    ], questions=[
        dict(question="what is the city of alice ?", answer="london", kind="overwrite", answer_event=3),
        dict(question="what is the color of alice ?", answer="red", kind="uniform", answer_event=1),
    ]),
    dict(events=[
        _E(("the code of bob is seven .", (1, 4), (5, 6), "new", 1, "bob", "code", 0)),
        _E(("the code of rob is nine .", (1, 4), (5, 6), "new", 1, "rob", "code", 0)),
        _E(("the pet of bob is cat .", (1, 4), (5, 6), "new", 1, "bob", "pet", 0)),
    ], questions=[
        dict(question="what is the code of bob ?", answer="seven", kind="distractor", answer_event=0),
    ]),
]


def all_texts() -> list[str]:
    out = []
    for s in STREAMS:
        out += [e[0] for e in s["events"]]
        out += [q["question"] for q in s["questions"]] + [q["answer"] for q in s["questions"]]
    return out


def make_tokenizer():
    return build_word_tokenizer(all_texts(), vocab_size=1000)


def make_features(tok, streams=STREAMS) -> list[dict]:
    """Token-labelled streams: word-level tokens, so word index == token index."""
    feats = []
    for s in streams:
        ids, tags, spans, types, writes, meta = [], [], [], [], [], []
        for sent, key, val, etype, write, ent, attr, ver in s["events"]:
            words = sent.split()
            start = len(ids)
            ids += tok.convert_tokens_to_ids(words)
            row = [TAG_O] * len(words)
            for rng, (b, i) in ((key, (TAG_KEY_B, TAG_KEY_I)), (val, (TAG_VAL_B, TAG_VAL_I))):
                if rng is not None:
                    row[rng[0]:rng[1]] = [b] + [i] * (rng[1] - rng[0] - 1)
            tags += row
            if etype is not None:
                spans.append([start, len(ids)])
                types.append(etype)
                writes.append(write)
                meta.append(dict(entity=ent, attribute=attr, version=ver, event_type=etype))
        feats.append(dict(input_ids=ids, attention_mask=[1] * len(ids), tag_ids=tags, event_spans=spans,
                          event_types=types, write_labels=writes, events=meta, questions=s["questions"]))
    return feats


def test_batch_shapes_padding_and_targets():
    tok = make_tokenizer()
    feats = make_features(tok)
    batch = MemAdapterCollator(tok)(feats)
    T0, T1 = len(feats[0]["input_ids"]), len(feats[1]["input_ids"])
    assert batch["input_ids"].shape == (2, max(T0, T1))
    assert batch["attention_mask"].sum(1).tolist() == [T0, T1]
    assert (batch["tag_ids"][1, T1:] == -100).all() and (batch["input_ids"][1, T1:] == tok.pad_token_id).all()
    assert batch["event_mask"].tolist() == [[True] * 4, [True] * 3 + [False]]
    assert batch["event_types"][0].tolist() == [0, 0, 0, 1] and batch["event_types"][1, 3] == -100
    # Key / value spans come from the tags: "update : the [city of alice] is now [london] ."
    s = feats[0]["event_spans"][3][0]
    assert batch["key_spans"][0, 3].tolist() == [s + 3, s + 6]
    assert batch["value_spans"][0, 3].tolist() == [s + 8, s + 9]
    # Token event types sit on event tokens only (the filler sentence stays -100).
    filler = slice(feats[0]["event_spans"][0][1], feats[0]["event_spans"][1][0])
    assert (batch["event_type_ids"][0, filler] == -100).all()
    assert batch["write_labels"].tolist() == [[1.0] * 4, [1.0] * 3 + [0.0]]


def test_questions_layout_labels_only_on_answer():
    tok = make_tokenizer()
    batch = MemAdapterCollator(tok)(make_features(tok))
    assert batch["question_stream"].tolist() == [0, 0, 1]
    assert batch["answer_event"].tolist() == [3, 1, 0]
    row = batch["qa_input_ids"][0]
    n_q = int(batch["qa_question_mask"][0].sum())
    assert tok.decode(row[:n_q]) == "what is the city of alice ?"
    labelled = batch["qa_labels"][0][batch["qa_labels"][0] != -100].tolist()
    assert labelled == tok.convert_tokens_to_ids(["london"]) + [tok.eos_token_id]
    assert not (batch["qa_question_mask"] & (batch["qa_labels"] != -100)).any()  # the query never sees the answer
    kinds = MemAdapterCollator(tok).question_kinds
    assert [kinds[i] for i in batch["question_kind"].tolist()] == ["overwrite", "uniform", "distractor"]


def test_hard_negative_kinds():
    tok = make_tokenizer()
    batch = MemAdapterCollator(tok)(make_features(tok))
    # Q0: alice's city (v1): paris is the older version, alice's color same entity, alicia look-alike.
    assert batch["negative_kind"][0].tolist() == [NEG_OLDER_VERSION, NEG_SAME_ENTITY, NEG_LOOKALIKE, NEG_NONE]
    # Q2: bob's code: rob is a look-alike, bob's pet the same entity; padding stays 0.
    assert batch["negative_kind"][2].tolist() == [NEG_NONE, NEG_LOOKALIKE, NEG_SAME_ENTITY, NEG_NONE]
    assert looks_alike("Alice Ng", "alicia ng") and not looks_alike("bob", "carol") and not looks_alike("a", "A")
    assert negative_kinds([{"entity": "x"}], -1) == [NEG_NONE]


def test_truncation_drops_cut_events_and_their_questions():
    tok = make_tokenizer()
    feats = make_features(tok)
    cut = feats[0]["event_spans"][3][0] + 2  # inside the update sentence
    batch = MemAdapterCollator(tok, max_length=cut)(feats[:1])
    assert batch["input_ids"].shape[1] == cut
    assert batch["event_mask"][0].tolist() == [True, True, True]
    assert batch["answer_event"].tolist() == [-1, 1]  # the overwrite's gold event was cut off


def test_questions_per_stream_and_no_questions():
    tok = make_tokenizer()
    feats = make_features(tok)
    assert MemAdapterCollator(tok, questions_per_stream=1)(feats)["qa_input_ids"].shape[0] == 2
    bare = [{**f, "questions": []} for f in feats]
    batch = MemAdapterCollator(tok)(bare)
    assert batch["qa_input_ids"].shape[0] == 0 and batch["negative_kind"].shape == (0, 4)


def test_bad_input_is_typed_and_named():
    tok = make_tokenizer()
    feats = make_features(tok)
    with pytest.raises(EmptyInputError, match="features"):
        MemAdapterCollator(tok)([])
    with pytest.raises(ShapeError, match="tag_ids"):
        MemAdapterCollator(tok)([{**feats[0], "tag_ids": feats[0]["tag_ids"][:-1]}])
    with pytest.raises(ShapeError, match="event_spans"):
        MemAdapterCollator(tok)([{**feats[0], "event_types": feats[0]["event_types"][:-1]}])
    with pytest.raises(ConfigError, match="event_types"):
        event_type_id("sideways")
    with pytest.raises(ConfigError, match="max_length"):
        MemAdapterCollator(tok, max_length=0)
    assert event_type_id("retraction") == 2 and event_type_id(3) == 3


def test_real_lifecycle_streams_collate_with_consistent_spans():
    """Raw generator rows go through labels.token_labels; spans and gold events stay consistent."""
    from memadapter.training import lifecycle_data

    ds = lifecycle_data.build_dataset("train", 3, seed=0, num_entities=2, num_updates=1, num_distractors=1,
                                      num_uniform=1)
    rows = [ds[i] for i in range(len(ds))]
    texts = [r["text"] for r in rows] + [q[f] for r in rows for q in r["questions"] for f in ("question", "answer")]
    tok = build_word_tokenizer(texts, vocab_size=4000)
    collate = MemAdapterCollator(tok, question_kinds=(*lifecycle_data.QUESTION_KINDS, "other"))
    batch = collate(rows)
    assert batch["qa_input_ids"].shape[0] == sum(len(r["questions"]) for r in rows)
    q = 0
    for b, row in enumerate(rows):
        for question in row["questions"]:
            gold = int(batch["answer_event"][q])
            ev = row["events"][question["answer_event"]]
            k0, k1 = batch["key_spans"][b, gold].tolist()
            assert tok.decode(batch["input_ids"][b, k0:k1]) == " ".join(
                w for w, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(ev["key_text"].lower()))
            if question["kind"] == "overwrite":  # the replaced value is labelled an older version
                assert int((batch["negative_kind"][q] == NEG_OLDER_VERSION).sum()) >= 1
            q += 1
    assert collate.question_kinds[int(batch["question_kind"][0])] == rows[0]["questions"][0]["kind"]


def test_fact_groups_number_entity_attribute_pairs_per_stream():
    from memadapter.training.collator import fact_groups

    events = [{"entity": "The Vega kettle", "attribute": "price"}, {"entity": "the vega  kettle", "attribute": "Price"},
              {"entity": "the Vega kettle", "attribute": "colour"}, {"entity": "", "attribute": "price"}, {}]
    assert fact_groups(events) == [0, 0, 1, -1, -1]
