"""The task generators: each sample fits its length, holds its facts, and asks what it scores."""

import random
import re

import pytest

from memadapter.errors import ConfigError
from memadapter.evaluation.ruler import ADJECTIVES, NOUNS, NIAH_SHAPES, read_squad
from memadapter.evaluation.samples import prompt_ids, user_text
from memadapter.evaluation.tasks import TASKS, check_tasks, generate_samples, read_samples, write_samples
from memadapter.evaluation.variants import lookalike_key

NEEDLE = re.compile(r"One of the special magic numbers for (\S+) is: (\d{7})\.")


def prompt_tokens(tok, s):
    return len(prompt_ids(tok, user_text(s, s.context), s.answer_prefix)) + s.max_new_tokens


@pytest.mark.parametrize("task", [t for t in TASKS if not t.startswith("qa_")])
def test_every_essay_task_fits_its_length_and_is_seeded(task, tok, ctx):
    a = generate_samples(task, 300, 3, ctx, seed=1)
    assert all(280 <= prompt_tokens(tok, s) <= 300 for s in a)
    assert [s.to_dict() for s in generate_samples(task, 300, 1, ctx, seed=1, indices=[2])] == [a[2].to_dict()]
    assert generate_samples(task, 300, 1, ctx, seed=2)[0].context != a[0].context
    assert all(s.references and s.id == f"{task}/300/{i}" for i, s in enumerate(a))


@pytest.mark.parametrize("task", sorted(NIAH_SHAPES))
def test_niah_needles_and_answers_follow_ruler_shapes(task, ctx):
    n_keys, n_values, n_asked, _ = NIAH_SHAPES[task]
    for s in generate_samples(task, 400, 4, ctx):
        needles = NEEDLE.findall(s.context)
        assert len(needles) == n_keys * n_values and len({k for k, _ in needles}) == n_keys
        asked = [k for k, _ in needles if k in s.query]
        assert sorted(s.references) == sorted(v for k, v in needles if k in asked)
        assert len(s.references) == n_asked * n_values
        assert ("What is the special" in s.question) == (n_asked * n_values == 1)
        assert s.metric == "string_match_all"


def test_variable_tracking_chain_is_in_order_and_every_name_holds_the_value(ctx):
    s = generate_samples("vt", 400, 1, ctx)[0]
    value = s.query.rsplit(" ", 1)[1]
    first = s.context.index(f"VAR {s.references[0]} = {value}.")
    links = [s.context.index(f"VAR {b} = VAR {a}.") for a, b in zip(s.references, s.references[1:])]
    assert first < links[0] and links == sorted(links) and len(s.references) == 5


def test_rewritten_writes_the_old_value_first_and_asks_for_the_new(ctx):
    for s in generate_samples("niah_rewritten", 300, 5, ctx):
        (old,), (new,) = s.stale_values, s.references
        assert old != new and s.context.index(old) < s.context.index(new)
        assert f"It is now: {new}." in s.context


def test_lookalike_key_differs_by_one_word_and_its_value_is_stale(ctx):
    rng = random.Random(0)
    for key in ("quiet-lantern", "amber-window"):
        other = lookalike_key(key, rng)
        assert other != key and sum(a != b for a, b in zip(key.split("-"), other.split("-"))) == 1
        assert other.split("-")[0] in ADJECTIVES and other.split("-")[1] in NOUNS
    for s in generate_samples("niah_lookalike", 300, 4, ctx):
        needles = dict(NEEDLE.findall(s.context))
        asked = next(k for k in needles if k in s.query)
        (other,) = set(needles) - {asked}
        assert s.references == [needles[asked]] and s.stale_values == [needles[other]]


def test_qa_1_keeps_the_gold_paragraph_among_squad_documents(tok, ctx):
    qas, docs = read_squad()
    assert len(qas) > 5000 and all(not q["answers"] == [] for q in qas[:50])
    s = generate_samples("qa_1", 2000, 1, ctx)[0]
    item = next(q for q in qas if q["query"] == s.query)
    assert docs[item["gold"][0]] in s.context and s.context.startswith("Document 1:\n")
    assert s.references == item["answers"] and s.metric == "string_match_part"
    assert prompt_tokens(tok, s) <= 2000


def test_task_files_round_trip(tmp_path, ctx):
    samples = generate_samples("babilong_qa2", 200, 2, ctx)
    write_samples(tmp_path / "t.jsonl", samples)
    assert [s.to_dict() for s in read_samples(tmp_path / "t.jsonl")] == [s.to_dict() for s in samples]


def test_bad_task_names_and_lengths_are_named(ctx):
    with pytest.raises(ConfigError, match="tasks: unknown name"):
        check_tasks("niah_single,nope")
    with pytest.raises(ConfigError, match="twice"):
        check_tasks(["vt", "vt"])
    with pytest.raises(ConfigError, match="lengths"):
        generate_samples("niah_single", 20, 1, ctx)
