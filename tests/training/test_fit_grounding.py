"""Refitting the span tagger on cached read-layer states (training/fit_grounding.py): chunks cut as
ingest cuts them, gold pairs, the exact-span scores, and a fit that learns what the head missed
while the key space stays put."""

import random

import torch

from memadapter.heads import TAG_KEY_B, TAG_KEY_I, TAG_O, TAG_VAL_B
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training.fit_grounding import (Chunk, collect_chunks, fit_head, load_chunks, propose_pairs, save_chunks,
                                                span_scores)
from memadapter.training.lifecycle_data import generate_stream
from memadapter.training.train import build_word_tokenizer


def _model_and_streams(n=3):
    rng = random.Random(0)
    streams = [generate_stream(rng, split="train", num_entities=2, num_updates=1, num_distractors=1, num_uniform=1)
               for _ in range(n)]
    texts = [s["text"] for s in streams] + [q["question"] for s in streams for q in s["questions"]]
    tok = build_word_tokenizer(texts, vocab_size=1000)
    torch.manual_seed(0)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=16)
    return MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval(), streams


def test_span_scores_count_exact_spans_only():
    gold = [[((0, 2), (4, 5)), ((7, 8), None)], [((1, 2), (3, 4))]]
    pred = [[((0, 2), (4, 5)), ((7, 9), None)], [((1, 2), None), ((5, 6), (3, 4))]]
    s = span_scores(pred, gold)
    assert (s["gold"], s["proposed"]) == (3, 4)
    assert s["key_recall"] == 2 / 3 and s["key_precision"] == 2 / 4
    assert s["value_recall"] == 1.0  # both gold values are carried by some proposal
    assert s["pair_recall"] == 1 / 3  # only the first event is proposed whole
    assert s["pair_f1"] == 2 * 1 / (3 + 4)


def test_collect_chunks_cuts_as_ingest_and_keeps_gold_pairs_inside_their_chunk():
    model, streams = _model_and_streams(1)
    chunks = collect_chunks(model, streams, progress=False)
    ids = model.tokenizer(streams[0]["text"], add_special_tokens=False)["input_ids"]
    assert [c.hidden.shape[0] for c in chunks] == [e - s for s, e in model._chunk_bounds(ids)]
    assert all(c.hidden.shape[1] == model.config.hidden_size and c.hidden.dtype == torch.float16 for c in chunks)
    for c in chunks:
        for (k0, k1), v in c.gold:  # gold spans are chunk-relative and tagged as keys / values
            assert 0 <= k0 < k1 <= len(c.tags) and int(c.tags[k0]) == TAG_KEY_B
            assert v is None or int(c.tags[v[0]]) == TAG_VAL_B
    assert sum(len(c.gold) for c in chunks) > 0


def test_fit_head_learns_the_tags_and_leaves_the_key_space_alone():
    """Synthetic states: one direction marks a key's first token, another a value's; the fitted
    tagger finds the pairs on validation chunks while norm / key / value projections are unchanged."""
    g = torch.Generator().manual_seed(0)
    H = 32
    model, _ = _model_and_streams(1)
    head = type(model.grounding)(hidden_size=H, key_dim=8, value_dim=8)

    def chunk():
        hidden = torch.randn(12, H, generator=g) * 0.1
        tags = torch.full((12,), TAG_O)
        k = int(torch.randint(0, 6, (1,), generator=g))
        tags[k], tags[k + 1], tags[k + 3] = TAG_KEY_B, TAG_KEY_I, TAG_VAL_B
        hidden[k, 0] += 3.0
        hidden[k + 1, 1] += 3.0
        hidden[k + 3, 2] += 3.0
        return Chunk(hidden.half(), tags, torch.full((12,), -100), torch.full((12,), float("nan")), None,
                     [((k, k + 2), (k + 3, k + 4))])

    train, val = [chunk() for _ in range(64)], [chunk() for _ in range(16)]
    before = span_scores(propose_pairs(head, val), [c.gold for c in val])["pair_recall"]
    fitted, log = fit_head(head, train, val, epochs=30, lr=1e-2, progress=False)
    assert log[0]["epoch"] == 0 and log[0]["pair_recall"] == before
    assert span_scores(propose_pairs(fitted, val), [c.gold for c in val])["pair_recall"] > 0.9 > before
    for name in ("norm.weight", "key_proj.weight", "value_proj.weight"):
        assert torch.equal(fitted.state_dict()[name], head.state_dict()[name])


def test_saved_chunks_load_back_equal(tmp_path):
    model, streams = _model_and_streams(2)
    chunks = collect_chunks(model, streams, progress=False)
    save_chunks(chunks, str(tmp_path / "c.safetensors"))
    back = load_chunks(str(tmp_path / "c.safetensors"))
    assert len(back) == len(chunks)
    for a, b in zip(chunks, back):
        assert torch.equal(a.hidden, b.hidden) and torch.equal(a.tags, b.tags) and torch.equal(a.events, b.events)
        assert torch.equal(a.confidence.nan_to_num(-1), b.confidence.nan_to_num(-1)) and a.gold == b.gold
        assert (a.words is None and b.words is None) or torch.equal(a.words, b.words)
