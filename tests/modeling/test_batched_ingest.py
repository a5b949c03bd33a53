"""Ingest's batched path (GroundingHead.propose_batched, one SlotMemory.write of batched runs per
chunk) against the plain-loop reference (``reference_ingest``): same candidates, same memory."""

from __future__ import annotations

import pytest
import torch

from memadapter.heads import GroundingHead
from memadapter.spans import decode_pairs_batched, pool_spans_batched
from memadapter.slots import _STATE_TENSORS
from memadapter.modeling.modeling_memadapter import reference_ingest
from memadapter.spans import decode_spans, pair_spans, pool_spans, snap_to_words

from conftest import STREAM, build, tiny_backbone, tiny_tokenizer


def _random_marks(lengths, p, g):
    rows = [[bool(x) for x in (torch.rand(int(n), generator=g) < p)] for n in lengths]
    return [[True] + r[1:] if r else r for r in rows]


def test_pool_spans_batched_matches_pool_spans() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 9, 5, generator=g)
    spans = torch.randint(0, 10, (2, 6, 2), generator=g)  # empty and reversed spans too
    want = torch.stack([pool_spans(h[b], spans[b]) for b in range(2)])
    torch.testing.assert_close(pool_spans_batched(h, spans), want)


def test_decode_pairs_batched_matches_the_loops() -> None:
    g = torch.Generator().manual_seed(1)
    seen = 0
    for _ in range(60):
        T = int(torch.randint(1, 25, (1,), generator=g))
        tags = torch.randint(0, 5, (3, T), generator=g)
        lengths = torch.randint(0, T + 1, (3,), generator=g)
        ws = _random_marks(lengths, 0.6, g)
        pad = lambda rows, v: torch.tensor([r + [v] * (T - len(r)) for r in rows], dtype=torch.bool)  # noqa: E731
        ks, vs, hv, mask = decode_pairs_batched(tags, lengths, pad(ws, True))
        for b in range(3):
            n = int(lengths[b])
            want = snap_to_words(pair_spans(decode_spans(tags[b, :n].tolist())), ws[b])
            got = [(tuple(ks[b, i].tolist()), tuple(vs[b, i].tolist()) if hv[b, i] else None)
                   for i in range(int(mask[b].sum()))]
            assert got == want
            seen += len(want)
    assert seen > 100


@pytest.mark.parametrize("context", [0, 4])
def test_propose_batched_matches_propose(context: int) -> None:
    g = torch.Generator().manual_seed(2)
    head = GroundingHead(16, 8, 8, context_size=context)
    with torch.no_grad():
        head.tagger.bias.copy_(torch.tensor([0.0, 2.0, 1.0, 2.0, 1.0]))  # many spans
    hidden = torch.randn(3, 20, 16, generator=g)
    lengths = torch.tensor([20, 13, 0])
    mask = torch.arange(20)[None] < lengths[:, None]
    ws = _random_marks(lengths, 0.6, g)
    ref, got = head.propose(hidden, mask, ws), head.propose_batched(hidden, mask, ws)
    assert got.counts == [len(r) for r in ref] and sum(got.counts) > 5
    for b, row in enumerate(ref):
        for i, c in enumerate(row):
            assert tuple(got.key_spans[b, i].tolist()) == c.key_span
            assert (tuple(got.value_spans[b, i].tolist()) if got.has_value[b, i] else None) == c.value_span
            assert int(got.event_type[b, i]) == c.event_type
            assert float(got.confidence[b, i]) == pytest.approx(c.confidence, abs=1e-6)
            for name, want in (("keys", c.key), ("values", c.value), ("event_probs", c.event_probs)):
                torch.testing.assert_close(getattr(got, name)[b, i], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tag_bias", [None, [0.0, 3.0, 0.0, 3.0, 0.0]])
def test_ingest_memory_equals_the_reference_path(tag_bias) -> None:
    tok = tiny_tokenizer()
    model = build(tiny_backbone("llama"), tok, num_slots=6, snap_spans=True,
                  retract_tombstones=True)
    text = [STREAM + " . " + STREAM, STREAM]
    mems = []
    for reference in (False, True):
        mem = model.new_memory(batch_size=2)
        ctx = model.grounding.tag_bias(tag_bias) if tag_bias else torch.no_grad()
        with ctx, (reference_ingest() if reference else torch.no_grad()):
            report = model.ingest(mem, text)
        mems.append((mem, report))
    (fast, r1), (ref, r2) = mems
    assert r1 == r2 and sum(r1.candidates) > 0 and sum(r1.writes) > 0
    for name in _STATE_TENSORS:
        torch.testing.assert_close(getattr(fast.slots, name), getattr(ref.slots, name), atol=1e-5, rtol=1e-5)
    assert fast.slots.key_text == ref.slots.key_text and fast.slots.value_text == ref.slots.value_text
    assert fast.tokens_seen == ref.tokens_seen


def test_tag_bias_raises_the_proposal_rate_and_is_restored() -> None:
    head = GroundingHead(16, 8, 8)
    hidden = torch.randn(2, 30, 16, generator=torch.Generator().manual_seed(3))
    base = sum(head.propose_batched(hidden).counts)
    with head.tag_bias([0.0, 6.0, 0.0, 6.0, 0.0]):
        more = sum(head.propose_batched(hidden).counts)
    assert more > base and sum(head.propose_batched(hidden).counts) == base
