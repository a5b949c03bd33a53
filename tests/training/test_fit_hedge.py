"""Fitting the answer pointer's hedge head (training/fit_hedge.py): rumours are the positives,
the states are what the read path's head reads, and the fit keeps its best validation epoch."""

import random

import torch

from memadapter.answer_pointer import AnswerPointer
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.read_answers import pair_ids, pointer_features
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training.fit_hedge import HEDGED, encode_pairs, fit_head, roc_auc, stream_pairs
from memadapter.training.open_data import generate_open_stream
from memadapter.training.train import build_word_tokenizer


def test_every_rumour_is_a_positive_behind_the_question_about_its_fact():
    found = 0
    for seed in range(6):
        stream = generate_open_stream(random.Random(seed), filler_tokens=200)
        events, text = stream["events"], stream["text"]
        pairs = stream_pairs(stream, filler=2, rng=random.Random(0))
        assert len(pairs) == len(events) + 2  # every event's sentence, then two filler sentences
        asked = {(events[q["answer_event"]]["entity"], events[q["answer_event"]]["attribute"]): q["question"]
                 for q in reversed(stream["questions"])}
        for e, (question, sentence, hedged) in zip(events, pairs):
            assert sentence == text[e["start"]:e["end"]].strip() and hedged == (e["event_type"] == HEDGED)
            fact = (e["entity"], e["attribute"])
            assert question == asked[fact] if fact in asked else question in [q["question"] for q in stream["questions"]]
            found += hedged
        assert not any(h for _, _, h in pairs[len(events):])  # filler is never hearsay
    assert found > 0


def test_the_cached_states_are_what_the_read_path_head_reads():
    streams = [generate_open_stream(random.Random(s), filler_tokens=60) for s in range(2)]
    pairs = [p for s in streams for p in stream_pairs(s, 1, random.Random(0))]
    tok = build_word_tokenizer([s["text"] for s in streams] + [q for q, _, _ in pairs] + ["Question: Text:"], vocab_size=2000)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=16, answer_layers=[1, 2])
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()
    states = encode_pairs(model, pairs, batch=3, progress=False)
    assert states.shape == (len(pairs), 2 * 64)
    head = AnswerPointer(2 * 64, hidden=0)
    with torch.no_grad():
        head.hedge.weight.normal_()
    for k in (0, len(pairs) - 1):  # read alone, as the read path reads it
        ids, n = pair_ids(tok, pairs[k][0], pairs[k][1])
        feats, _ = pointer_features(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), [1, 2])
        text = torch.arange(len(ids))[None, :] >= n
        assert torch.allclose(head.hedges(feats, text), head.hedge(states[k:k + 1])[:, 0], atol=1e-4)


def test_fit_head_learns_the_marked_pairs_and_keeps_its_best_validation_epoch():
    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(n, 8, generator=g), (torch.rand(n, generator=g) < 0.2).float()
        x[:, 0] += 3.0 * y
        return x, y
    head, log = fit_head(*data(200, 0), *data(100, 1), epochs=60, lr=0.05)
    assert log[0]["val_auc"] == 0.5 and max(r["val_auc"] for r in log) > 0.95
    assert roc_auc(head(data(100, 1)[0])[:, 0].detach(), data(100, 1)[1]) == max(r["val_auc"] for r in log)
