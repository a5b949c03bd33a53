"""The read path's candidates stage (modeling/read_candidates.py): each chunk is grounded once per
memory (its ``read_cache``), the uncached chunks of a whole batch in one padded backbone forward,
and select reads exactly what the plain per-row reference (``reference_read``) reads, however the
memory changed in between."""

from contextlib import ExitStack

import pytest
import torch
from conftest import QUESTIONS, STREAM, build, ingest, tiny_backbone

from memadapter.modeling.read_candidates import reference_read

OTHER = "carol lives in london . dave moved to paris . the color of the key is red"
MORE = ["update bob now lives in berlin . carol moved to rome", "alice is now in london . dave lives in rome"]
ELSE = ["the old value of the key is blue", "bob lives in london . the color is green"]


def _enc(tokenizer, questions):
    return tokenizer(list(questions), return_tensors="pt", padding=True)


def _select(model, mem, enc):
    return model.select(mem, enc["input_ids"], enc["attention_mask"])


def _assert_same(a, b):
    """The same Selections: valid, texts, branches (the source) and value ids exactly; values to float
    rounding (a chunk read in a batch of 8 may be summed in another order than alone: 1.2e-7 on some CPUs)."""
    assert torch.allclose(a.values, b.values, rtol=0.0, atol=1e-6) and torch.equal(a.valid, b.valid)
    assert a.texts == b.texts and a.branch == b.branch
    assert torch.equal(a.value_ids, b.value_ids)


def _assert_same_pools(model, mem, enc):
    """read_pools with the cache and without: the same entries, in the same stream order."""
    args = (mem, enc["input_ids"], enc["attention_mask"])
    with reference_read():
        want = model.read_pools(*args)
    for got, ref in zip(model.read_pools(*args), want, strict=True):
        assert got.chunks == ref.chunks and got.slots == ref.slots
        for name in ("key_texts", "sentences", "value_texts", "event_types"):
            assert getattr(got.pool, name) == getattr(ref.pool, name)
        for name in ("keys", "match", "order", "is_slot", "withdrawn", "confidence"):
            assert torch.equal(getattr(got.pool, name), getattr(ref.pool, name))


def _reference(model, mem, enc, snap):
    """The uncached reference's Selection on the state ``snap`` (select credits slot usage, so
    every compared call starts from the same snapshot)."""
    mem.restore(snap)
    with reference_read():
        return _select(model, mem, enc)


def _count_forwards(model, monkeypatch):
    """Record the batch shape of every backbone forward the read path runs."""
    shapes, hidden = [], model._hidden

    def counted(ids, mask):
        shapes.append(tuple(ids.shape))
        return hidden(ids, mask)
    monkeypatch.setattr(model, "_hidden", counted)
    return shapes


@pytest.fixture
def model(tokenizer):
    return build(tiny_backbone("llama"), tokenizer, "prefix", value_tokens=4, router_confidence_threshold=0.0)


def test_select_is_the_same_cold_warm_after_restore_and_ingest_and_equals_the_reference(model, tokenizer,
                                                                                             monkeypatch):
    mem, enc = ingest(model, [STREAM, OTHER]), _enc(tokenizer, QUESTIONS)
    snap = mem.snapshot()
    ref = _reference(model, mem, enc, snap)
    assert not mem.read_cache  # the reference neither reads nor fills the cache
    mem.restore(snap)
    cold = _select(model, mem, enc)
    assert mem.read_cache and any(e.events for e in mem.read_cache.values())
    _assert_same(cold, ref)
    shapes = _count_forwards(model, monkeypatch)
    for _ in range(2):  # warm, after a restore() of the same state
        mem.restore(snap)
        _assert_same(_select(model, mem, enc), ref)
    assert len(shapes) == 2  # the questions only: every chunk came from the cache
    mem.restore(snap)
    model.ingest(mem, MORE)  # new chunks: only they are grounded
    grown = mem.snapshot()
    before = set(mem.read_cache)
    ref_grown = _reference(model, mem, enc, grown)
    mem.restore(grown)
    _assert_same(_select(model, mem, enc), ref_grown)
    assert all(max(r.order, default=0) > 8 for r in (qp.pool for qp in model.read_pools(
        mem, enc["input_ids"], enc["attention_mask"])))  # entries past the first chunk (8 tokens)
    _assert_same_pools(model, mem, enc)
    assert before <= set(mem.read_cache)  # the old chunks' entries stayed valid
    mem.restore(grown)
    _assert_same(_select(model, mem, enc), ref_grown)
    assert all(max(r.order, default=0) > 8 for r in (qp.pool for qp in model.read_pools(
        mem, enc["input_ids"], enc["attention_mask"])))  # entries past the first chunk (8 tokens)
    _assert_same_pools(model, mem, enc)


def test_restore_and_reused_chunk_ids_read_the_chunk_s_current_text(model, tokenizer):
    """restore() to an older state drops the entries of chunks it no longer holds; a later ingest
    gives the same chunk ids other text, which is grounded afresh, never read from the old entry."""
    mem, enc = ingest(model, [STREAM, OTHER]), _enc(tokenizer, QUESTIONS)
    snap = mem.snapshot()
    model.ingest(mem, MORE)
    _select(model, mem, enc)
    old = {(b, i): text for b, i, text in mem.read_cache}
    mem.restore(snap)
    assert mem.read_cache and all(i < len(mem.indexes[b]) for b, i, _ in mem.read_cache)
    model.ingest(mem, ELSE)  # the ids MORE's chunks had, other text
    assert any(i < len(mem.indexes[b]) and mem.indexes[b].text(i) != text for (b, i), text in old.items())
    state = mem.snapshot()
    ref = _reference(model, mem, enc, state)
    mem.restore(state)
    _assert_same(_select(model, mem, enc), ref)
    assert all(mem.indexes[b].text(i) == text for b, i, text in mem.read_cache)


def test_edits_leave_the_cache_valid(model, tokenizer):
    """write / forget change slots, not chunks: the cached chunks are still what select reads."""
    mem, enc = ingest(model, [STREAM, OTHER]), _enc(tokenizer, QUESTIONS)
    _select(model, mem, enc)
    mem.forget("alice", row=0)
    mem.write("bob city", "london", row=1)
    state = mem.snapshot()
    ref = _reference(model, mem, enc, state)
    mem.restore(state)
    _assert_same(_select(model, mem, enc), ref)


def test_another_model_state_empties_the_cache(model, tokenizer):
    """Changed grounding weights, another ingest setting, a tag bias or another model object: the cache
    filled before is dropped, and select reads what the reference reads for the model as it is."""
    mem, enc = ingest(model, [STREAM, OTHER]), _enc(tokenizer, QUESTIONS)
    mem.adapter_id = None  # a memory built by hand: nothing refuses it to a changed adapter
    state = mem.snapshot()
    # the same adapter (so the same fingerprint: it leaves the backbone out) over another backbone
    twin = build(tiny_backbone("llama", seed=1), tokenizer, "prefix", value_tokens=4, router_confidence_threshold=0.0)
    twin.load_adapter_state_dict(model.adapter_state_dict())
    assert twin.adapter_fingerprint() == model.adapter_fingerprint()

    def change_weights(m):
        with torch.no_grad():
            m.grounding.tagger.bias[1:] += 3.0  # proposes other spans

    def change_setting(m):
        m.config.ingest.snap_spans = not m.config.ingest.snap_spans

    biased = ExitStack()

    def tag_bias(m):
        biased.enter_context(m.grounding.tag_bias([0.0, 2.0, 2.0, 2.0, 2.0]))  # until the test ends

    for change in (None, change_weights, change_setting, tag_bias):  # the twin first: it shares the pristine adapter
        mem.restore(state)
        _select(model, mem, enc)
        owner = mem.read_cache_owner
        reader = model if change else twin
        if change:
            change(model)
        ref = _reference(reader, mem, enc, state)
        mem.restore(state)
        _assert_same(_select(reader, mem, enc), ref)
        assert mem.read_cache_owner != owner
    biased.close()


def test_a_batch_of_8_grounds_its_chunks_in_one_backbone_forward(model, tokenizer, monkeypatch):
    streams = [STREAM, OTHER, *MORE, *ELSE, STREAM + " . carol lives in rome", OTHER + " . bob moved to london"]
    questions = QUESTIONS * 4
    mem, enc = ingest(model, streams), _enc(tokenizer, questions)
    state = mem.snapshot()
    shapes = _count_forwards(model, monkeypatch)
    ref = _reference(model, mem, enc, state)
    assert len(shapes) == 1 + 8  # the reference: the questions, then one forward per row
    shapes.clear()
    mem.restore(state)
    _assert_same(_select(model, mem, enc), ref)
    assert len(shapes) == 2 and shapes[0][0] == 8  # the questions, then every row's chunks at once
    assert shapes[1][0] == sum(e.events is not None for e in mem.read_cache.values())
    shapes.clear()
    mem.restore(state)
    _assert_same(_select(model, mem, enc), ref)
    assert len(shapes) == 1  # warm: the questions only
