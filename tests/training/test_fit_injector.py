"""Fitting the injector (training/fit_injector.py): the examples are the read's own selections,
the fit trains the injector's tensors only and keeps the best validation epoch."""

import pytest
import torch

from memadapter.errors import ConfigError
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.selection import SelectedRow, stack_selection
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training.fit_injector import (CopyExample, batch_of, collect_examples, copy_rate, exact_copies,
                                               fit_injector, injector_parameters, selected_value)
from memadapter.training.losses import IGNORE_INDEX
from memadapter.training.train import build_word_tokenizer

TEXTS = ["Alice lives in Paris . Bob works at Quai Logistics .", "Where does Alice live ?", "Where does Bob work ?",
         "Paris Quai Logistics unknown"]


def _model(injection="prefix"):
    tok = build_word_tokenizer(TEXTS, vocab_size=200)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=16,
                           answer_layers=[1, 2], injection=injection, value_tokens=4 if injection == "prefix" else 0)
    torch.manual_seed(0)
    return MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()


def _examples(model, targets):
    tok, out = model.tokenizer, []
    for question, target in targets:
        q = list(tok(question, add_special_tokens=False)["input_ids"])
        a = list(tok(" " + target, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
        ids = torch.tensor(a[:4] + [-1] * (4 - len(a[:4])))
        out.append(CopyExample(torch.randn(1, 16), torch.ones(1, dtype=torch.bool), ids.view(1, 4), q + a, len(q), target))
    return out


def test_exact_copies_needs_every_scored_token_and_at_least_one():
    labels = torch.tensor([[IGNORE_INDEX, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    logits = torch.zeros(2, 3, 6)
    logits[0, 0, 3] = 1.0
    assert exact_copies(logits, labels).tolist() == [False, False]  # row 0 misses token 4; row 1 scores nothing
    logits[0, 1, 4] = 1.0
    assert exact_copies(logits, labels).tolist() == [True, False]


def test_selected_value_reads_the_value_after_the_last_separator():
    assert selected_value("the depot's height: 4.6 m") == "4.6 m"
    assert selected_value("a: b: c") == "c"
    assert selected_value("key: ") is None and selected_value("chunk text") is None


def test_batch_of_labels_only_the_answer_and_pads_right():
    model = _model()
    ex = _examples(model, [("Where does Alice live ?", "Paris"), ("Where does Bob work ?", "Quai Logistics")])
    batch = batch_of(ex, pad_id=0)
    for i, e in enumerate(ex):
        row = batch["labels"][i]
        assert row[:e.question_tokens].eq(IGNORE_INDEX).all()
        assert row[e.question_tokens:len(e.ids)].tolist() == e.ids[e.question_tokens:]
        assert row[len(e.ids):].eq(IGNORE_INDEX).all() and int(batch["attention_mask"][i].sum()) == len(e.ids)
    assert batch["values"].shape == (2, 1, 16) and batch["value_ids"].shape == (2, 1, 4)


def test_batch_of_pads_selections_of_different_sizes_with_invalid_entries():
    # an event row selects one entry, a chunk row or a slot row with top_k > 1 several
    one = CopyExample(torch.ones(1, 3), torch.tensor([True]), torch.tensor([[5, 6]]), [1, 2, 3], 2, "x")
    two = CopyExample(torch.full((2, 3), 2.0), torch.tensor([True, True]), torch.tensor([[7, -1], [8, 9]]), [1, 4], 1, "y")
    batch = batch_of([one, two], pad_id=0)
    assert batch["values"].shape == (2, 2, 3) and batch["values"][0, 1].eq(0).all()
    assert batch["valid"].tolist() == [[True, False], [True, True]]
    assert batch["value_ids"].tolist() == [[[5, 6], [-1, -1]], [[7, -1], [8, 9]]]


def test_collect_examples_targets_the_selected_value_not_the_gold(monkeypatch):
    model = _model()
    tok = model.tokenizer
    picks = iter(["bob work: Quai Logistics", "alice city: no longer known", "a retrieved chunk"])

    def select(memory, ids, mask):
        text = next(picks)
        return stack_selection([SelectedRow(torch.ones(1, 16), [text], [[5, 6]], "memory")], 16, 4)

    monkeypatch.setattr(model, "select", select)
    stream = {"text": TEXTS[0], "questions": [{"question": TEXTS[1], "answer": "Paris"},
                                              {"question": TEXTS[1], "answer": "Paris"},
                                              {"question": TEXTS[2], "answer": "Quai Logistics"}]}
    examples = collect_examples(model, [stream], progress=False)
    assert [e.target for e in examples] == ["Quai Logistics", "unknown"]  # the chunk has nothing to say
    e = examples[0]
    assert e.ids[-1] == tok.eos_token_id and e.value_ids[0, :2].tolist() == [5, 6]
    assert tok.decode(e.ids[e.question_tokens:-1]).strip() == "quai logistics"  # the word tokenizer lowercases


def test_fit_trains_the_injector_only_and_restores_requires_grad():
    model = _model()
    train = _examples(model, [("Where does Alice live ?", "Paris"), ("Where does Bob work ?", "Quai Logistics")] * 4)
    inj = {id(p) for p in injector_parameters(model)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    log = fit_injector(model, train, train, epochs=3, lr=5e-2, batch_size=4, progress=False)
    assert [r["epoch"] for r in log] == [0, 1, 2, 3] and log[0]["loss"] is None
    best = max(r["val_copy_rate"] for r in log)
    assert copy_rate(model, train) == pytest.approx(best)  # the kept tensors are the best epoch's
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    owners = {n for n, p in model.named_parameters() if id(p) in inj}
    assert changed <= owners
    if best > log[0]["val_copy_rate"]:
        assert changed  # a better epoch was kept, so the injector moved
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


def test_fit_lowers_the_answer_loss():
    # a random tiny backbone's logits barely follow its input, so the loss falls but no answer is copied
    model = _model()
    train = _examples(model, [("Where does Alice live ?", "Paris"), ("Where does Bob work ?", "Quai Logistics")] * 4)
    log = fit_injector(model, train, train, epochs=10, lr=5e-2, batch_size=8, progress=False)
    assert log[-1]["loss"] < log[1]["loss"] - 0.1


def test_an_injector_without_trained_tensors_is_a_config_error():
    with pytest.raises(ConfigError, match="injection"):
        injector_parameters(_model("text"))


def test_a_fresh_cross_attention_injector_over_the_same_heads_fits():
    # --injection cross_attn: the prefix adapter's heads stay, a gate-0 cross-attention is fitted in its place
    model = _model()
    heads = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("injector.")}
    model.replace_injector("cross_attn", [1])
    train = _examples(model, [("Where does Alice live ?", "Paris"), ("Where does Bob work ?", "Quai Logistics")] * 4)
    log = fit_injector(model, train, train, epochs=10, lr=5e-2, batch_size=8, progress=False)
    assert log[-1]["loss"] < log[1]["loss"] - 0.1
    assert float(model.cross_attn[0].gate.detach()) != 0.0  # the gate opened
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in heads.items() if n in params)
