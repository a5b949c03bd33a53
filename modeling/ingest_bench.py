"""``memadapter bench ingest``: streaming-ingest cost against the bare backbone, per length.

For each length, one request is ingested in ``--chunk``-token chunks (grounding, writer, slot
lifecycle, chunk index) and, in the same process, the same chunks are only read by the backbone
up to the read layer (the unavoidable part). The ratio ingest / read shows what the memory adds;
seconds per token staying flat across lengths shows the cost is linear. Slots used stay at most
``num_slots`` (bounded memory); the chunk index grows by one entry per chunk.

Default backbone: a tiny random llama (no download); ``--model smollm2`` uses the real offline one.
It lives in modeling, not in ``memadapter.bench``, because it builds a model: the core never imports
modeling, and the CLI reaches this module by name only when ``bench ingest`` runs.
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from memadapter.bench.stats import write_rows_json

from .backbones import read_hidden_states
from .modeling_memadapter import MemAdapterForCausalLM
from .real_models import load_smollm2
from .tiny import tiny_backbone, tiny_word_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", default="2048,8192,32768", help="comma-separated token counts")
    parser.add_argument("--chunk", type=int, default=512, help="chunk_tokens")
    parser.add_argument("--model", default="llama", help="a tiny model_type, or 'smollm2'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, metavar="PATH")


def _load(name: str):
    if name == "smollm2":
        return load_smollm2()
    return tiny_backbone(name), tiny_word_tokenizer()


def _read_only(model, ids: torch.Tensor, chunk: int) -> float:
    """Seconds to read the same chunks through the backbone up to the adapter's read layer."""
    layer = model.config.read_layer % (model.backbone.config.num_hidden_layers + 1)
    start = time.perf_counter()
    with torch.no_grad():
        for c in range(0, ids.shape[1], chunk):
            part = ids[:, c:c + chunk]
            read_hidden_states(model.backbone, part, torch.ones_like(part), layer)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    backbone, tokenizer = _load(args.model)
    model = MemAdapterForCausalLM.from_pretrained(backbone, tokenizer=tokenizer, chunk_tokens=args.chunk)
    vocab = backbone.config.vocab_size
    rows = []
    print(f"{'tokens':>8} {'ingest s':>9} {'read s':>8} {'ratio':>6} {'us/token':>9} {'slots':>6} {'chunks':>7}")
    for length in tqdm([int(x) for x in args.lengths.split(",")], desc="lengths", leave=False):
        ids = torch.randint(4, vocab, (1, length), generator=torch.Generator().manual_seed(length))
        memory = model.new_memory()
        start = time.perf_counter()
        report = model.ingest(memory, ids, progress=False)
        ingest_s = time.perf_counter() - start
        read_s = _read_only(model, ids, args.chunk)
        slots = int(memory.slots.occupied.sum())
        row = {"method": f"ingest[{args.model}]", "task": f"tokens_{length}", "correct": 0, "total": 0,
               "accuracy": None, "max_active": slots, "tokens": length, "ingest_s": ingest_s,
               "read_s": read_s, "ratio": ingest_s / read_s, "us_per_token": 1e6 * ingest_s / length,
               "slots_used": slots, "num_slots": model.config.num_slots, "chunks": report.chunks[0]}
        rows.append(row)
        tqdm.write(f"{length:>8} {ingest_s:>9.2f} {read_s:>8.2f} {row['ratio']:>6.2f} {row['us_per_token']:>9.1f} "
              f"{slots:>4}/{model.config.num_slots} {report.chunks[0]:>7}")
    if args.json:
        write_rows_json(args.json, rows)
    return 0
