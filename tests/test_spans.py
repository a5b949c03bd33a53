"""Token spans: BIO decoding, key-value pairing, whole-word snapping, relation regions, pooling."""
import random

import pytest
import torch

from memadapter.spans import (
    TAG_KEY_B,
    TAG_KEY_I,
    TAG_O,
    TAG_VAL_B,
    TAG_VAL_I,
    decode_spans,
    pair_spans,
    pool_spans,
    pool_spans_reference,
    relation_spans,
    relation_spans_reference,
    sentence_chunks,
    sentence_ends,
    snap_to_words,
    word_starts,
)

torch.manual_seed(0)


def test_decode_and_pair_spans():
    tags = [TAG_O, TAG_KEY_B, TAG_KEY_I, TAG_O, TAG_VAL_B, TAG_VAL_I, TAG_KEY_B, TAG_KEY_B, TAG_VAL_I]
    spans = decode_spans(tags)
    assert spans == [("key", 1, 3), ("value", 4, 6), ("key", 6, 7), ("key", 7, 8), ("value", 8, 9)]
    assert pair_spans(spans) == [((1, 3), (4, 6)), ((6, 7), None), ((7, 8), (8, 9))]
    assert decode_spans([TAG_O] * 4) == []


def test_pool_spans_matches_reference():
    h = torch.randn(12, 8)
    spans = torch.tensor([[0, 3], [5, 6], [2, 12], [4, 4]])
    torch.testing.assert_close(pool_spans(h, spans), pool_spans_reference(h, spans))


def test_pair_spans_pairs_a_key_with_the_value_right_after_it_and_sentence_ends_are_marked():
    spans = [("key", 1, 3), ("value", 5, 6), ("key", 7, 8), ("key", 8, 9), ("value", 9, 10)]
    assert pair_spans(spans) == [((1, 3), (5, 6)), ((7, 8), None), ((8, 9), (9, 10))]
    pieces = {1: " no", 2: " longer", 3: " valid", 4: ".", 5: " Code", 6: " 80", 7: "?\n"}
    decode = lambda rows: ["".join(pieces[t] for t in r) for r in rows]  # noqa: E731
    assert sentence_ends([[1, 2, 3, 4, 5, 6, 7], []], decode) == [[False] * 3 + [True, False, False, True], []]


@pytest.mark.parametrize("seed", range(20))
def test_sentence_chunks_tile_the_row_and_end_at_sentence_ends(seed):
    rng = random.Random(seed)
    size = rng.randint(1, 12)
    ends = [rng.random() < 0.15 for _ in range(rng.randint(0, 60))]
    chunks = sentence_chunks(ends, size)
    assert [s for s, _ in chunks] == [0, *(e for _, e in chunks)][:len(chunks)]
    assert (chunks[-1][1] if chunks else 0) == len(ends)
    for s, e in chunks[:-1]:
        late_ends = [t for t in range(s + max(size // 2, 1) - 1, s + size) if ends[t]]
        assert e - s <= size and e == (late_ends[-1] + 1 if late_ends else s + size)


def test_sentence_chunks_rejects_a_bad_size():
    with pytest.raises(ValueError, match="size"):
        sentence_chunks([True], 0)


def test_snap_to_words_widens_spans_cut_inside_a_word():
    starts = [True, True, False, True, True, False, False, True]  # words: 0 | 1-2 | 3 | 4-6 | 7
    assert snap_to_words([((2, 3), (5, 6))], starts) == [((1, 3), (4, 7))]
    assert snap_to_words([((1, 3), (3, 4)), ((7, 8), None)], starts) == [((1, 3), (3, 4)), ((7, 8), None)]
    # a value tagged inside its key's last word starts after the key (never inside it)
    assert snap_to_words([((4, 5), (5, 6))], starts) == [((4, 7), (7, 8))]
    assert snap_to_words([((5, 6), (6, 7))], starts[:7]) == [((4, 7), None)]
    assert snap_to_words([], starts) == []


def test_word_starts_reads_pieces_after_their_neighbour():
    pieces = {1: " Daniel", 2: "a", 3: " Berger", 4: "'s", 5: " 2", 6: "10", 7: "-", 8: "4", 9: "\ufffd"}
    decode = lambda rows: ["".join(pieces[t] for t in r) for r in rows]  # noqa: E731
    assert word_starts([[1, 2, 3, 4], [5, 6, 7, 8], [2, 9, 2], []], decode) == [
        [True, False, True, True], [True, False, True, True], [True, True, True], []]
    # decode with a space marker dropped at the start of a text (SentencePiece) reads the same
    sp = lambda rows: [decode(rows[i : i + 1])[0].lstrip() for i in range(len(rows))]  # noqa: E731
    assert word_starts([[1, 2, 3]], sp) == [[True, False, True]]


def test_relation_spans_match_reference_and_cases():
    keys = torch.tensor([[2, 4], [5, 7], [8, 10], [12, 14], [0, 0]])
    values = torch.tensor([[6, 8], [5, 7], [10, 11], [15, 16], [0, 0]])  # value after gap / none / adjacent
    got = relation_spans(keys, values, torch.tensor(16))
    assert got.tolist() == relation_spans_reference(keys.tolist(), values.tolist(), 16)
    # relation "between"; a retraction reads the window after its key; adjacent value -> last key token
    assert got.tolist()[:3] == [[4, 6], [7, 13], [9, 10]]
    assert got.tolist()[3] == [14, 15] and got.tolist()[4] == [0, 0]
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        k0 = torch.randint(0, 20, (6,), generator=g)
        k1 = k0 + torch.randint(0, 4, (6,), generator=g)
        v0 = torch.where(torch.rand(6, generator=g) < 0.5, k0, k1 + torch.randint(0, 5, (6,), generator=g))
        ks, vs = torch.stack([k0, k1], -1), torch.stack([v0, v0 + 2], -1)
        assert relation_spans(ks, vs, 22).tolist() == relation_spans_reference(ks.tolist(), vs.tolist(), 22)
