"""Pointer answers (modeling/read_answers.py) on tiny backbones: the AnswerPointer reads the best
sentences of the retrieved chunks and its answers join the question's pool."""

import pytest
import torch
from conftest import STREAM, build, ingest, tiny_backbone, tiny_tokenizer

from memadapter.errors import ConfigError
from memadapter.modeling import MemAdapterConfig, MemAdapterForCausalLM
from memadapter.modeling.read_answers import ANSWER, pair_ids
from memadapter.modeling.read_scorer import FEATURES, NUM_FEATURES, pool_features
from memadapter.restatement import FEATURES as RESTATEMENT_FEATURES


def _pointer_model(tokenizer, withdraw_bias=-100.0, **kw):
    """A model whose random pointer withdraws nothing (``withdraw_bias`` -100) or everything (+100)."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, top_k=1, value_tokens=4,
                  answer_layers=[1, 2], answer_sentences=2, **kw)
    with torch.no_grad():
        model.answer_pointer.net[-1].bias[2] = withdraw_bias
    return model


def _answers(model, mem, tokenizer, question):
    enc = tokenizer([question], return_tensors="pt", padding=True)
    return [e for e in model.read_pools(mem, enc["input_ids"], enc["attention_mask"])[0].events if e.event_type == ANSWER]


def test_pair_ids_put_the_question_prompt_before_the_sentence(tokenizer):
    ids, n = pair_ids(tokenizer, " where does alice live ", "alice lives in paris")
    assert ids[n:] == tokenizer(" alice lives in paris", add_special_tokens=False)["input_ids"] and n > 0


def test_answers_are_spans_of_the_best_sentences_and_join_the_pool(tokenizer):
    model = _pointer_model(tokenizer)
    mem = ingest(model, [STREAM])
    answers = _answers(model, mem, tokenizer, "where does alice live")
    assert 1 <= len(answers) <= 2
    index = mem.indexes[0]
    for e in answers:
        assert e.value_text and e.value_text in e.sentence and e.answer_margin is not None
        assert any(e.sentence in index.text(i) for i in range(len(index))) and 0 <= e.position < index.span(len(index) - 1)[1]
        assert e.key.shape == (16,) and e.value.shape == (16,)
    with torch.no_grad():  # a scorer that follows the pointer reads an answer
        model.read_scorer.linear.weight.zero_()
        model.read_scorer.linear.weight[0, FEATURES.index("answer")] = 10.0
    enc = tokenizer(["where does alice live"], return_tensors="pt", padding=True)
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.branch == ["fallback"] and sel.texts[0][0] in [f"{e.key_text}: {e.value_text}" for e in answers]
    model.config.read.answer_sentences = 0
    assert _answers(model, mem, tokenizer, "where does alice live") == []


def test_a_sentence_read_as_a_withdrawal_adds_a_withdrawn_entry(tokenizer):
    model = _pointer_model(tokenizer, withdraw_bias=100.0)
    mem = ingest(model, [STREAM])
    answers = _answers(model, mem, tokenizer, "where does alice live")
    spans, withdrawals = [e for e in answers if e.value_text], [e for e in answers if e.value_text is None]
    assert len(spans) == len(withdrawals) >= 1  # every sentence read withdraws
    index = mem.indexes[0]
    for e in withdrawals:
        assert e.withdraws and e.key_text == e.sentence and e.answer_margin > 50
        chunk = next(i for i in range(len(index)) if e.sentence in index.text(i))
        assert index.span(chunk)[0] <= e.position < index.span(chunk)[1]
    enc = tokenizer(["where does alice live"], return_tensors="pt", padding=True)
    pool = model.read_pools(mem, enc["input_ids"], enc["attention_mask"])[0].pool
    assert [bool(w) for w, t, v in zip(pool.withdrawn, pool.event_types, pool.value_texts) if t == ANSWER] == \
        [v is None for w, t, v in zip(pool.withdrawn, pool.event_types, pool.value_texts) if t == ANSWER]


def test_an_adapter_without_a_pointer_proposes_no_answers(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, answer_sentences=2)
    assert model.answer_pointer is None
    assert _answers(model, ingest(model, [STREAM]), tokenizer, "where does alice live") == []


def test_the_pointer_is_saved_and_loaded_and_an_older_scorer_is_widened(tokenizer, tmp_path):
    model = _pointer_model(tokenizer)
    model.save_pretrained(tmp_path / "a")
    bb = model.backbone
    loaded = MemAdapterForCausalLM.from_pretrained(bb, adapter=str(tmp_path / "a"), tokenizer=tokenizer)
    assert loaded.config.answer_layers == [1, 2] and loaded.config.read.answer_sentences == 2
    for k, v in model.answer_pointer.state_dict().items():
        assert torch.equal(loaded.answer_pointer.state_dict()[k], v)
    state = loaded.adapter_state_dict()
    old = dict(state, **{k: state[k][:, :NUM_FEATURES - 2] for k in ("read_scorer.linear.weight", "read_scorer.mlp.0.weight")})
    loaded.load_adapter_state_dict(old)  # a scorer saved before the answer features
    assert float(loaded.read_scorer.linear.weight.detach()[0, -2:].abs().sum()) == 0.0
    with pytest.raises(ConfigError, match="missing keys"):
        loaded.load_adapter_state_dict({k: v for k, v in state.items() if not k.startswith("answer_pointer.")})


@pytest.mark.parametrize("layers", ["8", [True], [99]])
def test_answer_layers_must_be_a_list_of_hidden_state_indices(layers):
    with pytest.raises(ConfigError, match="answer_layers"):
        MemAdapterConfig(answer_layers=layers, backbone_num_layers=4)


def test_word_spans_narrow_where_a_pointer_span_may_end(tokenizer, monkeypatch):
    from memadapter.modeling import read_answers

    model = _pointer_model(tokenizer)
    mem = ingest(model, [STREAM])
    free = _answers(model, mem, tokenizer, "where does alice live")
    model.config.read.word_spans = True  # the word tokenizer cuts no word: the same answers
    assert [(e.sentence, e.value_text) for e in _answers(model, mem, tokenizer, "where does alice live")] == \
        [(e.sentence, e.value_text) for e in free]
    bounds = read_answers.sentence_bounds(tokenizer, free[0].sentence)
    assert len(bounds[0]) == len(tokenizer(" " + free[0].sentence.strip(), add_special_tokens=False)["input_ids"])

    def last_word_only(tok, sentence):  # a span may end only at the sentence's last token
        n = len(tok(" " + sentence.strip(), add_special_tokens=False)["input_ids"])
        return [True] * n, [False] * (n - 1) + [True]

    monkeypatch.setattr(read_answers, "sentence_bounds", last_word_only)
    for e in _answers(model, mem, tokenizer, "where does alice live"):
        assert e.sentence.rstrip().endswith(e.value_text.strip())


RESTATED = "Alice lives in paris . Bob lives in rome . Update alice lives in berlin ."


def test_a_sentence_is_read_against_the_earlier_sentence_it_restates_once_the_pointer_weighs_restatements():
    tok = tiny_tokenizer(tuple(RESTATED.split()) + ("where", "does", "live"))  # sentences that start with a capital
    model = _pointer_model(tok, chunk_tokens=32)
    model.config.read.answer_sentences = 3
    mem = ingest(model, [RESTATED])
    chunks = list(range(len(mem.indexes[0])))
    found = model._answer_sentences(mem, 0, "where does alice live", chunks)
    assert [earlier for *_, earlier in found] == [None] * len(found)  # zero weights: no restatement is read
    with torch.no_grad():
        model.answer_pointer.restated.zero_()
        model.answer_pointer.restated[RESTATEMENT_FEATURES.index("replaced_flag")] = 50.0  # replaced words: the answer
    model._fingerprint_cache = None
    mem = ingest(model, [RESTATED])  # a memory of the adapter as it is now
    found = model._answer_sentences(mem, 0, "where does alice live", chunks)
    assert [(s, earlier) for _, _, s, earlier in found if s.startswith("Update")] == \
        [("Update alice lives in berlin .", "Alice lives in paris .")]
    update = [e for e in _answers(model, mem, tok, "where does alice live") if e.sentence.startswith("Update")]
    assert [e.value_text for e in update] == ["berlin"]


def _restated(e):
    return e.restated_run is not None or e.restated_span is not None


def test_restated_runs_add_the_replaced_words_of_a_restated_sentence_as_answers():
    tok = tiny_tokenizer(tuple(RESTATED.split()) + ("where", "does", "live"))
    model = _pointer_model(tok, chunk_tokens=32)  # zero restatement weights: the pointer's spans are its own
    model.config.read.answer_sentences = 3
    mem = ingest(model, [RESTATED])
    before = _answers(model, mem, tok, "where does alice live")
    assert not any(_restated(e) for e in before)
    model.config.read.restated_runs = 0.5  # read time only: the same memory
    after = _answers(model, mem, tok, "where does alice live")
    # "Update alice lives in berlin ." repeats 4 of its 6 words from "Alice lives in paris ."
    whole = [e for e in after if e.restated_run is not None]
    assert [(e.value_text, round(e.restated_run, 3)) for e in whole] == [("berlin", round(4 / 6, 3))]
    assert all(e.sentence.startswith("Update") and e.answer_margin is not None for e in after if _restated(e))
    touching = [e for e in after if e.restated_span is not None]  # the pointer's best span over "berlin"
    assert len(touching) == 1 and "berlin" in touching[0].value_text.split()
    assert len({(e.value_text, e.position) for e in after}) == len(after)  # each span once
    unmarked = {(e.value_text, e.position) for e in after if not _restated(e)}
    assert unmarked <= {(e.value_text, e.position) for e in before}
    enc = tok(["where does alice live"], return_tensors="pt", padding=True)
    pool = model.read_pools(mem, enc["input_ids"], enc["attention_mask"])[0].pool
    features = pool_features("where does alice live", pool)
    for name, marked in (("restated_run", whole), ("restated_span", touching)):
        column = features[:, FEATURES.index(name)]
        assert sorted(column[column > 0].tolist()) == pytest.approx([4 / 6] * len(marked))
    model.config.read.restated_runs = 0.9  # the update repeats less than that: nothing added
    assert not any(_restated(e) for e in _answers(model, mem, tok, "where does alice live"))


def test_a_restated_run_gives_the_whole_run_and_the_pointers_best_span_touching_it(monkeypatch):
    from memadapter.modeling import read_answers

    text = "Alice lives in paris gb . Bob lives in rome . Update alice lives in now berlin gb ."
    tok = tiny_tokenizer(tuple(text.split()) + ("where", "does", "live"))
    model = _pointer_model(tok, chunk_tokens=32)
    model.config.read.answer_sentences, model.config.read.restated_runs = 3, 0.5
    mem = ingest(model, [text])
    ids_of = tok.convert_tokens_to_ids
    seen, original = {}, read_answers.pointer_features

    def features(m, ids, mask, layers):  # remember the pairs' ids for the pointer below
        seen["ids"] = ids
        return original(m, ids, mask, layers)

    def pointer(feats, changes=None):  # spans start on "berlin" and end on "gb"; nothing is withdrawn
        logits = torch.zeros(*seen["ids"].shape, 3)
        logits[..., 0] = (seen["ids"] == ids_of("berlin")).float() * 10.0
        logits[..., 1] = (seen["ids"] == ids_of("gb")).float() * 10.0
        logits[..., 2] = -100.0
        return logits

    monkeypatch.setattr(read_answers, "pointer_features", features)
    monkeypatch.setattr(model.answer_pointer, "forward", pointer)
    found = [e for e in _answers(model, mem, tok, "where does alice live") if e.sentence.startswith("Update")]
    # the update replaced "paris" by "now berlin": the whole run, and the pointer's span that runs on to its unit
    assert {e.value_text for e in found if e.restated_run is not None} == {"now berlin"}
    assert {e.value_text for e in found if e.restated_span is not None} == {"berlin gb"}


def test_restated_runs_must_be_a_share():
    with pytest.raises(ConfigError, match="restated_runs"):
        MemAdapterConfig(read={"restated_runs": 1.5})


def test_an_adapter_saved_before_the_restatement_weights_loads_them_as_zeros(tokenizer):
    model = _pointer_model(tokenizer)
    with torch.no_grad():
        model.answer_pointer.restated.fill_(1.0)
    state = {k: v for k, v in model.adapter_state_dict().items() if k != "answer_pointer.restated"}
    model.load_adapter_state_dict(state)
    assert float(model.answer_pointer.restated.detach().abs().sum()) == 0.0


def test_answers_carry_the_hedge_score_of_their_sentence(tokenizer):
    model = _pointer_model(tokenizer, withdraw_bias=100.0)
    mem = ingest(model, [STREAM])
    assert {e.answer_hedge for e in _answers(model, mem, tokenizer, "where does alice live")} == {0.0}  # unfitted
    with torch.no_grad():
        model.answer_pointer.hedge.bias.fill_(3.0)
    model._fingerprint_cache = None
    mem = ingest(model, [STREAM])  # a memory of the adapter as it is now
    answers = _answers(model, mem, tokenizer, "where does alice live")
    assert answers and all(e.answer_hedge == pytest.approx(3.0) for e in answers)  # withdrawals too
    enc = tokenizer(["where does alice live"], return_tensors="pt", padding=True)
    pool = model.read_pools(mem, enc["input_ids"], enc["attention_mask"])[0].pool
    hedge = [float(h) for h, t in zip(pool.answer_hedge, pool.event_types) if t == ANSWER]
    assert hedge == pytest.approx([3.0] * len(hedge)) and len(hedge) == len(answers)


def test_an_adapter_saved_before_the_hedge_head_loads_it_as_zeros(tokenizer):
    model = _pointer_model(tokenizer)
    with torch.no_grad():
        model.answer_pointer.hedge.weight.fill_(1.0)
        model.answer_pointer.hedge.bias.fill_(1.0)
    state = {k: v for k, v in model.adapter_state_dict().items() if not k.startswith("answer_pointer.hedge.")}
    model.load_adapter_state_dict(state)
    assert float(model.answer_pointer.hedge.weight.detach().abs().sum() + model.answer_pointer.hedge.bias.detach().abs().sum()) == 0.0
