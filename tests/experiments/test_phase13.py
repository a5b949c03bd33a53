"""Phase 13 bridge: generator invariants, hidden-state cache, protocol metadata use, training, rows."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from memadapter.errors import ConfigError, EmptyInputError, ShapeError
from experiments import phase13 as p13
from experiments import phase13_data as p13_data

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cache():
    model, tok, name = p13.load_backbone("llama")
    return p13.HiddenCache(model, tok, name, None)


def _small(split: str, seed: int, count: int = 12, n: int = 24):
    settings = tuple((s, s, n) for s in p13.TRAIN_SETTINGS)
    return p13.make_samples(split, count, seed, settings)


# ----------------------------------------------------------------------------- generator
@pytest.mark.parametrize("name,setting,n", p13.EVAL_SETTINGS[:6])
def test_generator_invariants(name, setting, n):
    for seed in range(5):
        s = p13.make_sample(setting, n, random.Random(seed), "test")
        assert len(s.events) == len(s.key_ids) == len(s.value_ids) == len(s.write_labels) == n
        assert s.key_ids[s.target] == s.query_key_id
        same = [i for i, k in enumerate(s.key_ids) if k == s.query_key_id]
        written = [i for i in same if s.write_labels[i]]
        if setting == "uniform":
            assert same == [s.target] and sum(s.write_labels) == 0
        else:  # the answer is the latest signalled event of the key; later same-key events are rumours
            assert written[-1] == s.target
            assert all(not s.write_labels[i] for i in same if i > s.target)
        ent = " ".join(s.events[s.target].split()).replace("?", "")
        assert any(w in s.query.split() for w in ent.split() if w in p13_data._NAMES["test"])


def test_hard_negatives_and_splits():
    s = p13.make_sample("hardneg", 64, random.Random(3), "test")
    first = next(w for w in s.query.split() if w in p13_data._NAMES["test"])
    keys_with_first = {s.key_ids[i] for i, e in enumerate(s.events) if first in e.split()}
    assert len(keys_with_first) >= 3  # the key, the look-alike's key, the entity's other attribute
    assert any(s.value_ids[i] != s.value_ids[s.target] for i, k in enumerate(s.key_ids)
               if k == s.query_key_id and i < s.target)  # an older version exists
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(p13_data._NAMES[a]) & set(p13_data._NAMES[b])
        assert not set(p13_data._T[a]["city"]) & set(p13_data._T[b]["city"])
    t1 = p13.make_samples("test", 10, 1, p13.EVAL_SETTINGS[:5])
    t2 = p13.make_samples("test", 10, 1, p13.EVAL_SETTINGS[:5])
    assert t1 == t2  # seeded


def test_augmented_templates_stay_off_the_held_out_ones():
    held_out = {t for split in ("val", "test") for row in p13_data._T[split].values() for t in row}
    held_out |= {q for split in ("val", "test") for q in p13_data._Q[split].values()}
    extra = {t for rows in p13_data._T_EXTRA.values() for row in rows for t in row}
    extra |= {q for qs in p13_data._Q_EXTRA.values() for q in qs}
    assert not extra & held_out
    # Off by default and without a random draw: the samples of an earlier run are unchanged.
    plain = p13.make_sample("versioning", 48, random.Random(5), "train")
    assert plain == p13.make_sample("versioning", 48, random.Random(5), "train", augment=False)
    train_rows = {t for row in p13_data._T["train"].values() for t in row}
    assert all(any(_matches(t, e) for t in train_rows) for e in plain.events)
    aug = [p13.make_sample("versioning", 48, random.Random(i), "train", augment=True) for i in range(6)]
    events = [e for s in aug for e in s.events]
    assert any(not any(_matches(t, e) for t in train_rows) for e in events)  # paraphrases are used
    train_questions = set(p13_data._Q["train"].values())
    assert any(not any(_matches(q, s.query) for q in train_questions) for s in aug)
    with pytest.raises(ConfigError, match="augment"):
        p13.make_sample("recall", 24, random.Random(0), "test", augment=True)


def test_val_paraphrases_stay_off_train_and_test():
    val_extra = {t for rows in p13_data._T_VAL_EXTRA.values() for row in rows for t in row}
    val_extra |= {q for qs in p13_data._Q_VAL_EXTRA.values() for q in qs}
    others = {t for split in ("train", "test") for row in p13_data._T[split].values() for t in row}
    others |= {q for split in ("train", "test") for q in p13_data._Q[split].values()}
    others |= {t for rows in p13_data._T_EXTRA.values() for row in rows for t in row}
    others |= {q for qs in p13_data._Q_EXTRA.values() for q in qs}
    assert not val_extra & others
    base = {t for row in p13_data._T["val"].values() for t in row}
    aug = [p13.make_sample("streaming", 128, random.Random(i), "val", augment=True) for i in range(4)]
    events = [e for s in aug for e in s.events]
    assert any(not any(_matches(t, e) for t in base) for e in events)  # value-first rows are used
    assert all(any(_matches(t, e) for t in base | val_extra) for e in events)  # and nothing else
    val_questions = set(p13_data._Q["val"].values()) | {q for qs in p13_data._Q_VAL_EXTRA.values() for q in qs}
    assert all(any(_matches(q, s.query) for q in val_questions) for s in aug)
    assert any(s.query.startswith("say ") for s in aug)  # the imperative row is used
    val = p13.make_samples("val", 12, 3, p13.EVAL_SETTINGS[:6])
    assert val == p13.make_samples("val", 12, 3, p13.EVAL_SETTINGS[:6], augment=False)  # default unchanged


def test_separator_augmentation_varies_only_the_signal_separator():
    plain = p13.make_sample("distractor", 48, random.Random(2), "train", augment=True)
    assert plain == p13.make_sample("distractor", 48, random.Random(2), "train", augment=True, wording=p13.Wording())
    varied = [p13.make_sample("distractor", 48, random.Random(i), "train", augment=True, wording=p13.Wording(separators=True))
              for i in range(4)]
    signalled = [e.split() for s in varied for e in s.events if e.split()[0] in ("note", "update", "rumor")]
    assert {words[1] for words in signalled} == set(p13_data._SEPARATORS)
    held_out = {t.split()[1] for split in ("val", "test") for row in p13_data._T[split].values() for t in row
                if t.split()[0] in ("note", "update", "rumor")}
    assert held_out == {",", ":"} and "," not in p13_data._SEPARATORS  # val's "," stays unseen
    assert set(p13_data._SEPARATORS) <= set(p13.vocabulary())
    with pytest.raises(ConfigError, match="separators"):
        p13.make_sample("recall", 24, random.Random(0), "val", wording=p13.Wording(separators=True))


def test_lead_in_augmentation_prefixes_only_plain_train_statements():
    samples = [p13.make_sample("uniform", 48, random.Random(i), "train", wording=p13.Wording(lead_ins=True)) for i in range(3)]
    firsts = [e.split()[0] for s in samples for e in s.events]
    assert set(p13_data._LEAD_INS) <= set(firsts) and set(p13_data._LEAD_INS) <= set(p13.vocabulary())
    held_out = {w for split in ("val", "test") for row in p13_data._T[split].values() for t in row for w in t.split()}
    held_out |= {w for split in ("val", "test") for q in p13_data._Q[split].values() for w in q.split()}
    assert not set(p13_data._LEAD_INS) & held_out
    signalled = p13.make_sample("versioning", 48, random.Random(0), "train", wording=p13.Wording(lead_ins=True))
    assert all(e.split()[0] in ("note", "update", "rumor") for e, w in zip(signalled.events, signalled.write_labels) if w)
    with pytest.raises(ConfigError, match="lead_ins"):
        p13.make_sample("recall", 24, random.Random(0), "test", wording=p13.Wording(lead_ins=True))


def test_question_leads_prefix_only_train_questions():
    samples = [p13.make_sample("recall", 24, random.Random(i), "train", augment=True,
                               wording=p13.Wording(question_leads=True))
               for i in range(40)]
    firsts = {s.query.split()[0] for s in samples}
    assert len(firsts & set(p13_data._QUESTION_LEADS)) >= 4
    assert firsts - set(p13_data._QUESTION_LEADS)  # about half keep their wh-word
    assert set(p13_data._QUESTION_LEADS) <= set(p13.vocabulary())
    held_out = {w for split in ("val", "test") for q in p13_data._Q[split].values() for w in q.split()}
    held_out |= {w for qs in p13_data._Q_VAL_EXTRA.values() for q in qs for w in q.split()}
    assert not set(p13_data._QUESTION_LEADS) & held_out
    with pytest.raises(ConfigError, match="question_leads"):
        p13.make_sample("recall", 24, random.Random(0), "val", wording=p13.Wording(question_leads=True))


def test_vocabulary_keeps_earlier_ids_and_covers_paraphrases():
    vocab = p13.vocabulary()
    assert len(vocab) == len(set(vocab))
    n_base = next(i for i in range(1, len(vocab)) if vocab[i] < vocab[i - 1])  # the sorted base ends here
    assert vocab[:n_base] == sorted(vocab[:n_base])
    for extra in (p13_data._T_EXTRA, p13_data._T_VAL_EXTRA):
        words = {w for rows in extra.values() for row in rows for t in row for w in t.split()}
        assert {w for w in words if not w.startswith("{")} <= set(vocab)


def _matches(template: str, sentence: str) -> bool:
    """Whether ``sentence`` is ``template`` with a two-word entity for {e} and a one-word value for {v}."""
    pattern = re.escape(template).replace(r"\{e\}", r"\w+ \w+").replace(r"\{v\}", r"\w+")
    return re.fullmatch(pattern, sentence) is not None


def test_generator_bad_input():
    with pytest.raises(ConfigError, match="setting"):
        p13.make_sample("nope", 10, random.Random(0))
    with pytest.raises(ConfigError, match="split"):
        p13.make_sample("recall", 10, random.Random(0), split="dev")
    with pytest.raises(ConfigError, match="n_events"):
        p13.make_sample("uniform", 10_000, random.Random(0), "test")
    with pytest.raises(ConfigError, match="n_events"):
        p13.make_sample("recall", 4, random.Random(0))


# ----------------------------------------------------------------------------- cache
def test_cache_matches_backbone_and_reloads(tmp_path, cache):
    from memadapter.modeling.backbones import read_hidden_states

    texts = ["note : abel ashby lives in paris .", "where does abel ashby live ?"]
    disk = p13.HiddenCache(cache.model, cache.tokenizer, "tiny-llama", tmp_path)
    got = disk.tokens(texts)
    ids = torch.tensor([cache.tokenizer(texts[0], add_special_tokens=False)["input_ids"]])
    ref = read_hidden_states(cache.model, ids, torch.ones_like(ids), -1)[0]
    torch.testing.assert_close(got[0], ref, atol=2e-2, rtol=2e-2)  # stored as float16
    again = p13.HiddenCache(cache.model, cache.tokenizer, "tiny-llama", tmp_path)
    again._encode = lambda t: (_ for _ in ()).throw(AssertionError("cache miss"))
    torch.testing.assert_close(again.tokens(texts)[1], got[1])
    other = p13.HiddenCache(p13.tiny_backbone("llama", seed=1), cache.tokenizer, "tiny-llama", tmp_path)
    assert other.fp != disk.fp  # another backbone never reads these entries
    layer1 = p13.HiddenCache(cache.model, cache.tokenizer, "tiny-llama", tmp_path, layer=1)
    assert layer1.fp != disk.fp  # states of another read layer are never served
    ref1 = read_hidden_states(cache.model, ids, torch.ones_like(ids), 1)[0]
    torch.testing.assert_close(layer1.tokens(texts[:1])[0], ref1, atol=2e-2, rtol=2e-2)


def test_multi_head_pool_matches_reference():
    torch.manual_seed(0)
    h, s = torch.randn(3, 7, 8), torch.randn(3, 7, 4)
    mask = torch.rand(3, 7) > 0.3
    mask[2] = False  # an empty row pools to zeros in both
    torch.testing.assert_close(p13.multi_head_pool(h, s, mask), p13.multi_head_pool_reference(h, s, mask))


# ----------------------------------------------------------------------------- protocols
def _scramble(s: p13.Sample, rng: random.Random) -> p13.Sample:
    return replace(s, key_ids=[rng.randrange(p13.MAX_KEYS) for _ in s.key_ids],
                   value_ids=[rng.randrange(9) for _ in s.value_ids], target=rng.randrange(len(s.events)),
                   write_labels=[rng.randrange(2) for _ in s.write_labels])


@pytest.mark.parametrize("thr", [p13.Thresholds(0.8, 0.6), p13.Thresholds(0.8, 1.2, lexical=2.0, version_margin=0.3)])
def test_learned_never_reads_metadata(cache, thr):
    samples = _small("test", 0)["streaming"]
    ad = p13.Phase13Adapter(64, "learned").eval()
    base = p13.predict(ad, p13.featurize(samples, cache, "learned"), thr)
    rng = random.Random(1)
    scrambled = p13.predict(ad, p13.featurize([_scramble(s, rng) for s in samples], cache, "learned"), thr)
    stripped = [SimpleNamespace(events=s.events, query=s.query) for s in samples]  # no metadata at all
    bare = p13.predict(ad, p13.featurize(stripped, cache, "learned"), thr)
    for row in p13.ROWS:
        assert torch.equal(base[row], scrambled[row]) and torch.equal(base[row], bare[row])


def test_oracle_reads_key_ids_only_where_the_paper_does(cache):
    samples = _small("test", 0)["versioning"]
    f = p13.featurize(samples, cache, "oracle")
    assert f.event_tok is None  # no source-sentence key-span pooling in the oracle protocol
    assert f.query_key_ids.tolist() == [s.key_ids[s.target] for s in samples]
    with pytest.raises(AttributeError):  # the oracle protocol needs key ids
        p13.featurize([SimpleNamespace(events=s.events, query=s.query) for s in samples], cache, "oracle")
    ad = p13.Phase13Adapter(64, "oracle").eval()
    base = p13.predict(ad, f, p13.ORACLE_THRESHOLDS)
    no_values = [replace(s, value_ids=[0] * len(s.value_ids), write_labels=[0] * len(s.events)) for s in samples]
    same = p13.predict(ad, p13.featurize(no_values, cache, "oracle"), p13.ORACLE_THRESHOLDS)
    for row in p13.ROWS:  # value ids and write labels are never inputs
        assert torch.equal(base[row], same[row])


def test_featurize_bad_input(cache):
    s = _small("train", 0)
    with pytest.raises(ConfigError, match="protocol"):
        p13.featurize(s["recall"], cache, "magic")
    with pytest.raises(EmptyInputError, match="samples"):
        p13.featurize([], cache, "learned")
    longer = p13.make_sample("recall", 32, random.Random(0))
    with pytest.raises(ShapeError, match="samples"):
        p13.featurize(s["recall"] + [longer], cache, "learned")


# ----------------------------------------------------------------------------- training and rows
def _accuracy(ad, groups, cache, thr):
    rows = p13.evaluate(ad, groups, cache, thr)
    tot = {r: [0, 0] for r in p13.ROWS}
    for r in rows:
        if "correct" in r:
            tot[r["row"]][0] += r["correct"]
            tot[r["row"]][1] += r["total"]
    return {k: c / n for k, (c, n) in tot.items()}, rows


@pytest.mark.parametrize("protocol", p13.PROTOCOLS)
def test_training_improves_pointer_accuracy(protocol, cache):
    cfg = p13.TrainConfig(protocol=protocol, steps=120, batch=12, train_samples=72, train_events=24)
    held = _small("train", 99, count=24)  # fresh samples, the training names and templates
    torch.manual_seed(0)
    before, _ = _accuracy(p13.Phase13Adapter(64, protocol).eval(), held, cache, p13.Thresholds(0.5, 0.5))
    ad, curve = p13.train(cfg, cache, 64)
    thr = p13.calibrate(ad, _small("train", 50, count=12), cache)
    after, rows = _accuracy(ad, held, cache, thr)
    assert curve[-1] < curve[0]
    # measured: oracle ~1.0, learned ~0.5 after this short run (both ~0.05 untrained)
    assert after["hybrid"] >= before["hybrid"] + 0.3
    assert protocol == "learned" or after["hybrid"] >= 0.9
    assert after["full_hidden"] > before["full_hidden"]
    assert {r["row"] for r in rows} >= set(p13.ROWS)


def test_lexical_read_finds_the_named_entity_and_the_version_rule_its_latest_write(cache):
    # An untrained adapter: its keys carry nothing, so what is right comes from the question's words
    # (lexical coverage) and, among the slots about that key, the stream order (version rule).
    torch.manual_seed(0)
    ad = p13.Phase13Adapter(64, "learned").eval()
    events = ["note : abel ashby lives in paris .", "note : bria brook likes the color red .",
              "update : abel ashby moved to rome .", "note : cato colt lives in oslo ."]
    s = SimpleNamespace(events=events, query="where does abel ashby live ?")
    f = p13.featurize([s], cache, "learned")
    with torch.no_grad():
        ad.writer.mlp[2].bias.fill_(20.0)  # write everything: four slots, no key merges them
    keys_only = p13.predict(ad, f, p13.Thresholds(1.0, -1.0))  # replace never, route always
    lexical = p13.predict(ad, f, p13.Thresholds(1.0, -1.0, lexical=4.0))
    # The update lacks "lives": with words weighted by a corpus where "lives" is common, it stays
    # within the margin of the fact (random keys add up to ~0.5) and, written last, is read.
    ad.background = p13.background_idf(["bria brook lives in rome .", "cato colt lives in oslo .", "dara moved to rome ."])
    latest = p13.predict(ad, f, p13.Thresholds(1.0, -1.0, lexical=4.0, lexical_idf="train", version_margin=1.0,
                                               version_cosine=-1.0))
    assert int(lexical["memory"][0]) in (0, 2)  # a slot about abel ashby
    assert int(latest["memory"][0]) == int(latest["hybrid"][0]) == 2  # ... and the update, written last
    assert keys_only["memory"].shape == (1,)


def test_fallback_version_rule_reads_the_latest_written_version():
    from experiments.phase13_read import _latest_written

    keys = torch.tensor([[1.0, 0.0], [0.9, 0.436], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # event 3: another key
    cand = torch.tensor([0, 1, 3, 4])  # the fallback's candidates (event ids)
    sim = torch.tensor([0.90, 0.85, 0.89, 0.88])
    p = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.1])  # event 4 (latest, same key) is a rumour: not written
    thr = p13.Thresholds(0.9, 0.5, write=0.5, version_margin=0.1, version_cosine=0.8)
    assert _latest_written(cand, sim, keys, p, 0, thr) == 1  # event 1: a later written version
    assert _latest_written(cand, sim, keys, p, 0, replace(thr, version_margin=0.01)) == 0  # outside the margin
    assert _latest_written(cand, sim, keys, torch.zeros(5), 0, thr) == 0  # nothing written: the best


def test_token_writer_reads_token_states_of_the_learned_protocol_only(cache):
    ad = p13.Phase13Adapter(64, "learned", token_writer=True).eval()
    f = p13.featurize(_small("test", 0)["recall"][:2], cache, "learned")
    p = ad.p_write(f)
    assert p.shape == f.event_vec.shape[:2] and bool(((p >= 0) & (p <= 1)).all())
    with pytest.raises(ConfigError, match="token_writer"):
        p13.Phase13Adapter(64, "oracle", token_writer=True)


def test_coverage_is_the_questions_idf_share_in_each_event():
    texts = p13.Texts([["abel ashby lives in paris .", "bria brook lives in rome ."]], ["where does abel ashby live ?"])
    cov = texts.coverage()
    assert cov.shape == (1, 2) and float(cov[0, 0]) == pytest.approx(1.0)
    assert 0.0 < float(cov[0, 1]) < 0.2  # shares only "live(s)", a word both sentences hold


def test_calibrated_thresholds_are_oracle_exact_or_learned(cache):
    ad = p13.Phase13Adapter(64, "learned").eval()
    thr = p13.calibrate(ad, _small("val", 0), cache)
    assert -1.0 <= thr.replace <= 1.0 + 1e-6 and -1.0 <= thr.route <= 1.0 + 1e-6
    lex = p13.calibrate(ad, _small("val", 0), cache, lexical=2.0)
    assert lex.replace == thr.replace and lex.lexical == 2.0 and lex.route <= 3.0 + 1e-6  # cosine + 2 x coverage
    assert thr.write == 0.5  # the writer's own decision unless asked to calibrate it
    torch.manual_seed(0)
    with torch.no_grad():
        ad.writer.mlp[2].weight.normal_()  # zero-initialised: every p_write would be exactly 0.5
    cal = p13.calibrate(ad, _small("val", 0), cache, write_false=0.01)
    f, t = p13.featurize(_small("val", 0)["recall"], cache, "learned"), p13.Targets.of(_small("val", 0)["recall"])
    assert 0.0 <= cal.write <= 1.0 and cal.route == thr.route
    with torch.no_grad():
        p = ad.p_write(f)
    assert float((p[t.write == 0] >= cal.write).float().mean()) <= 0.05  # few unsignalled events pass
    assert p13.calibrate(p13.Phase13Adapter(64, "oracle"), {}, cache) == p13.ORACLE_THRESHOLDS


def test_cli_writes_rows_with_wilson_intervals(tmp_path, capsys):
    out = tmp_path / "p13.json"
    code = p13.main(["--families", "llama", "--protocol", "both", "--seeds", "1", "--samples", "10",
                     "--max-events", "128", "--steps", "10", "--train-samples", "24", "--train-events", "24",
                     "--lexical", "2", "--version-margin", "0.3", "--token-writer", "--fallback-versions",
                     "--no-cache", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    for row in p13.ROWS:
        assert f"| oracle | pooled | {row} |" in table and f"| learned | pooled | {row} |" in table
    rows = json.loads(out.read_text())
    summary = [r for r in rows if r.get("family") == "pooled"]
    assert len(summary) == 2 * len(p13.ROWS)
    assert all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] for r in summary)
    learned = [r for r in rows if r.get("protocol") == "learned" and "seed" in r]
    assert learned and all(r["lexical"] == 2.0 and r["version_margin"] == 0.3 and r["token_writer"]
                           and r["fallback_versions"] for r in learned)
    assert all(not r["token_writer"] and r["lexical"] == 0.0 for r in rows if r.get("protocol") == "oracle" and "seed" in r)


def test_cli_val_split_with_paraphrases(tmp_path):
    out = tmp_path / "p13_val.json"
    assert p13.main(["--families", "llama", "--protocol", "learned", "--seeds", "1", "--samples", "10",
                     "--max-events", "128", "--steps", "5", "--train-samples", "12", "--train-events", "24",
                     "--split", "val", "--val-paraphrases", "--no-cache", "--json", str(out)]) == 0
    rows = [r for r in json.loads(out.read_text()) if "seed" in r]
    assert rows and all(r["split"] == "val" and r["val_paraphrases"] for r in rows)
