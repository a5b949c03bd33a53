"""``memadapter bench perf``: issue 26's ratios, each against a baseline timed in the same run.

Rows ``{"backbone", "device", "dtype", "tokens", "batch", "metric", "value", "baseline", "ratio"}``
(plus ``method`` / ``task``, the bench-row keys ``write_rows_json`` asks for):

- ``ingest_s`` / ``ingest_10x_s`` / ``ingest_reference_s``: one request ingested (batched path; at
  10x the proposal rate; the plain-loop reference path) vs ``read_s``, the same chunks read by the
  bare backbone up to the read layer;
- ``select_s``: one ``model.select`` call at batch 1 (baseline: the bare backbone's forward of the
  question) and at batch 8 (baseline: the batch-1 call), on a memory already read once (its
  ``read_cache`` holds the retrieved chunks' grounding); ``select_cold_s``: the same with the cache
  emptied before each call (the first question on a memory); ``select_reference_s``: the plain
  per-row reference path (``reference_read``: no cache, one grounding forward per row), what
  select cost before the cache;
- ``decode_token_s[INJECTOR]``: seconds per generated token after the first, with memory vs bare
  ``generate``; ``generate_s[INJECTOR]``: the whole ``generate`` of ``--new-tokens`` tokens vs bare;
- ``state_bytes``: the request's memory (slots + chunk index) vs the KV cache of the same tokens;
- ``ingest_peak_bytes``: peak allocation while ingesting vs while only reading (CUDA:
  ``max_memory_allocated``; CPU: ``tracemalloc``, which sees Python objects, not torch's buffers).

The proposal rate: a real adapter (``--backbone smollm2``, the bundled adapter) proposes what it
proposes; a random-init adapter's tagger is held at ``--rate`` proposals per chunk (default 4, the
committed adapter's rate when the issue was filed). The 10x rate is forced with
``GroundingHead.tag_bias``: one bias on the four span tags' logits (not O), found by bisection on the first
chunks so that proposals per chunk come near the target. Both rates are in the rows.

Backbones: ``tiny`` (hidden 64, 2 layers), ``smollm2`` (the real offline SmolLM2-135M and the
bundled adapter), and random-init shapes ``smollm2-135m``, ``llama-3.2-1b``, ``qwen2.5-1.5b``
(``--small-shapes``: their widths with 2 layers and a 1000-word vocab, to check the script on a CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from memadapter.bench.stats import write_rows_json
from memadapter.chunk_index import index_bytes

from .backbones import read_hidden_states
from .modeling_memadapter import MemAdapterForCausalLM, reference_ingest
from .read_candidates import reference_read
from .tiny import tiny_backbone, tiny_word_tokenizer

# Random-init shapes of the real backbones (no weights): (config class, fields, read layer).
SHAPES = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True), 8),
    "llama-3.2-1b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                                   num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True), 4),
    "qwen2.5-1.5b": ("qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                                   num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True), 7),
}
# The bundled adapter's sizes, for the random-init adapters
ADAPTER = dict(key_dim=64, value_dim=256, num_slots=64, top_k=1, chunk_tokens=512, value_tokens=16,
               grounding_context_size=128)
QUESTIONS = ["Where does Nadia live now?", "Who pays Omar?", "What colour is the kettle?", "Where is the key?",
             "Who lives in Porto?", "What is Greta's phone number?", "Which bank does Ivo use?", "Where was the bag?"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="tiny", help="tiny | smollm2 | " + " | ".join(SHAPES))
    parser.add_argument("--tokens", default="2048", help="comma-separated stream lengths")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=3, help="timings are medians of this many runs")
    parser.add_argument("--rate", type=float, default=4.0, help="proposals per chunk of a random-init tagger")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per decode timing")
    parser.add_argument("--small-shapes", action="store_true", help="shape backbones with 2 layers, vocab 1000")
    parser.add_argument("--no-reference", action="store_true", help="skip the plain-loop ingest and select timings")
    parser.add_argument("--only", default=None, choices=["select"], help="time only these rows")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--json", default=None, metavar="PATH")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median(fn: Callable[[], Any], repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _stream_ids(tokenizer: Any, vocab: int, length: int, real: bool) -> torch.Tensor:
    """[1, length] ids: fact-like English sentences for a real tokenizer (so a trained tagger sees
    text of the kind it was trained on), random ids otherwise."""
    if not real:
        return torch.randint(4, vocab, (1, length), generator=torch.Generator().manual_seed(length))
    names, cities = ["Nadia", "Omar", "Greta", "Ivo", "Lena", "Tomas", "Asha", "Milo"], ["Porto", "Vienna", "Oslo", "Lima"]
    parts, i = [], 0
    while len(parts) < length // 6:
        parts.append(f"{names[i % 8]} {['lives in', 'works in', 'moved to'][i % 3]} {cities[(i // 8) % 4]}. "
                     f"The weather was mild and the market was busy that morning. ")
        i += 1
    ids = tokenizer("".join(parts), add_special_tokens=False)["input_ids"]
    while len(ids) < length:
        ids = ids + ids
    return torch.tensor(ids[:length])[None]


def load(args: argparse.Namespace) -> tuple[MemAdapterForCausalLM, bool]:
    """The model and whether its adapter is a trained one."""
    dtype = getattr(torch, args.dtype)
    if args.backbone == "smollm2":
        from .real_models import bundled_adapter_path, load_smollm2

        backbone, tok = load_smollm2()
        model = MemAdapterForCausalLM.from_pretrained(backbone.to(dtype), adapter=bundled_adapter_path(), tokenizer=tok)
        return model.to(args.device), True
    if args.backbone == "tiny":
        backbone, kw = tiny_backbone("llama"), dict(key_dim=16, value_dim=16, num_slots=16, chunk_tokens=128, read_layer=1)
    elif args.backbone in SHAPES:
        from transformers import AutoConfig, AutoModelForCausalLM

        kind, fields, layer = SHAPES[args.backbone]
        if args.small_shapes:
            fields, layer = {**fields, "num_hidden_layers": 2, "vocab_size": 1000}, 1
        torch.manual_seed(0)
        cfg = AutoConfig.for_model(kind, **fields, max_position_embeddings=131072)
        backbone = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
        kw = {**ADAPTER, "read_layer": layer}
    else:
        raise SystemExit(f"--backbone: expected tiny, smollm2 or one of {sorted(SHAPES)}, got {args.backbone!r}")
    torch.manual_seed(0)
    model = MemAdapterForCausalLM.from_pretrained(backbone.to(args.device, dtype), tokenizer=tiny_word_tokenizer(), **kw)
    return model.eval(), False


def _chunks(model: MemAdapterForCausalLM, ids: torch.Tensor) -> list[torch.Tensor]:
    C = model.config.chunk_tokens
    return [ids[:, c:c + C].to(model._device()) for c in range(0, ids.shape[1], C)]


def read_only(model: MemAdapterForCausalLM, ids: torch.Tensor) -> None:
    """The bare backbone over the same chunks, up to the read layer: what ingest cannot avoid."""
    layer = model.config.read_layer % (model.backbone.config.num_hidden_layers + 1)
    with torch.no_grad():
        for part in _chunks(model, ids):
            read_hidden_states(model.backbone, part, torch.ones_like(part), layer)


def proposals_per_chunk(model: MemAdapterForCausalLM, ids: torch.Tensor, bias: Optional[list] = None, n: int = 2) -> float:
    """Mean proposals on the first ``n`` chunks (with ``bias`` on the tag logits)."""
    counts = []
    with torch.no_grad():
        for part in _chunks(model, ids)[:n]:
            mask = torch.ones_like(part)
            hidden = model._hidden(part, mask)
            with model.grounding.tag_bias(bias or [0.0] * 5):
                props = model.grounding.propose_batched(hidden, mask, model._word_marks(part.tolist()))
            counts.append(sum(props.counts))
    return sum(counts) / len(counts)


def bias_for_rate(model: MemAdapterForCausalLM, ids: torch.Tensor, target: float) -> list:
    """A bias on every span tag's logit (not O) giving about ``target`` proposals per chunk (bisection)."""
    low, high = -30.0, 30.0
    for _ in range(14):
        mid = (low + high) / 2
        if proposals_per_chunk(model, ids, [0.0, mid, mid, mid, mid]) < target:
            low = mid
        else:
            high = mid
    return [0.0, high, high, high, high]


def _ingest(model: MemAdapterForCausalLM, ids: torch.Tensor, bias: Optional[list], reference: bool = False):
    memory = model.new_memory(batch_size=ids.shape[0])
    with model.grounding.tag_bias(bias or [0.0] * 5), (reference_ingest() if reference else torch.no_grad()):
        model.ingest(memory, ids, progress=False)
    return memory


def state_bytes(memory: Any) -> int:
    """What one request keeps: the slot tensors, the chunk index's used rows and texts."""
    slots = memory.slots
    total = sum(t.numel() * t.element_size() for t in (getattr(slots, n) for n in (
        "keys", "values", "confidence", "usage", "version", "time", "aux", "importance", "hits",
        "occupied", "protected", "retracted", "chunk_id", "span", "step")))
    for idx in memory.indexes:
        total += index_bytes(idx.dim, len(idx)) + sum(len(t or "") for t in idx._texts)
    return total


def kv_bytes(model: MemAdapterForCausalLM, tokens: int) -> int:
    cfg = model.backbone.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    width = next(model.backbone.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * tokens * width


def peak_bytes(fn: Callable[[], Any], device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def questions(model: MemAdapterForCausalLM, batch: int, real: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch, T] left-padded question ids and mask on the model's device."""
    if real:
        rows = [model.tokenizer(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS[:batch]]
    else:
        rows = [[4 + (7 * i + j) % 900 for j in range(6 + i % 3)] for i in range(batch)]
    width = max(len(r) for r in rows)
    ids = torch.full((batch, width), model._pad_id(), dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):], mask[b, width - len(r):] = torch.tensor(r), 1
    return ids.to(model._device()), mask.to(model._device())


def decode_times(model: MemAdapterForCausalLM, memory: Any, ids: torch.Tensor, mask: torch.Tensor, n: int,
                 repeats: int, device: str) -> tuple[float, float, float, float]:
    """(per-token with memory, per-token bare, whole generate with memory, whole bare): per token is
    (t(n) - t(1)) / (n - 1), leaving out the prompt, the select and the first step."""
    def gen(k: int, mem: Any) -> Callable[[], Any]:
        kw = dict(max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=model._pad_id())
        return lambda: model.generate(ids, mask, memory=mem, **kw)
    gen(n, memory)(), gen(n, None)()  # warm: the first generate call pays one-time setup
    t = {(k, m is None): _median(gen(k, m), repeats, device) for k in (1, n) for m in (memory, None)}
    per = lambda bare: (t[(n, bare)] - t[(1, bare)]) / max(n - 1, 1)  # noqa: E731
    return per(False), per(True), t[(n, False)], t[(n, True)]


class _Rows:
    """Collects rows with the run's fixed fields and advances the progress bar."""

    def __init__(self, args: argparse.Namespace, model: MemAdapterForCausalLM, bar: Any):
        self.rows, self.bar, self.args = [], bar, args
        self.fixed = {"backbone": args.backbone + ("-small" if args.small_shapes else ""), "device": args.device,
                      "dtype": str(next(model.backbone.parameters()).dtype).replace("torch.", "")}

    def add(self, metric: str, tokens: int, batch: int, value: float, baseline: Optional[float], **extra: Any) -> None:
        ratio = None if not baseline else value / baseline
        self.rows.append({**self.fixed, "tokens": tokens, "batch": batch, "metric": metric, "value": value,
                          "baseline": baseline, "ratio": ratio, "method": metric,
                          "task": f"{self.fixed['backbone']}@{tokens}", **extra})
        self.bar.update(1)
        if self.args.json:  # after every row: a run stopped by a time limit keeps what it measured
            write_rows_json(self.args.json, self.rows)
        shown = "" if ratio is None else f"  ratio {ratio:.3f}"
        tqdm.write(f"{metric:>24} {tokens:>7} b{batch}  {value:.4g} vs {baseline if baseline is None else f'{baseline:.4g}'}{shown}")


def measure_ingest(model: MemAdapterForCausalLM, ids: torch.Tensor, real: bool, out: _Rows) -> Any:
    """The ingest rows at one length; returns the memory of the batched ingest at the native rate."""
    a, L = out.args, ids.shape[1]
    native_bias = None if real else bias_for_rate(model, ids, a.rate)
    native = proposals_per_chunk(model, ids, native_bias)
    wide_bias = bias_for_rate(model, ids, 10 * max(native, 0.5))
    wide = proposals_per_chunk(model, ids, wide_bias)
    read = _median(lambda: read_only(model, ids), a.repeats, a.device)
    out.add("read_s", L, 1, read, None)
    memory = _ingest(model, ids, native_bias)  # warm, and the memory the later rows read
    out.add("ingest_s", L, 1, _median(lambda: _ingest(model, ids, native_bias), a.repeats, a.device), read,
            proposals_per_chunk=native)
    out.add("ingest_10x_s", L, 1, _median(lambda: _ingest(model, ids, wide_bias), a.repeats, a.device), read,
            proposals_per_chunk=wide)
    if not a.no_reference:
        out.add("ingest_reference_s", L, 1, _median(lambda: _ingest(model, ids, native_bias, True), 1, a.device), read,
                proposals_per_chunk=native)
    out.add("state_bytes", L, 1, float(state_bytes(memory)), float(kv_bytes(model, L)))
    out.add("ingest_peak_bytes", L, 1, float(peak_bytes(lambda: _ingest(model, ids, native_bias), a.device)),
            float(peak_bytes(lambda: read_only(model, ids), a.device)))
    return memory, native_bias


def measure_select(model: MemAdapterForCausalLM, ids: torch.Tensor, bias: Optional[list], real: bool, out: _Rows) -> None:
    """select per call at batch 1 (vs the bare forward of the question) and batch 8 (vs batch 1):
    warm (the cache holds the retrieved chunks), cold (cache emptied first) and the reference."""
    a = out.args
    kinds = ("select_s", "select_cold_s") + (() if a.no_reference else ("select_reference_s",))
    times = {}
    for batch in (1, 8):
        memory = _ingest(model, ids.expand(batch, -1), bias)
        q, m = questions(model, batch, real)

        def cold() -> Any:
            memory.read_cache.clear()
            return model.select(memory, q, m)

        def reference() -> Any:
            with reference_read():
                return model.select(memory, q, m)
        with torch.no_grad():
            model.select(memory, q, m)  # fills the cache for the warm timing
            times["select_s", batch] = _median(lambda: model.select(memory, q, m), a.repeats, a.device)
            times["select_cold_s", batch] = _median(cold, a.repeats, a.device)
            if "select_reference_s" in kinds:
                times["select_reference_s", batch] = _median(reference, a.repeats, a.device)
            if batch == 1:
                bare = _median(lambda: model.backbone(input_ids=q, attention_mask=m), a.repeats, a.device)
    for kind in kinds:
        out.add(kind, ids.shape[1], 1, times[kind, 1], bare)
        out.add(kind, ids.shape[1], 8, times[kind, 8], times[kind, 1])


def measure_decode(model: MemAdapterForCausalLM, memory: Any, real: bool, out: _Rows, injector: str) -> None:
    a = out.args
    q, m = questions(model, 1, real)
    per, per_bare, whole, whole_bare = decode_times(model, memory, q, m, a.new_tokens, a.repeats, a.device)
    out.add(f"decode_token_s[{injector}]", 0, 1, per, per_bare)
    out.add(f"generate_s[{injector}]", 0, 1, whole, whole_bare, new_tokens=a.new_tokens)


def cross_attn_twin(model: MemAdapterForCausalLM) -> MemAdapterForCausalLM:
    """A random cross-attention adapter over the same backbone (the bundled adapter is prefix only)."""
    cfg = model.config
    layers = model.backbone.config.num_hidden_layers
    torch.manual_seed(0)
    twin = MemAdapterForCausalLM.from_pretrained(
        model.backbone, tokenizer=model.tokenizer, key_dim=cfg.key_dim, value_dim=cfg.value_dim,
        num_slots=cfg.num_slots, chunk_tokens=cfg.chunk_tokens, read_layer=cfg.read_layer, injection="cross_attn",
        cross_attn_layers=sorted({min(cfg.read_layer + 1, layers - 1), layers - 1}), cross_attn_gate_init=0.5)
    return twin.eval()


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, real = load(args)
    lengths = [int(x) for x in args.tokens.split(",")]
    select_rows = 2 * (3 - args.no_reference)
    steps = select_rows if args.only == "select" else \
        len(lengths) * (6 - args.no_reference) + select_rows + 2 * (model.config.injection == "prefix") + 2
    with tqdm(total=steps, desc="perf", unit="row") as bar:
        out = _Rows(args, model, bar)
        if args.only == "select":
            ids = _stream_ids(model.tokenizer, model.backbone.config.vocab_size, lengths[0], real)
            measure_select(model, ids[:, :4096], None if real else bias_for_rate(model, ids, args.rate), real, out)
            print(json.dumps(out.rows[-1]))
            return 0
        for i, length in enumerate(lengths):
            ids = _stream_ids(model.tokenizer, model.backbone.config.vocab_size, length, real)
            memory, bias = measure_ingest(model, ids, real, out)
            if i == 0:
                first = (memory, bias, ids)
        memory, bias, ids = first
        measure_select(model, ids[:, :4096], bias, real, out)
        if model.config.injection == "prefix":
            measure_decode(model, memory, real, out, "prefix")
        twin = cross_attn_twin(model)
        measure_decode(twin, _ingest(twin, ids[:, :2048], None), real, out, "cross_attn")
    print(json.dumps(out.rows[-1]))
    return 0
