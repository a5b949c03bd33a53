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
from memadapter.sentences import sentence_spans
from memadapter.training.train import build_word_tokenizer


def test_stream_pairs_put_the_answer_sentence_first_and_other_sentences_after():
    stream = generate_open_stream(random.Random(3), filler_tokens=200)
    groups = stream_pairs(stream, negatives=2, rng=random.Random(0))
    events, text = stream["events"], stream["text"]
    assert len(groups) == len(stream["questions"]) > 0
    sentences = [text[a:z] for a, z in sentence_spans(text)]
    last_sentence = lambda e: next(s for s in sentences if text.index(s) < e["end"] <= text.index(s) + len(s))
    for group, q in zip(groups, stream["questions"]):
        e = events[q["answer_event"]]
        question, sentence, span, withdraws, context = group[0]
        assert question == q["question"] and sentence in sentences and context == ""
        if q["answer"] == UNKNOWN:  # the retraction withdraws; the fact's earlier versions answer it
            assert span is None and withdraws and e["event_type"] == "retract" and sentence == last_sentence(e)
            earlier = [p for p in group[1:] if p[2] is not None]
            assert earlier and all(s[a0:a1] in [o["value"] for o in events if o["entity"] == e["entity"]]
                                   for _, s, (a0, a1), _, _ in earlier)
        else:
            assert sentence[span[0]:span[1]] == e["value"] and not withdraws
        negatives = [p for p in group[1:] if p[2] is None]
        assert all(not w and s != sentence for _, s, _, w, _ in negatives)
        other_retractions = {last_sentence(o) for o in events if o["event_type"] == "retract"
                             and (o["entity"], o["attribute"]) != (e["entity"], e["attribute"])}
        assert other_retractions <= {s for _, s, _, _, _ in negatives}  # every other fact's retraction is a negative
    assert any(g[0][3] for g in groups)  # open streams retract one fact


def _follow_up_stream():
    for seed in range(200):  # a stream whose answer sentence is a follow_up one: "... It is {value}."
        stream = generate_open_stream(random.Random(seed), filler_tokens=100)
        for q in stream["questions"]:
            e = stream["events"][q["answer_event"]]
            if e["template"].startswith("follow_up|") and e["event_type"] != "retract" and q["answer"] != UNKNOWN:
                return stream, q, e
    raise AssertionError("no follow_up answer in 200 streams")


def test_stream_pairs_read_a_value_in_the_sentence_after_its_key_with_that_sentence_as_context():
    stream, q, e = _follow_up_stream()
    groups = stream_pairs(stream, negatives=2, rng=random.Random(0), context=1)
    _, sentence, span, _, context = groups[stream["questions"].index(q)][0]
    assert sentence[span[0]:span[1]] == e["value"] and e["entity"] not in sentence  # "It is D-21."
    assert e["entity"] in context and (context + " " + sentence) in stream["text"]
    assert all(p[4] == "" for g in stream_pairs(stream, 2, random.Random(0)) for p in g)  # context 0: none


def test_encode_pairs_reads_each_pair_once_and_targets_the_value_tokens():
    rng = random.Random(0)
    streams = [generate_stream(rng, split="train", num_entities=2, num_updates=1, num_distractors=1, num_uniform=1)
               for _ in range(2)]
    groups = [g for s in streams for g in stream_pairs(s, 1, random.Random(0))]
    tok = build_word_tokenizer([s["text"] for s in streams] + [q for g in groups for q, *_ in g] + ["Question: Text:"],
                               vocab_size=1000)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=16,
                           answer_layers=[1, 2])
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()
    data = encode_pairs(model, groups, batch=3, progress=False)
    assert data.states.shape[0] == len(data.question) == len(data.gold) == len(data.withdraw) == sum(len(g) for g in groups)
    assert float(data.withdraw.sum()) == sum(w for g in groups for _, _, _, w, _ in g) > 0
    assert data.states.shape[-1] == 2 * 64 and bool(data.valid[:, 0].all())
    for k, gold in enumerate(data.gold):
        s, e = data.target[k].tolist()
        if data.withdraw[k]:
            assert (s, e) == (0, 0) and gold is None
        elif gold is not None:
            assert 1 <= s <= e and model._decode(data.ids[k][s:e + 1]).strip() == gold.lower()  # a lowercasing word tokenizer


def test_encode_pairs_put_the_context_before_the_sentence_and_spans_only_in_the_sentence():
    stream, q, e = _follow_up_stream()
    group = stream_pairs(stream, negatives=2, rng=random.Random(0), context=1)[stream["questions"].index(q)]
    tok = build_word_tokenizer([stream["text"], q["question"], "Question: Text:"], vocab_size=2000)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=16,
                           answer_layers=[1], answer_context=1)
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()
    data = encode_pairs(model, [group], progress=False)
    s, t = data.target[0].tolist()
    context_tokens = len(tok(" " + group[0][4], add_special_tokens=False)["input_ids"])
    assert int(data.text_start[0]) == 1 + context_tokens > 1 and s >= int(data.text_start[0])
    squeeze = lambda x: x.lower().replace(" ", "")  # a lowercasing word tokenizer that spaces "D-21" out
    assert squeeze(model._decode(data.ids[0][s:t + 1])) == squeeze(e["value"])
    text = data.text()
    assert not text[0, :int(data.text_start[0])].any() and bool(text[0, s:t + 1].all())


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
