"""Concurrent requests on one shared model give exactly what they give one at a time.

Three adapters, one per injector (prefix, cross_attn, text), share one tiny backbone, so every
thread runs through the same decoder layers whichever adapter its request uses. Each request has
its own memory; the same request list runs first sequentially, then on 8 threads, and every output
(generated tokens, logits, selections, memory tables, chunk index contents) must be equal
bit for bit. A leak of one request's hidden states, memory or adapter switch into another would
change that request's output. The small tests below pin the three races the issue saw with a
barrier, so they fail deterministically without the fix.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import pytest
import torch
from conftest import _WORDS, build, tiny_backbone

from memadapter.modeling.backbones import backbone_parts, read_hidden_states
from memadapter.modeling.injectors.cross_attn import GatedCrossAttention, cross_attention

N_THREADS, PER_THREAD = 8, 50  # the 8 threads x 50 requests
INJECTIONS = ("prefix", "cross_attn", "text")
KINDS = ("generate", "forward", "select", "edit", "plain")
FACT = "{} lives in {} the {} is {}"  # 7 words: one chunk (chunk_tokens 8)
WAIT_S = 30  # a barrier that is never met fails the test instead of hanging it


@pytest.fixture(scope="module")
def models(tokenizer) -> dict:
    """One shared backbone, an adapter per injector (each exercising a different read path)."""
    backbone = tiny_backbone("llama")
    return {
        "prefix": build(backbone, tokenizer, "prefix", value_tokens=2),
        "cross_attn": build(backbone, tokenizer, "cross_attn", value_tokens=2),
        "text": build(backbone, tokenizer, "text", name_chunks=2, withdrawn_text="unknown"),
    }


@dataclass(frozen=True)
class Request:
    injection: str
    kind: str
    texts: tuple[str, ...]  # one stream per memory row
    input_ids: torch.Tensor  # [B, T], left padded
    attention_mask: torch.Tensor  # [B, T]
    edit: Optional[tuple[str, str, str]] = None  # (key, value) written, then a word forgotten


def _requests(tokenizer, n: int, seed: int = 0) -> list[Request]:
    """``n`` random small requests; prompts are tokenized here, in one thread (padding a batch
    changes a fast tokenizer's settings; see the threads note in modeling_memadapter)."""
    rng = random.Random(seed)
    word = lambda: rng.choice(_WORDS)  # noqa: E731
    out = []
    for _ in range(n):
        rows = rng.choice((1, 1, 1, 2))
        texts = tuple(FACT.format(word(), word(), word(), word()) for _ in range(rows))
        enc = tokenizer([" ".join(word() for _ in range(rng.randint(2, 5))) for _ in range(rows)],
                        return_tensors="pt", padding=True)
        kind = rng.choice(KINDS)
        edit = (f"{word()} {word()}", word(), word()) if kind == "edit" else None
        out.append(Request(rng.choice(INJECTIONS), kind, texts, enc["input_ids"], enc["attention_mask"], edit))
    return out


@torch.no_grad()
def _run(models: dict, req: Request) -> dict[str, Any]:
    """One request on its own memory -> everything it produced or stored."""
    model = models[req.injection]
    memory = model.new_memory(batch_size=len(req.texts))
    report = model.ingest(memory, list(req.texts))
    args = dict(input_ids=req.input_ids, attention_mask=req.attention_mask, memory=memory)
    if req.edit is not None:
        key, value, forgotten = req.edit
        memory.write(key, value, row=0)
        memory.forget(forgotten)
    if req.kind in ("generate", "edit"):
        out = model.generate(**args, max_new_tokens=3, do_sample=False)
    elif req.kind == "forward":
        out = model(**args).logits
    elif req.kind == "select":
        sel = model.select(memory, req.input_ids, req.attention_mask)
        out = (sel.values, sel.valid, sel.texts, sel.branch, sel.value_ids)
    else:  # plain: the adapter off in this thread only
        with model.disable_adapter():
            out = model(**args).logits
    chunks = [(ix.vectors.clone(), ix.spans.clone(), [ix.text(i) for i in range(len(ix))]) for ix in memory.indexes]
    return {"out": out, "report": report, "tables": [memory.table(b) for b in range(len(req.texts))], "chunks": chunks}


def _same(a: Any, b: Any) -> bool:
    """Exact equality through tensors, dicts, lists, tuples and dataclasses."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and _same(vars(a), vars(b))
    return a == b


def test_eight_threads_match_a_sequential_run_with_every_injector(models, tokenizer):
    requests = _requests(tokenizer, N_THREADS * PER_THREAD)
    assert {r.injection for r in requests} == set(INJECTIONS) and {r.kind for r in requests} == set(KINDS)
    sequential = [_run(models, r) for r in requests]
    backbone = models["prefix"].backbone
    layers = list(backbone_parts(backbone).layers)
    with ThreadPoolExecutor(N_THREADS) as pool:
        # thread t runs requests t, t + 8, t + 16 ...: 50 each, interleaved with the others
        batches = pool.map(lambda t: [(i, _run(models, requests[i])) for i in range(t, len(requests), N_THREADS)],
                           range(N_THREADS))
        concurrent = dict(pair for batch in batches for pair in batch)
    assert sorted(concurrent) == list(range(len(requests)))
    wrong = [i for i, seq in enumerate(sequential) if not _same(seq, concurrent[i])]
    assert not wrong, f"{len(wrong)} requests differ from the sequential run, first kinds: " \
                      f"{[(requests[i].injection, requests[i].kind) for i in wrong[:5]]}"
    # Each memory holds its own stream and nothing else; the shared layers are unwrapped again.
    for req, res in zip(requests, sequential):
        for text, (_, _, chunk_texts) in zip(req.texts, res["chunks"]):
            assert " ".join(chunk_texts) == text
    assert list(backbone_parts(backbone).layers) == layers


def _barrier_hook(module: torch.nn.Module, barrier: threading.Barrier):
    """A forward hook on ``module``, run before any hook registered later, that holds every
    forward until all parties reached it: each thread's list of hooks to run is taken by then, and
    holds the other thread's capture hook, which cannot be removed before its own forward passed."""

    def hold(*_: object) -> None:
        barrier.wait(WAIT_S)  # returns an int, which a hook must not pass on as the output

    return module.register_forward_hook(hold)


def _in_threads(fns: list) -> list:
    with ThreadPoolExecutor(len(fns)) as pool:
        return [f.result() for f in [pool.submit(fn) for fn in fns]]


@torch.no_grad()
def test_two_threads_reading_hidden_states_through_one_layer_get_their_own():
    """Each thread's forward through layer 0 runs the other thread's capture hook too (the barrier
    sees to that): before the fix that hook stored this thread's tensor and unwound its forward
    ('the capture hook never ran')."""
    model = tiny_backbone("llama")
    inputs = [torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10, 11, 12]])]
    alone = [read_hidden_states(model, ids, None, 1) for ids in inputs]
    handle = _barrier_hook(backbone_parts(model).layers[0], threading.Barrier(2))
    try:
        together = _in_threads([lambda ids=ids: read_hidden_states(model, ids, None, 1) for ids in inputs])
    finally:
        handle.remove()
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
    assert not alone[0].allclose(alone[1])  # different inputs: a swap would show
    assert not backbone_parts(model).layers[0]._forward_hooks  # both capture hooks removed


@torch.no_grad()
def test_cross_attention_blocks_in_two_threads_each_read_their_own_memory():
    """Two blocks open at once on one layer (was: 'nested cross_attention blocks'), and a third
    thread with no block runs the plain model meanwhile."""
    model = tiny_backbone("llama")
    torch.manual_seed(0)
    mods = torch.nn.ModuleList([GatedCrossAttention(64, 8, num_heads=4, gate_init=1.0)])
    memories = [torch.randn(1, 3, 8), torch.randn(1, 3, 8)]
    ids, full = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 3, dtype=torch.bool)
    plain, keys = model(input_ids=ids).logits, list(model.state_dict())
    alone = []
    for mem in memories:
        with cross_attention(model, [1], mods, mem, full):
            alone.append(model(input_ids=ids).logits)
            assert list(model.state_dict()) == keys  # a save in another thread sees no wrapper
    layers = backbone_parts(model).layers
    original = layers[1]
    barrier = threading.Barrier(3)

    def in_block(mem):
        with cross_attention(model, [1], mods, mem, full):
            barrier.wait(WAIT_S)  # all three threads are here: both blocks are open
            return model(input_ids=ids).logits

    def no_block():
        barrier.wait(WAIT_S)
        return model(input_ids=ids).logits

    together = _in_threads([lambda: in_block(memories[0]), lambda: in_block(memories[1]), no_block])
    assert torch.equal(together[0], alone[0]) and torch.equal(together[1], alone[1])
    assert torch.equal(together[2], plain) and not torch.equal(alone[0], plain)
    assert layers[1] is original  # the last block out unwrapped the layer


@torch.no_grad()
def test_disable_adapter_in_one_thread_leaves_the_others_memory_on(models, tokenizer):
    model = models["prefix"]
    memory = model.new_memory()
    model.ingest(memory, FACT.format("alice", "paris", "color", "red"))
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    with_memory = model(**enc, memory=memory).logits
    plain = model.backbone(**enc).logits
    assert not torch.equal(with_memory, plain)
    barrier = threading.Barrier(2)

    def disabled():
        with model.disable_adapter():
            barrier.wait(WAIT_S)  # the other thread's forward runs while this block is open
            barrier.wait(WAIT_S)
            return model(**enc, memory=memory).logits

    def enabled():
        barrier.wait(WAIT_S)
        out = model(**enc, memory=memory).logits
        barrier.wait(WAIT_S)
        return out

    off, on = _in_threads([disabled, enabled])
    assert torch.equal(off, plain) and torch.equal(on, with_memory)

