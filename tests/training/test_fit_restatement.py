"""Fitting the answer pointer's restatement weights (training/fit_restatement.py): pairs that
restate an earlier sentence, and a fit that learns to point at what a correction replaced."""

import random

import torch

from memadapter.training.counterfactual import generate_counterfactual_stream
from memadapter.training.fit_pointer import PairSet, question_accuracy
from memadapter.training.fit_restatement import fit_weights, restated_head, stream_pairs


def test_a_correction_is_paired_with_the_sentence_it_corrects_and_targets_its_new_value():
    stream = generate_counterfactual_stream(random.Random(0), split="train", num_facts=3, filler_tokens=150)
    groups = stream_pairs(stream, negatives=2)
    assert groups
    answers = {q["question"]: q for q in stream["questions"]}
    for group in groups:
        question, sentence, span, earlier = group[0]
        q = answers[question]
        assert sentence[span[0]:span[1]] == q["answer"]  # the new value, in the correction
        assert earlier is not None and q["stale"][0] in earlier  # the original it restates holds the old value
        assert all(s is None for _, _, s, _ in group[1:])  # other facts' sentences answer nothing


def test_fit_weights_learn_to_point_at_replaced_words_and_keep_epoch_zero_when_they_do_not_help():
    def pairs(n, seed, useful=True):  # the pointer's own scores are noise; the answer token is marked "replaced"
        g = torch.Generator().manual_seed(seed)
        states = torch.zeros(n, 6, 5)
        states[..., :3] = torch.randn(n, 6, 3, generator=g)
        target = torch.zeros(n, 2, dtype=torch.long)
        gold = []
        for k in range(n):
            s = int(torch.randint(1, 6, (1,), generator=g))
            states[k, s if useful else (s % 5) + 1, 3] = 1.0
            target[k] = torch.tensor([s, s])
            gold.append(f"w{s}")
        return PairSet(states, torch.ones(n, 6, dtype=torch.bool), target, torch.zeros(n), list(range(n)), gold,
                       [[-1, 1, 2, 3, 4, 5]] * n)
    decode = lambda ids: " ".join(f"w{i}" for i in ids)
    weights, log = fit_weights(pairs(200, 0), pairs(100, 1), decode, epochs=100, lr=0.2)
    assert float(weights[0, 0]) > 1 and float(weights[0, 1]) > 1  # "replaced" raises start and end
    assert question_accuracy(restated_head(weights), pairs(100, 1), decode) > log[0]["val_question_accuracy"] + 0.3
    weights, log = fit_weights(pairs(200, 0), pairs(100, 1, useful=False), decode, epochs=30, lr=0.2)
    assert log[0]["val_question_accuracy"] >= max(r["val_question_accuracy"] for r in log[1:]) and \
        float(weights.abs().sum()) == 0.0  # on validation the features mislead: epoch 0 (zeros) is kept


def test_encoded_pairs_round_trip_through_the_cache_and_carry_restatement_features(tmp_path):
    from memadapter.modeling.configuration_memadapter import MemAdapterConfig
    from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
    from memadapter.modeling.tiny import tiny_backbone
    from memadapter.restatement import FEATURES
    from memadapter.training.fit_restatement import Encoded, encode_pairs, pair_set
    from memadapter.training.train import build_word_tokenizer

    stream = generate_counterfactual_stream(random.Random(1), split="train", num_facts=2, filler_tokens=80)
    groups = stream_pairs(stream, negatives=1)
    tok = build_word_tokenizer([stream["text"]] + [q["question"] for q in stream["questions"]] + ["Question: Text:"],
                               vocab_size=1000)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=16,
                           answer_layers=[1, 2])
    torch.manual_seed(0)
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()
    enc = encode_pairs(model, groups, batch=2, progress=False)
    assert enc.logits.shape[0] == len(enc.pairs) == len(enc.question) and enc.logits.shape[-1] == 3
    enc.save(str(tmp_path / "part"))
    back = Encoded.load(str(tmp_path / "part"))
    assert torch.equal(back.logits, enc.logits) and back.pairs == [tuple(p) for p in enc.pairs] and back.gold == enc.gold
    data = pair_set([enc, back], tok)
    assert data.states.shape[-1] == 3 + len(FEATURES) and len(set(data.question)) == 2 * len(set(enc.question))
    answers = [k for k, g in enumerate(data.gold) if g is not None]
    assert any(float(data.states[k, :, 3:].abs().sum()) > 0 for k in answers)  # corrections restate their originals
