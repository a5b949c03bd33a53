"""Generate-based exact-match evaluation on a tiny random llama: normalisation, row shape, skipping,
injection restore, bad input, and that predictions never depend on the gold answers."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from memadapter.errors import ConfigError
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training.collator import MemAdapterCollator
from memadapter.training.answer_scoring import exact_match, normalize_answer, score_prediction
from memadapter.training.generation_eval import (
    METHODS, evaluate_generation, injection_mode, main, markdown_table, question_ids, summarize,
)
from memadapter.training.lifecycle_data import generate_stream
from memadapter.training.train import build_word_tokenizer

torch.set_num_threads(1)

ROW_KEYS = {"split", "method", "kind", "correct", "total", "accuracy", "stale", "unknown", "skipped", "ci_low",
            "ci_high", "contains"}


def _streams(n: int = 2) -> list[dict]:
    rng = random.Random(0)
    return [generate_stream(rng, split="test_unseen_entities", num_entities=2, num_updates=1, num_distractors=1,
                            num_uniform=1) for _ in range(n)]


@pytest.fixture(scope="module")
def streams() -> list[dict]:
    return _streams()


@pytest.fixture(scope="module")
def tok(streams):
    texts = [s["text"] for s in streams] + [q[f] for s in streams for q in s["questions"] for f in ("question", "answer")]
    words = build_word_tokenizer(texts, vocab_size=1000).vocab
    # Fill the backbone's whole vocabulary, so every generated id decodes to a word, not to "".
    return build_word_tokenizer(texts + [f"x{i}" for i in range(1000 - len(words))], vocab_size=1000)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=2, chunk_tokens=16,
                           injection="prefix")
    return MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama", sharpen_head=8.0), tokenizer=tok).eval()


def _n_questions(streams: list[dict]) -> int:
    return sum(len(s["questions"]) for s in streams)


def test_summarize_counts_stale_and_unknown_per_kind_and_skips_skipped():
    def pred(kind, prediction, gold, stale):
        return {"method": "tail", "kind": kind, "skipped": prediction is None,
                **score_prediction(prediction, {"answer": gold, "stale": stale})}

    preds = [pred("overwrite", "Lyon", "Porto", ["Lyon"]), pred("overwrite", "Porto", "Porto", ["Lyon"]),
             pred("retraction", "unknown", "unknown", ["Graz"]), pred("recall", "unknown", "Oslo", []),
             pred("recall", None, "Oslo", [])]
    rows = summarize(preds, ["tail"], "validation")
    by = {r["kind"]: r for r in rows}
    assert [r["kind"] for r in rows] == ["overwrite", "retraction", "recall", "all"]
    assert (by["overwrite"]["correct"], by["overwrite"]["stale"], by["overwrite"]["unknown"]) == (1, 1, 0)
    assert (by["retraction"]["correct"], by["retraction"]["stale"], by["retraction"]["unknown"]) == (1, 0, 0)
    assert (by["recall"]["total"], by["recall"]["skipped"], by["recall"]["unknown"]) == (1, 1, 1)
    assert (by["all"]["correct"], by["all"]["total"], by["all"]["stale"], by["all"]["unknown"]) == (2, 4, 1, 1)
    assert all(set(r) == ROW_KEYS and r["split"] == "validation" for r in rows)
    table = markdown_table(rows)
    assert "| method | kind |" in table and "| stale | unknown | skipped |" in table
    assert "| tail | all | 2 / 4 | 50.0% |" in table


def test_question_ids_match_the_collator_prompt(tok, streams):
    collate = MemAdapterCollator(tok)
    for q in streams[0]["questions"]:
        row, n_q = collate._qa_row(dict(question="  " + q["question"] + " ", answer=q["answer"]))
        assert question_ids(tok, "  " + q["question"] + " ") == row[:n_q]


def test_all_methods_give_well_formed_rows(model, streams):
    preds: list[dict] = []
    rows = evaluate_generation(model, streams, max_new_tokens=3, progress=False, predictions=preds)
    n = _n_questions(streams)
    assert len(preds) == n * len(METHODS)
    assert [r["method"] for r in rows if r["kind"] == "all"] == list(METHODS)
    for r in rows:
        assert set(r) == ROW_KEYS
        assert 0 <= r["correct"] <= r["total"] and r["contains"] <= r["total"]
        if r["total"]:
            assert r["accuracy"] == r["correct"] / r["total"] and 0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1
    for method in METHODS:
        pooled = next(r for r in rows if r["method"] == method and r["kind"] == "all")
        assert pooled["total"] + pooled["skipped"] == n
        assert pooled["skipped"] == 0  # short streams fit 8K
        kinds = [r for r in rows if r["method"] == method and r["kind"] != "all"]
        assert sum(r["total"] for r in kinds) == n
    p = preds[0]
    assert {"split", "stream", "method", "kind", "question", "gold", "prediction", "correct", "skipped", "stale",
            "unknown"} <= set(p)
    assert all(r["split"] == "custom" and p["split"] == "custom" for r in rows for p in preds)  # no split given
    assert model.config.injection == "prefix"


def test_full_context_skips_when_the_stream_does_not_fit(model, streams):
    preds: list[dict] = []
    rows = evaluate_generation(model, streams, methods=["full_context", "tail"], max_new_tokens=2,
                               full_context_tokens=20, tail_tokens=8, progress=False, predictions=preds)
    full = next(r for r in rows if r["method"] == "full_context" and r["kind"] == "all")
    assert full["skipped"] == _n_questions(streams) and full["total"] == 0 and full["correct"] == 0
    assert full["accuracy"] is None and full["ci_low"] is None
    assert all(p["prediction"] is None and not p["correct"] for p in preds if p["method"] == "full_context")
    tail = next(r for r in rows if r["method"] == "tail" and r["kind"] == "all")
    assert tail["total"] == _n_questions(streams) and tail["skipped"] == 0


def test_kinds_filter(model, streams):
    rows = evaluate_generation(model, streams, methods=["no_context"], kinds=["uniform"], max_new_tokens=2,
                               progress=False)
    n_uniform = sum(q["kind"] == "uniform" for s in streams for q in s["questions"])
    assert {r["kind"] for r in rows} == {"uniform", "all"}
    assert rows[-1]["total"] == n_uniform


def test_injection_restored_when_generation_raises(model, streams, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("generation failed")

    monkeypatch.setattr(model.backbone, "generate", boom)
    with pytest.raises(RuntimeError, match="generation failed"):
        evaluate_generation(model, streams[:1], methods=["text"], progress=False)
    assert model.config.injection == "prefix"
    with pytest.raises(KeyError):
        with injection_mode(model, "text"):
            assert model.config.injection == "text"
            raise KeyError("x")
    assert model.config.injection == "prefix"


@pytest.mark.parametrize("kwargs,named", [
    (dict(methods=["memory", "oracle"]), "oracle"), (dict(methods="tail,bogus"), "bogus"),
    (dict(methods=[]), "methods"), (dict(methods=["tail", "tail"]), "twice"),
    (dict(kinds=["overwrite", "nonsense"]), "nonsense"), (dict(tail_tokens=0), "tail_tokens"),
])
def test_bad_arguments_raise_config_errors_naming_them(model, streams, kwargs, named):
    with pytest.raises((ConfigError, ValueError), match=named):
        evaluate_generation(model, streams, progress=False, **kwargs)


def test_predictions_never_read_answers_or_labels(model, streams):
    scrubbed = copy.deepcopy(streams)
    for s in scrubbed:
        s["events"], s["entities"] = [], []
        s["questions"] = [{"question": q["question"], "kind": q["kind"], "answer": "zzz"} for q in s["questions"]]
    first, second = [], []
    evaluate_generation(model, streams, max_new_tokens=3, progress=False, predictions=first)
    evaluate_generation(model, scrubbed, max_new_tokens=3, progress=False, predictions=second)
    assert [p["prediction"] for p in first] == [p["prediction"] for p in second]
    assert [(p["method"], p["question"]) for p in first] == [(p["method"], p["question"]) for p in second]


def test_cli_end_to_end_and_errors(model, tok, tmp_path, capsys):
    base, adapter, out, preds = tmp_path / "base", tmp_path / "adapter", tmp_path / "rows.json", tmp_path / "p.json"
    model.backbone.save_pretrained(base)
    tok.save_pretrained(base)
    model.save_pretrained(str(adapter))
    argv = ["--adapter", str(adapter), "--base", str(base), "--num-streams", "1", "--filler-tokens", "0",
            "--filler-source", "embedded", "--max-new-tokens", "2", "--methods", "memory,text,tail,no_context",
            "--kinds", "overwrite,version,distractor,uniform", "--device", "cpu", "--no-progress",
            "--json", str(out), "--predictions", str(preds)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert {r["method"] for r in rows} == {"memory", "text", "tail", "no_context"}
    assert all(set(r) == ROW_KEYS for r in rows)
    assert "| method | kind |" in capsys.readouterr().out
    assert all(r["split"] == "test_unseen_entities" for r in rows)  # the CLI's default --split
    written = json.loads(preds.read_text())
    assert len(written) == 4 * rows[-1]["total"]
    assert all(p["split"] == "test_unseen_entities" and isinstance(p["stale"], bool) and isinstance(p["unknown"], bool)
               for p in written)
    with pytest.raises(ConfigError, match="nope"):
        main(argv[:-4] + ["--methods", "memory,nope"])
    with pytest.raises(ConfigError, match="--base"):
        main(["--adapter", str(adapter), "--base", str(tmp_path / "missing"), "--num-streams", "1"])
    with pytest.raises(ConfigError, match="--adapter"):
        main(["--adapter", str(tmp_path / "missing"), "--base", str(base), "--num-streams", "1"])
    # --set changes selection settings of the loaded adapter, never the saved files
    saved = (adapter / "adapter_config.json").read_text()
    assert main(argv + ["--set", "name_chunks=2", "--set", "retract_tombstones=true"]) == 0
    assert (adapter / "adapter_config.json").read_text() == saved
    # an unseen-name dev set from a training-name split; refused on the held-out-name split
    assert main(argv + ["--split", "validation", "--synthetic-names", "1.0"]) == 0
    from memadapter.training import lifecycle_vocab as ld

    pooled = {w for pools in (ld.LAST_NAMES, ld.PROJECT_WORDS, ld.PRODUCT_BRANDS) for p in pools.values() for w in p}
    pooled |= {f for pairs in ld.FIRST_NAME_PAIRS.values() for pair in pairs for f in pair}
    asked = {w.strip("?'s,.") for p in json.loads(preds.read_text()) for w in p["question"].split()}
    assert asked and asked.isdisjoint(pooled)  # every entity asked about has a made-up name
    with pytest.raises(ConfigError, match="synthetic_names"):
        main(argv + ["--synthetic-names", "1.0", "--split", "test_unseen_entities"])
    for bad, word in (("num_slots=4", "FIELD"), ("name_chunks", "FIELD"), ("name_chunks=abc", "JSON"),
                      ("lexical_weight=0.3", "FIELD"),  # a retired read rule
                      ("name_chunks=-1", "read.name_chunks"), ("value_tokens=4", "value_tokens")):
        with pytest.raises(ConfigError, match=word):
            main(argv + ["--set", bad])


def test_gold_continuation_scores_correct_and_is_cut_at_eos(model, tok, streams, monkeypatch):
    # A fake backbone that answers every question with its gold answer, then EOS, then junk.
    gold = {tuple(question_ids(tok, q["question"])): tok(" " + q["answer"], add_special_tokens=False)["input_ids"]
            for s in streams for q in s["questions"]}

    def answer(input_ids, attention_mask=None, **kwargs):
        new = gold[tuple(input_ids[0].tolist())] + [tok.eos_token_id, 5, 6]
        return torch.cat([input_ids, torch.tensor([new])], 1)

    monkeypatch.setattr(model.backbone, "generate", answer)
    preds: list[dict] = []
    rows = evaluate_generation(model, streams, methods=["no_context"], progress=False, predictions=preds)
    assert rows[-1]["correct"] == rows[-1]["total"] == rows[-1]["contains"] == _n_questions(streams)
    assert all(normalize_answer(p["prediction"]) == normalize_answer(p["gold"]) for p in preds)


def test_stale_and_unknown_answers_are_counted_end_to_end(model, tok, streams, monkeypatch):
    # A fake backbone that answers with the fact's first superseded value, else "unknown". The word
    # tokenizer splits "B3-6612" into "b3 - 6612", so such a value is not said (it would not match).
    def survives(value: str) -> bool:
        return exact_match(tok.decode(tok(" " + value, add_special_tokens=False)["input_ids"]), value)

    said, n_stale, n_fresh, n_withdrawn = {}, 0, 0, 0
    for s in streams:
        for q in s["questions"]:
            old = q["stale"][0] if q["stale"] and survives(q["stale"][0]) else None
            said[tuple(question_ids(tok, q["question"]))] = old or "unknown"
            n_stale += old is not None
            n_fresh += old is None and q["answer"] != "unknown"  # "unknown" to a fact that was never withdrawn
            n_withdrawn += old is None and q["answer"] == "unknown"  # right, and not counted as unknown
    assert n_stale and n_fresh and n_withdrawn  # every case occurs in these streams

    def answer(input_ids, attention_mask=None, **kwargs):
        new = tok(" " + said[tuple(input_ids[0].tolist())], add_special_tokens=False)["input_ids"]
        return torch.cat([input_ids, torch.tensor([new + [tok.eos_token_id]])], 1)

    monkeypatch.setattr(model.backbone, "generate", answer)
    preds: list[dict] = []
    rows = evaluate_generation(model, streams, methods=["no_context"], progress=False, predictions=preds,
                               split="test_unseen_entities")
    pooled = rows[-1]
    assert (pooled["kind"], pooled["split"]) == ("all", "test_unseen_entities")
    assert (pooled["stale"], pooled["unknown"], pooled["correct"]) == (n_stale, n_fresh, n_withdrawn)
    assert all(p["split"] == "test_unseen_entities" and p["stale"] + p["unknown"] + p["correct"] == 1 for p in preds)


def test_chat_prompts_wrap_the_question_and_need_a_template(model, tok, streams):
    from memadapter.training.generation_eval import INSTRUCTION, chat_ids

    with pytest.raises(ConfigError, match="chat template"):
        chat_ids(tok, "Who?")
    with pytest.raises(ConfigError, match="chat template"):
        evaluate_generation(model, streams[:1], methods=["tail"], chat=True, progress=False)
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = "{% for m in messages %}<bos> {{ m['content'] }} <eos>{% endfor %}"
    q = streams[0]["questions"][0]["question"]
    ids = chat_ids(chat_tok, q, streams[0]["text"][:40])
    words = chat_tok.decode(ids).split()
    assert words[0] == "<bos>" and words[-1] == "<eos>"  # wrapped by the template
    assert words[1:3] == streams[0]["text"].lower().split()[:2]  # the context comes first
    assert " ".join(q.lower().rstrip("?").split()) in " ".join(words)  # then the question
    previous = model.tokenizer
    model.tokenizer = chat_tok
    try:
        rows = evaluate_generation(model, streams[:1], methods=["memory", "text", "tail"], chat=True, progress=False)
    finally:
        model.tokenizer = previous
    assert all(r["total"] == len(streams[0]["questions"]) for r in rows if r["kind"] == "all")


def test_chat_text_row_puts_the_selection_inside_the_user_turn(model, tok, streams, monkeypatch):
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = "{% for m in messages %}<bos> {{ m['content'] }} <eos>{% endfor %}"
    prompts: list[str] = []
    real_generate = model.backbone.generate

    def spy(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None:
            prompts.append(chat_tok.decode(ids[0]))
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model.backbone, "generate", spy)
    previous = model.tokenizer
    model.tokenizer = chat_tok
    try:
        evaluate_generation(model, streams[:1], methods=["text"], chat=True, progress=False)
    finally:
        model.tokenizer = previous
    assert prompts and all(p.split()[0] == "<bos>" and p.split()[-1] == "<eos>" for p in prompts)
    # "Memory: <selected text>" opens the turn ("Memory" is <unk> to the word tokenizer), then the question.
    assert all(p.split()[1:3] == ["<unk>", ":"] and p.split()[3] != "what" for p in prompts)


def test_default_base_follows_the_adapters_real_model(tmp_path, monkeypatch):
    import argparse
    from memadapter.training.generation_eval import _model_dirs

    monkeypatch.setenv("MEMADAPTER_CACHE", str(tmp_path / "cache"))
    for sub in ("gemma3-270m", "smollm2-135m-instruct"):
        (tmp_path / "cache" / sub).mkdir(parents=True)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    args = argparse.Namespace(adapter=str(adapter), base=None)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "gemma3"}))
    assert _model_dirs(args)[0].endswith("gemma3-270m")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/some/local/dir"}))
    assert _model_dirs(args)[0].endswith("smollm2-135m-instruct")  # not a packaged model: SmolLM2's cache
    (adapter / "adapter_config.json").write_text("{not json")
    assert _model_dirs(args)[0].endswith("smollm2-135m-instruct")  # from_pretrained reports the bad file
    args.base = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="--base"):
        _model_dirs(args)
