"""Fitting the answer pointer (training/fit_pointer.py): pairs from the generator's spans, states
read by a tiny backbone, and a fit that learns where answers are."""

import random

import torch

from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training.fit_pointer import PairSet, answer_accuracy, encode_pairs, fit_pointer, stream_pairs
from memadapter.training.lifecycle_data import UNKNOWN, generate_stream
from memadapter.training.open_data import generate_open_stream
from memadapter.training.train import build_word_tokenizer


def test_stream_pairs_put_the_answer_sentence_first_and_other_sentences_after():
    stream = generate_open_stream(random.Random(3), filler_tokens=200)
    groups = stream_pairs(stream, negatives=2, rng=random.Random(0))
    answerable = [q for q in stream["questions"] if q["answer"] != UNKNOWN]
    assert len(groups) == len(answerable) > 0
    for group, q in zip(groups, answerable):
        (question, sentence, (a0, a1)), negatives = group[0], group[1:]
        assert question == q["question"] and sentence[a0:a1] == stream["events"][q["answer_event"]]["value"]
        assert len(negatives) <= 2 and all(span is None and s != sentence for _, s, span in negatives)


def test_encode_pairs_reads_each_pair_once_and_targets_the_value_tokens():
    rng = random.Random(0)
    streams = [generate_stream(rng, split="train", num_entities=2, num_updates=1, num_distractors=1, num_uniform=1)
               for _ in range(2)]
    groups = [g for s in streams for g in stream_pairs(s, 1, random.Random(0))]
    tok = build_word_tokenizer([s["text"] for s in streams] + [q for g in groups for q, _, _ in g] + ["Question: Text:"],
                               vocab_size=1000)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=16,
                           answer_layers=[1, 2])
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()
    data = encode_pairs(model, groups, batch=3, progress=False)
    assert data.states.shape[0] == len(data.question) == len(data.gold) == sum(len(g) for g in groups)
    assert data.states.shape[-1] == 2 * 64 and bool(data.valid[:, 0].all())
    for k, gold in enumerate(data.gold):
        s, e = data.target[k].tolist()
        if gold is None:
            assert (s, e) == (0, 0)
        else:
            assert 1 <= s <= e and model._decode(data.ids[k][s:e + 1]).strip() == gold.lower()  # a lowercasing word tokenizer


def test_fit_pointer_learns_where_answers_are_and_picks_its_epoch_on_validation():
    def pairs(n, seed):  # a marked feature sits on the answer's tokens of positives; negatives have none
        g = torch.Generator().manual_seed(seed)
        states = torch.randn(n, 6, 4, generator=g) * 0.1
        target = torch.zeros(n, 2, dtype=torch.long)
        gold = []
        for k in range(n):
            if k % 2 == 0:
                s = int(torch.randint(1, 5, (1,), generator=g))
                states[k, s, 0] = states[k, s + 1, 1] = 3.0
                target[k] = torch.tensor([s, s + 1])
                gold.append(f"w{s} w{s + 1}")
            else:
                gold.append(None)
        return PairSet(states, torch.ones(n, 6, dtype=torch.bool), target, [k // 2 for k in range(n)], gold,
                       [[-1, 1, 2, 3, 4, 5]] * n)
    decode = lambda ids: " ".join(f"w{i}" for i in ids)
    train, val = pairs(80, 0), pairs(40, 1)
    head, log = fit_pointer(train, val, decode, epochs=30, lr=1e-2)
    assert log[0]["epoch"] == 0 and answer_accuracy(head, val, decode) == max(r["val_answer_em"] for r in log) == 1.0
