"""Phase 12 data, training loop, evaluation and reporting, on a tiny model (seconds)."""

import json
import random

import pytest
import torch

from memadapter.bench.stats import wilson_interval
from memadapter.errors import ConfigError
from experiments.native_lm import ASIDE, NONE, PROTECT, QUERY, UPDATE, WRITE, NativeLMConfig, NativeMemoryLM
from experiments import phase12 as p12

TINY = NativeLMConfig(d_model=32, n_heads=2, mlp_hidden=64, chunk_size=8, key_dim=16, value_dim=16,
                      answer_hidden=64, num_slots=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _expected_answer(s: p12.Stream) -> int:
    """Independent rule: the last signalled write of the queried key; with no signal, its only event."""
    q = s.keys[-1]
    signalled = [v for m, k, v in zip(s.markers, s.keys, s.values) if k == q and m in (WRITE, UPDATE, PROTECT)]
    if signalled:
        return signalled[-1]
    (only,) = [v for m, k, v in zip(s.markers[:-1], s.keys, s.values) if k == q]
    return only


@pytest.mark.parametrize("setting", p12.SETTINGS)
def test_streams_are_well_formed(setting):
    rng = random.Random(3)
    for n in (48, 64):
        s = p12.make_stream(setting, n, rng)
        assert len(s.markers) == len(s.keys) == len(s.values) == n + 1 and len(s.write_labels) == n
        assert s.markers[-1] == QUERY and QUERY not in s.markers[:-1] and s.values[-1] == 256
        assert s.answer == _expected_answer(s)
        assert s.write_labels == [int(m in (WRITE, UPDATE, PROTECT)) for m in s.markers[:-1]]


def test_setting_specific_structure():
    rng = random.Random(0)
    uni = p12.make_stream("uniform", 64, rng)
    assert sum(uni.write_labels) == 0 and len(set(uni.keys[:-1])) == 64
    dis = p12.make_stream("distractor", 64, rng)
    q = dis.keys[-1]
    asides = [v for m, k, v in zip(dis.markers, dis.keys, dis.values) if k == q and m == ASIDE]
    assert len(asides) == 2 and PROTECT in dis.markers
    assert any(k == q + 128 for k in dis.keys)  # its look-alike is written too
    st = p12.make_stream("streaming", 4096, rng)
    assert sum(st.write_labels) == 2 and st.markers.count(NONE) > 3000
    with pytest.raises(ConfigError, match="n_events"):
        p12.make_stream("uniform", 200, rng)
    with pytest.raises(ConfigError, match="setting"):
        p12.make_stream("nope", 10, rng)


def test_streams_are_deterministic_under_a_seed():
    a = p12.eval_streams(1, 2, TINY, p12.EVAL_SETTINGS[:5])
    b = p12.eval_streams(1, 2, TINY, p12.EVAL_SETTINGS[:5])
    c = p12.eval_streams(2, 2, TINY, p12.EVAL_SETTINGS[:5])
    assert a == b and a != c


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = NativeMemoryLM(TINY)
    batch = p12.collate([p12.make_stream(s, 40, random.Random(i)) for i, s in enumerate(p12.SETTINGS * 2)])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss, parts = p12.loss_fn(model, batch, "lite_write", 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_variants_differ_only_by_the_write_auxiliary():
    torch.manual_seed(0)
    model = NativeMemoryLM(TINY)
    batch = p12.collate([p12.make_stream("recall", 16, random.Random(i)) for i in range(4)])
    lite, parts = p12.loss_fn(model, batch, "lite_write", 0.2)
    plain, _ = p12.loss_fn(model, batch, "answer_only", 0.2)
    assert float((lite - plain).detach()) == pytest.approx(p12.WRITE_AUX_WEIGHT * parts["write_bce"], rel=1e-5)


def test_train_is_deterministic_and_evaluate_counts_writes():
    cfg = p12.TrainConfig(variant="answer_only", seed=4, steps=3, batch_size=4, train_events=40)
    m1, log1 = p12.train(cfg, TINY, progress=False)
    m2, log2 = p12.train(cfg, TINY, progress=False)
    assert [r["loss"] for r in log1] == [r["loss"] for r in log2]
    streams = p12.eval_streams(0, 3, TINY, (("recall_32", "recall", 32), ("streaming_64", "streaming", 64)))
    res = p12.evaluate(m1, streams)
    assert set(res) == {"recall_32", "streaming_64"}
    for r in res.values():
        assert r["total"] == 3 and 0 <= r["correct"] <= 3 and len(r["writes"]) == 3
        assert all(0 <= w <= 64 for w in r["writes"]) and 0.0 <= r["memory_branch"] <= 1.0


def test_temperature_anneals_from_start_to_end():
    cfg = p12.TrainConfig(steps=11)
    assert p12.temperature_at(0, cfg) == pytest.approx(cfg.temperature_start)
    assert p12.temperature_at(10, cfg) == pytest.approx(cfg.temperature_end)
    with pytest.raises(ConfigError, match="variant"):
        p12.TrainConfig(variant="full").validate()


def _row(variant, seed, correct, writes):
    per = {"recall_64": {"correct": correct, "total": 200, "writes": [1], "memory_branch": 1.0},
           p12.LONGEST: {"correct": 0, "total": 0, "writes": writes, "memory_branch": 1.0}}
    return {"method": variant, "task": "phase12", "variant": variant, "seed": seed, "correct": correct,
            "total": 200, "per_setting": per}


def test_summary_pools_seeds_with_wilson_intervals():
    rows = [_row("answer_only", s, 190 + s, [100, 50]) for s in range(3)] + \
           [_row("lite_write", s, 199, [2, 1]) for s in range(3)]
    pooled = {p["variant"]: p for p in p12.summarize(rows)}
    assert pooled["answer_only"]["correct"] == 573 and pooled["answer_only"]["total"] == 600
    assert pooled["answer_only"]["wilson95"] == list(wilson_interval(573, 600))
    assert pooled["lite_write"]["writes_longest_mean"] == pytest.approx(1.5)
    assert pooled["lite_write"]["writes_longest_max"] == 2
    table = p12.markdown_table(rows)
    assert "573/600" in table and "597/600" in table


def test_cli_writes_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setattr(p12, "EVAL_SETTINGS", (("recall_64", "recall", 64), ("streaming_96", "streaming", 96)))
    monkeypatch.setattr(p12, "LONGEST", "streaming_96")
    monkeypatch.setattr(p12, "NativeLMConfig", lambda: TINY)
    assert p12.main(["--variant", "answer_only", "--seed", "0", "--steps", "2", "--eval-per-setting", "2",
                     "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "phase12_answer_only_seed0.json").read_text())
    assert rows[0]["total"] == 4 and rows[0]["variant"] == "answer_only"
    assert "streaming_96" in (tmp_path / "phase12_answer_only_seed0.md").read_text()
