"""Fitting the answer pointer (training/fit_pointer.py): pairs from the generator's spans, states
read by a tiny backbone, and a fit that learns where answers are."""

import random

import torch

from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training.fit_pointer import PairSet, encode_pairs, fit_pointer, question_accuracy, stream_pairs
from memadapter.training.lifecycle_data import UNKNOWN, generate_stream
from memadapter.training.open_data import generate_open_stream
from memadapter.training.train import build_word_tokenizer


def test_stream_pairs_put_the_answer_sentence_first_and_other_sentences_after():
    stream = generate_open_stream(random.Random(3), filler_tokens=200)
    groups = stream_pairs(stream, negatives=2, rng=random.Random(0))
    events = stream["events"]
    assert len(groups) == len(stream["questions"]) > 0
    sentence_of = lambda e: stream["text"][e["start"]:e["end"]]
    for group, q in zip(groups, stream["questions"]):
        e = events[q["answer_event"]]
        question, sentence, span, withdraws = group[0]
        assert question == q["question"] and sentence == stream["text"][e["start"]:e["end"]]
        if q["answer"] == UNKNOWN:  # the retraction withdraws; the fact's earlier versions answer it
            assert span is None and withdraws and e["event_type"] == "retract"
            earlier = [p for p in group[1:] if p[2] is not None]
            assert earlier and all(s[a0:a1] in [o["value"] for o in events if o["entity"] == e["entity"]]
                                   for _, s, (a0, a1), _ in earlier)
        else:
            assert sentence[span[0]:span[1]] == e["value"] and not withdraws
        negatives = [p for p in group[1:] if p[2] is None]
        assert all(not w and s != sentence for _, s, _, w in negatives)
        other_retractions = {sentence_of(o) for o in events if o["event_type"] == "retract"
                             and (o["entity"], o["attribute"]) != (e["entity"], e["attribute"])}
        assert other_retractions <= {s for _, s, _, _ in negatives}  # every other fact's retraction is a negative
    assert any(g[0][3] for g in groups)  # open streams retract one fact


def test_encode_pairs_reads_each_pair_once_and_targets_the_value_tokens():
    rng = random.Random(0)
    streams = [generate_stream(rng, split="train", num_entities=2, num_updates=1, num_distractors=1, num_uniform=1)
               for _ in range(2)]
    groups = [g for s in streams for g in stream_pairs(s, 1, random.Random(0))]
    tok = build_word_tokenizer([s["text"] for s in streams] + [q for g in groups for q, _, _, _ in g] + ["Question: Text:"],
                               vocab_size=1000)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=16,
                           answer_layers=[1, 2])
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()
    data = encode_pairs(model, groups, batch=3, progress=False)
    assert data.states.shape[0] == len(data.question) == len(data.gold) == len(data.withdraw) == sum(len(g) for g in groups)
    assert float(data.withdraw.sum()) == sum(w for g in groups for _, _, _, w in g) > 0
    assert data.states.shape[-1] == 2 * 64 and bool(data.valid[:, 0].all())
    for k, gold in enumerate(data.gold):
        s, e = data.target[k].tolist()
        if data.withdraw[k]:
            assert (s, e) == (0, 0) and gold is None
        elif gold is not None:
            assert 1 <= s <= e and model._decode(data.ids[k][s:e + 1]).strip() == gold.lower()  # a lowercasing word tokenizer


def test_fit_pointer_learns_answers_and_withdrawals_and_picks_its_epoch_on_validation():
    def pairs(n, seed):  # a marked feature sits on the answer's tokens of positives, another on withdrawals' last token
        g = torch.Generator().manual_seed(seed)
        states = torch.randn(n, 6, 4, generator=g) * 0.1
        target = torch.zeros(n, 2, dtype=torch.long)
        withdraw = torch.zeros(n)
        gold = []
        for k in range(n):
            if k % 3 == 0:
                s = int(torch.randint(1, 5, (1,), generator=g))
                states[k, s, 0] = states[k, s + 1, 1] = 3.0
                target[k] = torch.tensor([s, s + 1])
                gold.append(f"w{s} w{s + 1}")
            else:
                gold.append(None)
                if k % 3 == 1 and k % 2 == 0:  # question k // 3 was withdrawn: this pair says so
                    states[k, 5, 2] = 3.0
                    withdraw[k] = 1.0
        question = [k // 3 for k in range(n)]
        for k in range(n):  # a withdrawn question has no gold
            if any(withdraw[j] for j in range(n) if question[j] == question[k]):
                gold[k] = None
        return PairSet(states, torch.ones(n, 6, dtype=torch.bool), target, withdraw, question, gold,
                       [[-1, 1, 2, 3, 4, 5]] * n)
    decode = lambda ids: " ".join(f"w{i}" for i in ids)
    train, val = pairs(120, 0), pairs(60, 1)
    head, log = fit_pointer(train, val, decode, epochs=30, lr=1e-2)
    best = max(r["val_question_accuracy"] for r in log)
    assert log[0]["epoch"] == 0 and question_accuracy(head, val, decode) == best == 1.0 > log[0]["val_question_accuracy"]
