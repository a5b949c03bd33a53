"""The controlled lifecycle tasks (paper section 4.1, Table 1) as seeded token streams.

Every task is filler with short events written over it; an event is ``[MARKER, key, value]``
where the marker is the explicit write signal (``WRITE`` "note:", ``UPDATE`` "update:",
``PROTECT`` "remember:", ``ASIDE`` "aside:" for an irrelevant remark), or ``[key, value]`` with
no marker for an ordinary, unsignalled fact. Events sit on a 4-token grid so they never overlap.

Tasks (defaults in ``TASKS``; every query's answer is a value token):

- ``associative_recall``: ``facts`` signalled facts, query one.
- ``overwrite_facts``: ``facts`` facts in the first half; ``updates`` of them get an
  ``UPDATE`` with a new value in the second half; query an updated key -> the new value.
- ``temporal_versioning``: ``keys`` keys with ``versions`` values each, interleaved over the
  whole stream (first WRITE, then UPDATEs); query a key -> its latest version.
- ``distractor_pollution``: ``facts`` PROTECTed facts in the first 20%; then per fact
  ``asides`` irrelevant ``ASIDE`` remarks giving the same key a wrong value,
  ``lookalike_writes`` signalled writes of its look-alike key, and ``others`` unrelated
  signalled writes (so a bounded memory must evict); query a fact -> its protected value.
- ``streaming_qa``: ``events`` signalled writes over a pool of ``pool`` keys (a key written again
  with a new value is its newer version); ``queries`` questions asked mid-stream at evenly
  spaced times; the answer is the latest value written before the question.
- ``uniform_recall``: ``facts`` facts with no marker (no write signal), query one.

Labels are derived from the event list at generation time and used only for scoring.

Example:
    >>> from memadapter.tasks.vocab import Codebook
    >>> cb = Codebook(dim=16, num_keys=64, num_values=64, num_filler=64)
    >>> batch = generate("overwrite_facts", batch_size=2, length=512, seed=0, codebook=cb)
    >>> batch.materialize().shape, batch.answers.shape
    (torch.Size([2, 512]), torch.Size([2, 1]))
"""

from __future__ import annotations

import random
from typing import Callable

import torch

from .._validate import check_positive_int
from ..errors import ConfigError
from .stream import StreamBatch
from .vocab import ASIDE, PROTECT, UPDATE, WRITE, Codebook

GRID = 4  # event length <= 3, so a 4-token grid keeps at least one filler token between events

Event = tuple[int, list[int]]  # (start position, token ids)
Query = tuple[int, int]  # (query key id, answer value id)

TASKS: dict[str, dict] = {
    "associative_recall": {"facts": 16},
    "overwrite_facts": {"facts": 16, "updates": 8},
    "temporal_versioning": {"keys": 6, "versions": 4},
    "distractor_pollution": {"facts": 4, "asides": 2, "lookalike_writes": 12, "others": 16},
    "streaming_qa": {"events": 48, "pool": 16, "queries": 4},
    "uniform_recall": {"facts": 16},
}


def _positions(rng: random.Random, length: int, n: int, lo: float = 0.0, hi: float = 1.0) -> list[int]:
    """``n`` sorted distinct grid positions in [lo*length, hi*length)."""
    first, last = int(lo * length) // GRID + (1 if lo > 0 else 0), int(hi * length) // GRID - 1
    cells = range(first, last)  # the last cell is left out so an event never runs off the end
    if len(cells) < n:
        raise ConfigError(f"length: {length} tokens cannot hold {n} events in [{lo}, {hi})")
    return [c * GRID for c in sorted(rng.sample(cells, n))]


def _associative(rng: random.Random, cb: Codebook, length: int, p: dict, marker: bool = True):
    n = p["facts"]
    keys, vals = rng.sample(range(cb.num_keys), n), rng.sample(range(cb.num_values), n)
    prefix = [WRITE] if marker else []
    events = [(pos, prefix + [cb.key(k), cb.value(v)]) for pos, k, v in zip(_positions(rng, length, n), keys, vals)]
    q = rng.randrange(n)
    return events, [(cb.key(keys[q]), cb.value(vals[q]))]


def _uniform(rng: random.Random, cb: Codebook, length: int, p: dict):
    return _associative(rng, cb, length, p, marker=False)


def _overwrite(rng: random.Random, cb: Codebook, length: int, p: dict):
    n, m = p["facts"], p["updates"]
    keys = rng.sample(range(cb.num_keys), n)
    vals = rng.sample(range(cb.num_values), n + m)  # distinct, so every update conflicts
    events = [(pos, [WRITE, cb.key(k), cb.value(v)]) for pos, k, v in zip(_positions(rng, length, n, 0, 0.5), keys, vals)]
    updated = rng.sample(range(n), m)
    for pos, i, v in zip(_positions(rng, length, m, 0.5, 1.0), updated, vals[n:]):
        events.append((pos, [UPDATE, cb.key(keys[i]), cb.value(v)]))
    q = rng.choice(updated)
    return events, [(cb.key(keys[q]), cb.value(vals[n + updated.index(q)]))]


def _versioning(rng: random.Random, cb: Codebook, length: int, p: dict):
    n, nv = p["keys"], p["versions"]
    keys = rng.sample(range(cb.num_keys), n)
    vals = iter(rng.sample(range(cb.num_values), n * nv))
    order = [i for i in range(n) for _ in range(nv)]
    rng.shuffle(order)
    seen, latest, events = set(), {}, []
    for pos, i in zip(_positions(rng, length, n * nv), order):
        v = next(vals)
        events.append((pos, [UPDATE if i in seen else WRITE, cb.key(keys[i]), cb.value(v)]))
        seen.add(i)
        latest[i] = v
    q = rng.randrange(n)
    return events, [(cb.key(keys[q]), cb.value(latest[q]))]


def _distractor(rng: random.Random, cb: Codebook, length: int, p: dict):
    n = p["facts"]
    keys = rng.sample(range(cb.num_keys), n + p["others"])
    vals = iter(rng.sample(range(cb.num_values), 3 * n + p["others"]))
    events = [(pos, [PROTECT, cb.key(k), cb.value(next(vals))]) for pos, k in zip(_positions(rng, length, n, 0, 0.2), keys[:n])]
    truth = [e[1][2] for e in events]
    noise: list[list[int]] = []
    for k in keys[:n]:
        wrong, look_val = cb.value(next(vals)), cb.value(next(vals))
        noise += [[ASIDE, cb.key(k), wrong]] * p["asides"] + [[WRITE, cb.lookalike(k), look_val]] * p["lookalike_writes"]
    noise += [[WRITE, cb.key(k), cb.value(next(vals))] for k in keys[n:]]
    rng.shuffle(noise)
    events += list(zip(_positions(rng, length, len(noise), 0.2, 1.0), noise))
    q = rng.randrange(n)
    return events, [(cb.key(keys[q]), truth[q])]


def _streaming(rng: random.Random, cb: Codebook, length: int, p: dict):
    pool = rng.sample(range(cb.num_keys), p["pool"])
    vals = iter(rng.sample(range(cb.num_values), p["events"]))
    events = [(pos, [WRITE, cb.key(rng.choice(pool)), cb.value(next(vals))]) for pos in _positions(rng, length, p["events"])]
    queries = []
    for at in streaming_query_times(length, p["queries"]):
        latest = {ev[1]: ev[2] for pos, ev in events if pos + len(ev) <= at}  # later writes win
        key = rng.choice(sorted(latest))
        queries.append((key, latest[key]))
    return events, queries


def streaming_query_times(length: int, n: int) -> list[int]:
    """Evenly spaced question times, on the event grid, the last one at the end of the stream."""
    return [(length * (i + 1) // n) // GRID * GRID for i in range(n)]


_BUILDERS: dict[str, Callable] = {
    "associative_recall": _associative,
    "overwrite_facts": _overwrite,
    "temporal_versioning": _versioning,
    "distractor_pollution": _distractor,
    "streaming_qa": _streaming,
    "uniform_recall": _uniform,
}


def generate(task: str, batch_size: int, length: int, seed: int, codebook: Codebook, **params: int) -> StreamBatch:
    """``batch_size`` seeded streams of ``task``; ``params`` override the task's defaults in ``TASKS``."""
    if task not in _BUILDERS:
        raise ConfigError(f"task: unknown task {task!r}; choose from {sorted(_BUILDERS)}")
    check_positive_int("batch_size", batch_size)
    check_positive_int("length", length)
    unknown = set(params) - set(TASKS[task])
    if unknown:
        raise ConfigError(f"params: {sorted(unknown)} are not parameters of {task!r} ({sorted(TASKS[task])})")
    p = {**TASKS[task], **params}
    task_index = list(_BUILDERS).index(task)
    samples = [
        _BUILDERS[task](random.Random((seed * 7919 + task_index) * 1_000_003 + i), codebook, length, p)
        for i in range(batch_size)
    ]
    return _pack(task, samples, length, seed * 7919 + task_index, codebook, p)


def _pack(task: str, samples: list, length: int, filler_seed: int, cb: Codebook, p: dict) -> StreamBatch:
    width = max(sum(len(toks) for _, toks in events) for events, _ in samples)
    pos = torch.full((len(samples), width), -1, dtype=torch.long)
    tok = torch.zeros((len(samples), width), dtype=torch.long)
    for b, (events, _) in enumerate(samples):
        flat = [(start + j, t) for start, toks in events for j, t in enumerate(toks)]
        pos[b, : len(flat)] = torch.tensor([f[0] for f in flat])
        tok[b, : len(flat)] = torch.tensor([f[1] for f in flat])
    queries = torch.tensor([[q for q, _ in qs] for _, qs in samples])  # [B, Q]
    answers = torch.tensor([[a for _, a in qs] for _, qs in samples])  # [B, Q]
    query_at = streaming_query_times(length, p["queries"]) if task == "streaming_qa" else [length]
    return StreamBatch(length, pos, tok, (cb.filler_base, cb.size), filler_seed, queries, answers, query_at, task, {"params": p})
