"""Teacher-forced objective and MemAdapterTrainer on a tiny random llama: only adapter weights
train and are saved, losses fall, metrics are logged, and resume equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from test_collator import STREAMS, make_features, make_tokenizer  # noqa: E402

from memadapter.errors import ConfigError  # noqa: E402
from memadapter.errors import ShapeError as ShapeErrorType  # noqa: E402
from memadapter.modeling.configuration_memadapter import MemAdapterConfig  # noqa: E402
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM  # noqa: E402
from memadapter.training.collator import MemAdapterCollator  # noqa: E402
from memadapter.training.trainer import (  # noqa: E402
    LossWeights, MemAdapterTrainer, TeacherForcedObjective, gold_value_ids, pool_event_spans,
    pool_event_spans_reference, prior_event_features, prior_event_features_reference,
)
from memadapter.training.train import build_backbone  # noqa: E402

torch.set_num_threads(1)

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=1000, pad_token_id=0, bos_token_id=2, eos_token_id=3,
            tie_word_embeddings=False)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def make_model(tok, injection="prefix", seed=0, **kw):
    backbone = build_backbone({"backbone": TINY}, seed=0)
    torch.manual_seed(seed)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=2, injection=injection,
                           cross_attn_layers=[1] if injection == "cross_attn" else [], **kw)
    return MemAdapterForCausalLM(cfg, backbone=backbone, tokenizer=tok)


def test_vectorised_helpers_match_references():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 9, 5, generator=g)
    spans = torch.tensor([[[0, 3], [4, 9], [2, 2]], [[1, 2], [0, 9], [5, 7]]])
    assert torch.allclose(pool_event_spans(hidden, spans), pool_event_spans_reference(hidden, spans), atol=1e-6)
    keys = F.normalize(torch.randn(2, 5, 4, generator=g), dim=-1)
    values = torch.randn(2, 5, 3, generator=g)
    mask = torch.tensor([[True, False, True, True, True], [True, True, True, False, False]])
    got = prior_event_features(keys, values, mask, num_slots=3)
    assert torch.allclose(got, prior_event_features_reference(keys, values, mask, 3), atol=1e-5)
    assert got[0, 0].tolist() == [-1.0, 0.0, 0.0]  # nothing before the first event


@pytest.mark.parametrize("injection,memory", [("prefix", "gold"), ("cross_attn", "soft")])
def test_objective_trains_only_adapter_and_losses_fall(tok, injection, memory):
    model = make_model(tok, injection)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    obj = TeacherForcedObjective(model, LossWeights(answer_memory=memory))
    batch = MemAdapterCollator(tok)(make_features(tok))
    params = [p for p in obj.parameters() if p.requires_grad]
    assert params and all(not p.requires_grad for p in model.backbone.parameters())
    opt = torch.optim.AdamW(params, lr=2e-2)
    first = None
    for _ in range(40):
        out = obj(**batch)
        first = first or {k: float(v.detach()) for k, v in out.items() if k.startswith("loss")}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in obj(**batch).items() if k.startswith("loss")}
    for part in ("loss", "loss_grounding", "loss_write", "loss_contrastive", "loss_answer"):
        assert last[part] < first[part], part
    assert last["loss_contrastive"] < 0.1 and last["loss_grounding"] < 1.0
    assert all(torch.equal(v, backbone_before[k]) for k, v in model.backbone.state_dict().items())


def test_answer_loss_reaches_the_injector(tok):
    model = make_model(tok, "prefix")
    out = TeacherForcedObjective(model, LossWeights(grounding=0, write=0, contrastive=0, budget=0))(
        **MemAdapterCollator(tok)(make_features(tok)))
    out["loss"].backward()
    assert model.injector.proj.weight.grad.abs().sum() > 0
    assert model.grounding.value_proj.weight.grad.abs().sum() > 0  # the gold value's source is trained too
    assert model.grounding.tagger.weight.grad is None or model.grounding.tagger.weight.grad.abs().sum() == 0


def test_budget_penalty_cuts_writes(tok):
    """Answer-only-like writer pushed by the budget alone: expected writes per stream drop to the budget."""
    model = make_model(tok)
    obj = TeacherForcedObjective(model, LossWeights(answer=0, grounding=0, write=0, contrastive=0, budget=10.0,
                                                    write_budget=1.0))
    batch = MemAdapterCollator(tok)(make_features(tok))
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=5e-2)
    assert float(obj(**batch)["writes_per_stream"].mean()) >= 3.0  # the writer starts open (bias +2)
    for _ in range(30):
        out = obj(**batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert float(obj(**batch)["writes_per_stream"].mean()) <= 1.0


def test_loss_weights_reject_bad_values():
    with pytest.raises(ConfigError, match="write"):
        LossWeights(write=-0.1)
    with pytest.raises(ConfigError, match="answer_memory"):
        LossWeights(answer_memory="oracle")
    with pytest.raises(ConfigError, match="unknown"):
        LossWeights.from_dict({"answr": 1.0})


def _trainer(tok, out_dir, max_steps=4, **kw):
    feats = make_features(tok) * 2  # 4 streams, batch 2: two steps per epoch
    args = TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=2, max_steps=max_steps,
                             learning_rate=1e-2, save_steps=2, logging_steps=2, report_to=[], seed=0,
                             remove_unused_columns=False, use_cpu=True, disable_tqdm=True, **kw)
    collator = MemAdapterCollator(tok)
    obj = TeacherForcedObjective(make_model(tok), LossWeights(), collator.question_kinds)
    return MemAdapterTrainer(model=obj, args=args, train_dataset=feats, data_collator=collator,
                             processing_class=tok)


def test_trainer_logs_saves_adapter_only_and_resume_matches(tok, tmp_path):
    full = _trainer(tok, tmp_path / "full")
    full.train()
    logs = [h for h in full.state.log_history if "loss" in h]
    assert logs and {"writes_per_stream", "active_set_size", "write_accuracy", "match_acc/overwrite",
                     "answer_acc/overwrite", "match_acc/distractor"} <= set(logs[0])
    ckpt = tmp_path / "full" / "checkpoint-2"
    files = set(os.listdir(ckpt))
    assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "optimizer.pt"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "training_args.bin"}
    from safetensors.torch import load_file

    saved = load_file(str(ckpt / "adapter_model.safetensors"))
    assert saved and not any(k.startswith("backbone.") for k in saved)
    n_backbone = sum(p.numel() for p in full.adapter_model().backbone.parameters())
    assert sum(v.numel() for v in saved.values()) < n_backbone
    # The saved adapter loads into a fresh model on the same backbone.
    fresh = make_model(tok, seed=123)
    fresh.load_adapter_state_dict(saved)

    resumed = _trainer(tok, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(ckpt))
    a, b = full.adapter_model().adapter_state_dict(), resumed.adapter_model().adapter_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # And training moved the adapter away from where the checkpoint was.
    assert any(not torch.allclose(a[k], saved[k]) for k in saved)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == 2


def test_trainer_evaluate_reports_per_task_metrics(tok, tmp_path):
    trainer = _trainer(tok, tmp_path / "ev", max_steps=2)
    metrics = trainer.evaluate(make_features(tok))
    assert {"eval_loss", "eval_writes_per_stream", "eval_active_set_size", "eval_match_acc/overwrite",
            "eval_answer_acc/uniform", "eval_match_acc/distractor"} <= set(metrics)
    assert 0.0 <= metrics["eval_match_acc/overwrite"] <= 1.0 and metrics["eval_loss"] > 0


@pytest.mark.parametrize("injection", ["prefix", "cross_attn"])
def test_forward_with_values_is_differentiable_and_checked(tok, injection):
    model = make_model(tok, injection)
    ids = torch.tensor([tok.convert_tokens_to_ids("what is the city of alice ?".split())])
    values = torch.randn(1, 2, 16, requires_grad=True)
    out = model.forward_with_values(ids, torch.ones_like(ids), values, torch.tensor([[True, False]]))
    assert out.logits.shape == (1, ids.shape[1], 1000)
    out.logits.sum().backward()
    if injection == "prefix":
        assert values.grad[0, 0].abs().sum() > 0 and values.grad[0, 1].abs().sum() == 0  # invalid slot unused
    else:  # the zero-initialised gate passes no gradient to the memory yet, but the gate itself learns
        assert model.cross_attn[0].gate.grad is not None and model.cross_attn[0].gate.grad.abs() > 0
    with pytest.raises(ShapeErrorType, match="values"):
        model.forward_with_values(ids, torch.ones_like(ids), torch.randn(2, 2, 16), torch.ones(2, 2, dtype=torch.bool))


def test_forward_with_values_refuses_text_injection(tok):
    model = make_model(tok, "text")
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ConfigError, match="injection"):
        model.forward_with_values(ids, None, torch.randn(1, 1, 16), torch.ones(1, 1, dtype=torch.bool))


def test_gold_value_ids_are_the_gold_value_span_tokens(tok):
    batch = MemAdapterCollator(tok)(make_features(tok))
    got = gold_value_ids(batch, 3)
    assert got.shape == (batch["qa_input_ids"].shape[0], 1, 3)
    for q in range(got.shape[0]):  # plain loop over questions
        s, g = int(batch["question_stream"][q]), int(batch["answer_event"][q])
        (k0, k1), (v0, v1) = batch["key_spans"][s, max(g, 0)].tolist(), batch["value_spans"][s, max(g, 0)].tolist()
        want = batch["input_ids"][s, v0:min(v1, v0 + 3)].tolist() if g >= 0 and v0 >= k1 else []
        assert got[q, 0].tolist() == want + [-1] * (3 - len(want))
    assert (got >= 0).any()
    # A gold event without a value span (a retraction) copies the withdrawn tokens; others are unchanged.
    retracted = dict(events=[
        ("the pet of bob is cat .", (1, 4), (5, 6), "new", 1, "bob", "pet", 0),
        ("update : the pet of bob is now .", (3, 6), None, "retract", 1, "bob", "pet", 1),
    ], questions=[dict(question="what is the pet of bob ?", answer="cat", kind="retraction", answer_event=1)])
    batch = MemAdapterCollator(tok)(make_features(tok, STREAMS + [retracted]))
    got, filled = gold_value_ids(batch, 3), gold_value_ids(batch, 3, [7, 8])
    assert filled[-1, 0].tolist() == [7, 8, -1] and got[-1, 0].tolist() == [-1, -1, -1]
    for q in range(got.shape[0]):
        s, g = int(batch["question_stream"][q]), int(batch["answer_event"][q])
        (k0, k1), (v0, v1) = batch["key_spans"][s, max(g, 0)].tolist(), batch["value_spans"][s, max(g, 0)].tolist()
        want = [7, 8, -1] if g >= 0 and v0 < k1 else got[q, 0].tolist()
        assert filled[q, 0].tolist() == want


def test_value_tokens_train_through_the_prefix_and_need_gold_memory(tok):
    model = make_model(tok, "prefix", value_tokens=4)
    with pytest.raises(ConfigError, match="answer_memory"):
        TeacherForcedObjective(model, LossWeights(answer_memory="soft"))
    obj = TeacherForcedObjective(model, LossWeights(grounding=0, write=0, contrastive=0, budget=0))
    out = obj(**MemAdapterCollator(tok)(make_features(tok)))
    out["loss"].backward()
    assert model.injector.proj.weight.grad.abs().sum() > 0


def test_key_consistency_term_is_reported_and_reaches_the_key_projection(tok):
    model = make_model(tok)
    batch = MemAdapterCollator(tok)(make_features(tok))
    assert batch["event_groups"].shape == batch["event_mask"].shape and bool((batch["event_groups"] >= 0).any())
    out = TeacherForcedObjective(model, LossWeights(answer=0, grounding=0, write=0, contrastive=0, budget=0,
                                                    key_consistency=1.0))(**batch)
    assert float(out["loss_key_consistency"]) > 0
    out["loss"].backward()
    assert model.grounding.key_proj.weight.grad.abs().sum() > 0
