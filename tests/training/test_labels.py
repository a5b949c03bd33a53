"""Token-level labels: char->token span mapping (fast path vs plain loop), tags, events, truncation."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from memadapter.errors import ConfigError, EmptyInputError, ShapeError
from memadapter.heads import EVENT_TYPES, IGNORE_INDEX, TAG_KEY_B, TAG_O, TAG_VAL_B, decode_spans, pair_spans
from memadapter.training.labels import (
    char_spans_to_token_spans, char_spans_to_token_spans_reference, token_labels, tokenize_dataset, write_label,
)
from memadapter.training.lifecycle_data import build_dataset, generate_stream

SMOL_TOKENIZER = Path.home() / ".cache" / "memadapter" / "smollm2-135m-instruct" / "tokenizer.json"


def _streams(n: int, seed: int = 0, **kw) -> list[dict]:
    rng = random.Random(seed)
    return [generate_stream(rng, filler_tokens=60, filler_source="embedded", **kw) for _ in range(n)]


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A small byte-level BPE (GPT-2 / SmolLM2 style offsets) trained in memory on generated streams."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([s["text"] for s in _streams(30, seed=99)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


def _tokenizers(bpe):
    yield bpe
    if SMOL_TOKENIZER.is_file():
        from transformers import PreTrainedTokenizerFast

        yield PreTrainedTokenizerFast(tokenizer_file=str(SMOL_TOKENIZER))


def test_fast_span_mapping_matches_the_plain_loop():
    rng = random.Random(0)
    for _ in range(200):
        offsets, pos = [], 0
        for _ in range(rng.randint(0, 30)):
            if rng.random() < 0.1:
                offsets.append((0, 0))  # a special token
                continue
            pos += rng.randint(0, 2)  # gaps are spaces the tokenizer trimmed
            width = rng.randint(1, 5)
            offsets.append((pos, pos + width))
            pos += width
        spans = [(a, a + rng.randint(-1, 8)) for a in (rng.randint(-2, pos + 2) for _ in range(10))]
        assert char_spans_to_token_spans(offsets, spans) == char_spans_to_token_spans_reference(offsets, spans)


def test_span_mapping_examples_and_bad_offsets():
    offsets = [(0, 5), (6, 11), (11, 12)]  # "Hello world."
    assert char_spans_to_token_spans(offsets, [(6, 11), (0, 12), (5, 6), (3, 8), (12, 20)]) == [
        (1, 2), (0, 3), (-1, -1), (0, 2), (-1, -1)]
    with pytest.raises(ShapeError, match="offsets"):
        char_spans_to_token_spans([(3, 1)], [(0, 1)])


def test_tags_cover_exactly_the_key_and_value_tokens(bpe_tokenizer):
    for tok in _tokenizers(bpe_tokenizer):
        for s in _streams(8, seed=1):
            out = token_labels(s, tok)
            enc = tok(s["text"], return_offsets_mapping=True, add_special_tokens=False)
            assert out["input_ids"] == enc["input_ids"]
            offs = enc["offset_mapping"]
            assert len(out["event_index"]) == len(s["events"])
            for i, e in enumerate(out["event_index"]):
                ev = s["events"][e]
                ks, ke = out["key_spans"][i]
                # the tokens of the key span spell the key (up to the leading space BPE keeps)
                assert s["text"][offs[ks][0]:offs[ke - 1][1]].strip() == ev["key_text"]
                assert out["tag_ids"][ks] == TAG_KEY_B
                if ev["value"] is not None:
                    vs, ve = out["value_spans"][i]
                    assert s["text"][offs[vs][0]:offs[ve - 1][1]].strip().rstrip(".") == ev["value"]
                    assert out["tag_ids"][vs] == TAG_VAL_B
                else:
                    assert out["value_spans"][i] == [-1, -1]
                assert EVENT_TYPES[out["event_types"][i]] == ev["event_type"]
                assert out["versions"][i] == ev["version"] and out["write_labels"][i] == write_label(ev)
            # BIO decoding with the head's own decoder recovers the same (key, value) pairs
            pairs = pair_spans(decode_spans(out["tag_ids"]))
            want = [(tuple(k), tuple(v) if v[0] >= 0 else None) for k, v in zip(out["key_spans"], out["value_spans"])]
            assert pairs == want


def test_event_and_confidence_targets(bpe_tokenizer):
    s = _streams(1, seed=4, num_distractors=6)[0]
    out = token_labels(s, bpe_tokenizer)
    marked = set()
    for i, e in enumerate(out["event_index"]):
        ev = s["events"][e]
        ks = out["key_spans"][i][0]
        end = max(out["key_spans"][i][1], out["value_spans"][i][1])
        assert set(out["event_targets"][ks:end]) == {out["event_types"][i]}
        assert set(out["confidence_targets"][ks:end]) == {0.0 if ev["event_type"] == "irrelevant" else 1.0}
        marked |= set(range(ks, end))
    for t in set(range(len(out["input_ids"]))) - marked:
        assert out["event_targets"][t] == IGNORE_INDEX and math.isnan(out["confidence_targets"][t])
        assert out["tag_ids"][t] == TAG_O


def test_write_labels_follow_signal_and_type():
    assert write_label({"signal": True, "event_type": "update"}) == 1
    assert write_label({"signal": True, "event_type": "retract"}) == 1
    assert write_label({"signal": False, "event_type": "new"}) == 0
    assert write_label({"signal": False, "event_type": "irrelevant"}) == 0


def test_truncation_drops_cut_events(bpe_tokenizer):
    s = _streams(1, seed=2)[0]
    full = token_labels(s, bpe_tokenizer)
    cut = len(full["input_ids"]) // 2
    out = token_labels(s, bpe_tokenizer, max_length=cut)
    assert len(out["input_ids"]) == cut and len(out["tag_ids"]) == cut
    kept = out["event_index"]
    assert kept == full["event_index"][:len(kept)] and len(kept) < len(full["event_index"])
    assert all(e[1] <= cut for e in out["event_spans"])
    first_cut = min(full["event_spans"][len(kept)][0], cut)  # the cut event may start past the limit
    assert out["tag_ids"][:first_cut] == full["tag_ids"][:first_cut]
    assert set(out["tag_ids"][first_cut:]) <= {IGNORE_INDEX}
    assert set(token_labels(s, bpe_tokenizer, max_length=full["event_spans"][2][1] - 1)["tag_ids"][
        full["event_spans"][2][0]:]) == {IGNORE_INDEX}  # a sentence cut in the middle is ignored


def test_bad_input_raises_typed_errors(bpe_tokenizer):
    s = _streams(1)[0]
    with pytest.raises(ConfigError, match="tokenizer"):
        token_labels(s, object())
    with pytest.raises(ConfigError, match="example"):
        token_labels({"text": "x"}, bpe_tokenizer)
    with pytest.raises(EmptyInputError, match="example"):
        token_labels({"text": "", "events": []}, bpe_tokenizer)
    with pytest.raises(ConfigError, match="max_length"):
        token_labels(s, bpe_tokenizer, max_length=0)


def test_tokenize_dataset(bpe_tokenizer):
    ds = build_dataset("train", 3, seed=0, filler_tokens=20, filler_source="embedded")
    out = tokenize_dataset(ds, bpe_tokenizer)
    assert {"input_ids", "tag_ids", "event_spans", "write_labels", "questions", "id"} <= set(out.column_names)
    assert "text" not in out.column_names
    assert out[1]["input_ids"] == token_labels(ds[1], bpe_tokenizer)["input_ids"]
