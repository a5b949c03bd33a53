"""Fitting the learned reader (training/fit_reader.py): labels from the generator's spans, the
listwise fit, pools collected from a tiny model's own ingest, and the CLI's output."""

import random

import pytest
import torch

from memadapter.errors import ConfigError
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.read_candidates import reference_read
from memadapter.modeling.read_scorer import FEATURES, NUM_FEATURES, ReadScorer
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training.fit_reader import PoolSet, collect_pools, fit_scorer, label_pool, live_withdrawals, pick_accuracy, spells
from memadapter.training.lifecycle_data import UNKNOWN, generate_stream
from memadapter.training.train import build_word_tokenizer


def test_label_pool_marks_the_entries_in_the_answer_sentence():
    starts = [0, 4, 9, 15, 20]  # characters where tokens 0..4 start
    event = {"start": 9, "end": 20}
    assert label_pool(torch.tensor([0.0, 2.0, 3.5, 4.0, 99.0]), starts, event).tolist() == [False, True, True, False, False]


def test_spells_keeps_the_entries_whose_value_is_the_answer_where_any_is():
    positive = torch.tensor([True, True, True, False])
    values = ["formed in Time", "Time.", None, "Time"]
    assert spells(values, "time", positive).tolist() == [False, True, False, False]
    assert spells(values, "Knoxville", positive).tolist() == positive.tolist()  # none spells it: all stay
    assert spells(values, UNKNOWN, positive).tolist() == positive.tolist()  # a withdrawn fact: no value to spell


def test_fit_scorer_learns_what_the_prior_gets_wrong():
    """The prior reads the best key match; in these pools the right entry is the later of two
    (a version): fitting moves the pick to it, chosen on separate validation pools."""
    def pools(n, seed):
        g = torch.Generator().manual_seed(seed)
        f = torch.zeros(n, 3, NUM_FEATURES)
        f[..., FEATURES.index("key_match")] = torch.rand(n, 3, generator=g)
        right = torch.randint(0, 3, (n,), generator=g)
        f[torch.arange(n), right, FEATURES.index("later_version")] = 0.0
        wrong = torch.ones(n, 3, dtype=torch.bool)
        wrong[torch.arange(n), right] = False
        f[..., FEATURES.index("later_version")] += wrong.float() * 0.9
        return PoolSet(f, torch.ones(n, 3, dtype=torch.bool), ~wrong)
    train, val = pools(64, 0), pools(64, 1)
    from memadapter.modeling.read_scorer import ReadScorer
    assert pick_accuracy(ReadScorer(), val) < 0.6
    scorer, log = fit_scorer(train, val, epochs=150)
    assert pick_accuracy(scorer, val) > 0.95 and log[0]["epoch"] == 0


def test_fit_scorer_only_learns_the_named_feature_from_the_given_scorer():
    """Entry 1 is right and marked by answer_hedge being low where entry 0's is high: fitting that
    feature alone moves the pick, and every other weight stays as the given scorer has it."""
    def pools(n, seed):
        g = torch.Generator().manual_seed(seed)
        f = torch.zeros(n, 2, NUM_FEATURES)
        f[..., FEATURES.index("key_match")] = torch.rand(n, 2, generator=g)
        f[:, 0, FEATURES.index("key_match")] += 1.0  # the prior picks entry 0
        f[:, 0, FEATURES.index("answer_hedge")] = 1.0  # ... a hedged one
        return PoolSet(f, torch.ones(n, 2, dtype=torch.bool), torch.tensor([[False, True]] * n))
    init = ReadScorer()
    before = {k: v.clone() for k, v in init.state_dict().items()}
    scorer, log = fit_scorer(pools(40, 0), pools(20, 1), epochs=100, lr=0.1, init=init, only=["answer_hedge"])
    assert log[0]["val_pick"] == 0.0 and pick_accuracy(scorer, pools(20, 1)) == 1.0
    col = FEATURES.index("answer_hedge")
    for k, v in scorer.state_dict().items():
        keep = torch.ones_like(v, dtype=torch.bool)
        if k in ("linear.weight", "mlp.0.weight"):
            keep[:, col] = False
        assert torch.equal(v[keep], before[k][keep]), k  # nothing else moved
    assert all(torch.equal(v, before[k]) for k, v in init.state_dict().items())  # fitted on a copy
    with pytest.raises(ConfigError, match="init"):
        fit_scorer(pools(4, 0), pools(4, 1), epochs=1, only=["answer_hedge"])


def test_fit_scorer_with_a_stale_weight_pushes_superseded_versions_down(tmp_path):
    """No pool holds its answer (listwise has nothing to learn), and the best key match is a
    superseded version marked by later_version: only the stale loss moves the pick off it, and
    the epoch is chosen by validation pick accuracy less the stale pick rate."""
    def pools(n, seed):
        g = torch.Generator().manual_seed(seed)
        f = torch.zeros(n, 3, NUM_FEATURES)
        f[..., FEATURES.index("key_match")] = torch.rand(n, 3, generator=g)
        f[:, 0, FEATURES.index("key_match")] += 1.0
        f[:, 0, FEATURES.index("later_version")] = 0.9
        stale = torch.tensor([[True, False, False]] * n)
        return PoolSet(f, torch.ones(n, 3, dtype=torch.bool), torch.zeros(n, 3, dtype=torch.bool), stale)
    train, val = pools(32, 0), pools(16, 1)
    plain, _ = fit_scorer(train, val, epochs=50, lr=0.1)
    assert pick_accuracy(plain, val, val.stale) == 1.0
    weighted, log = fit_scorer(train, val, epochs=50, lr=0.1, stale_weight=1.0)
    assert log[0]["val_stale_pick"] == 1.0 and pick_accuracy(weighted, val, val.stale) == 0.0
    train.save(str(tmp_path / "p.safetensors"))
    assert torch.equal(PoolSet.load(str(tmp_path / "p.safetensors")).stale, train.stale)


def test_pools_cached_without_stale_labels_load_with_none_marked(tmp_path):
    from safetensors.torch import save_file
    f, v = torch.zeros(2, 3, NUM_FEATURES), torch.ones(2, 3, dtype=torch.bool)
    save_file({"features": f, "valid": v, "positive": v.clone()}, str(tmp_path / "old.safetensors"))
    old = PoolSet.load(str(tmp_path / "old.safetensors"))
    assert old.stale.shape == (2, 3) and not bool(old.stale.any())


def test_collect_pools_from_a_tiny_model_and_cache_them(tmp_path):
    rng = random.Random(0)
    streams = [generate_stream(rng, split="train", num_entities=2, num_updates=1, num_distractors=1, num_uniform=1)
               for _ in range(2)]
    texts = [s["text"] for s in streams] + [q["question"] for s in streams for q in s["questions"]]
    tok = build_word_tokenizer(texts, vocab_size=1000)
    torch.manual_seed(0)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=16)
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()
    with torch.no_grad():  # an untrained tagger may say "O" everywhere: make it propose
        model.grounding.tagger.bias[0] = -5.0
    grounded, propose = [], model._propose  # outside reference_ingest only the read path proposes through it

    def counted(hidden, mask, rows):
        grounded.extend(tuple(r) for r in rows)
        return propose(hidden, mask, rows)
    model._propose = counted
    pools = collect_pools(model, streams, progress=False)
    del model._propose
    assert pools.features.shape[0] == sum(len(s["questions"]) for s in streams)
    assert pools.features.shape[-1] == NUM_FEATURES and bool(pools.valid.any())
    assert 0.0 < pools.coverage() <= 1.0  # the tagger proposes everywhere: some answer sentences are in the pools
    chunks = [tuple(tok(t, add_special_tokens=False)["input_ids"]) for s in streams for t in _chunk_texts(model, s)]
    assert grounded and set(grounded) <= set(chunks)
    assert len(grounded) <= len(chunks) and all(grounded.count(c) <= chunks.count(c) for c in set(grounded))
    pools.save(str(tmp_path / "p.safetensors"))
    again = PoolSet.load(str(tmp_path / "p.safetensors"))
    assert torch.equal(again.features, pools.features) and torch.equal(again.positive, pools.positive)
    assert torch.equal(again.stale, pools.stale) and not bool((pools.stale & pools.positive).any())  # other sentences
    memory = model.new_memory()
    model.ingest(memory, streams[0]["text"], progress=False)
    every = list(range(len(memory.indexes[0])))
    with reference_read():
        plain = [(e.key_text, e.position) for e in model._chunk_events(memory, 0, every)]
    model._ground(memory, [(0, i) for i in every])  # every chunk grounded up front, then read from the cache
    assert len(memory.read_cache) == len(every) and all(e.events is not None for e in memory.read_cache.values())
    assert [(e.key_text, e.position) for e in model._chunk_events(memory, 0, every)] == plain


def _chunk_texts(model, stream):
    """The texts of the chunks ingesting ``stream`` gives."""
    memory = model.new_memory()
    model.ingest(memory, stream["text"], progress=False)
    return [memory.indexes[0].text(i) for i in range(len(memory.indexes[0]))]


def test_live_withdrawals_are_the_withdrawals_of_pools_whose_answer_is_a_value():
    f = torch.zeros(3, 3, NUM_FEATURES)
    f[:, 2, FEATURES.index("withdrawn")] = 1.0  # the last entry of each pool is a withdrawal
    valid = torch.tensor([[True, True, True], [True, True, True], [True, True, False]])
    positive = torch.tensor([[True, False, False],  # a live fact: its withdrawal says "unknown" wrongly
                             [False, False, True],  # a withdrawn fact: the withdrawal is right
                             [True, False, False]])  # a live fact, its withdrawal entry padding
    pools = PoolSet(f, valid, positive)
    assert live_withdrawals(pools).tolist() == [[False, False, True], [False, False, False], [False, False, False]]
    scorer = ReadScorer()
    with torch.no_grad():
        scorer.linear.weight.zero_()
        scorer.linear.weight[0, FEATURES.index("withdrawn")] = 5.0  # picks every withdrawal it can
    assert pick_accuracy(scorer, pools, live_withdrawals(pools)) == pytest.approx(1 / 3)
