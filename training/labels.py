"""Character-span labels of a lifecycle stream -> token-level training targets for a fast tokenizer.

The stream generator labels characters (sentence, key and value spans); the grounding head works
on tokens. The fast tokenizer's offset mapping gives each token its character range, and a token
belongs to a span when the two ranges overlap. Targets follow ``memadapter.heads``: tags
O / KEY_B / KEY_I / VAL_B / VAL_I, event types in ``EVENT_TYPES`` order, -100 where ignored.

Example:
    >>> out = token_labels(stream, tokenizer)                       # doctest: +SKIP
    >>> [TAGS[t] for t in out["tag_ids"][:4]]                       # doctest: +SKIP
    ['O', 'KEY_B', 'KEY_I', 'O']
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import datasets

from memadapter.errors import ConfigError, EmptyInputError, ShapeError
from memadapter.heads import EVENT_TYPES, IGNORE_INDEX, TAG_KEY_B, TAG_KEY_I, TAG_O, TAG_VAL_B, TAG_VAL_I, TAGS

__all__ = ["TAGS", "char_spans_to_token_spans", "char_spans_to_token_spans_reference", "token_labels",
           "write_label", "tokenize_dataset"]

Span = tuple[int, int]
NO_SPAN: Span = (-1, -1)
WRITE_EVENTS = ("new", "update", "retract")


def _check_offsets(offsets: Sequence[Sequence[int]]) -> list[Span]:
    out = []
    for i, pair in enumerate(offsets):
        if len(pair) != 2 or pair[1] < pair[0]:
            raise ShapeError(f"offsets: entry {i} is {tuple(pair)}, expected (start, end) with end >= start")
        out.append((int(pair[0]), int(pair[1])))
    return out


def char_spans_to_token_spans(offsets: Sequence[Sequence[int]], spans: Sequence[Span]) -> list[Span]:
    """Token span ``[first, last + 1)`` of the tokens overlapping each char span; ``(-1, -1)`` if none.

    Binary search over the non-empty tokens (special tokens have empty ``(0, 0)`` offsets): with
    starts and ends non-decreasing, the overlapping tokens are the contiguous run from the first
    token ending after ``a`` to the last token starting before ``b``. O((T + N) log T).
    """
    offs = _check_offsets(offsets)
    real = [i for i, (s, e) in enumerate(offs) if e > s]
    starts = [offs[i][0] for i in real]
    ends = [offs[i][1] for i in real]
    out = []
    for a, b in spans:
        lo = bisect.bisect_right(ends, a)  # first real token with end > a
        hi = bisect.bisect_left(starts, b)  # first real token with start >= b
        out.append((real[lo], real[hi - 1] + 1) if b > a and lo < hi else NO_SPAN)
    return out


def char_spans_to_token_spans_reference(offsets: Sequence[Sequence[int]], spans: Sequence[Span]) -> list[Span]:
    """Plain-loop reference: scan every token for overlap with every span."""
    offs = _check_offsets(offsets)
    out = []
    for a, b in spans:
        hit = [i for i, (s, e) in enumerate(offs) if e > s and e > a and s < b]
        out.append((hit[0], hit[-1] + 1) if hit and b > a else NO_SPAN)
    return out


def write_label(event: dict) -> int:
    """1 when the event should enter memory: an explicitly signalled new fact, update or retraction.

    Unsignalled facts (recall goes through the sparse fallback), rumours and other irrelevant
    sentences are 0.
    """
    return int(bool(event["signal"]) and event["event_type"] in WRITE_EVENTS)


def _mark(tags: list[int], span: Span, begin: int, inside: int) -> None:
    s, e = span
    for t in range(s, e):
        if tags[t] == TAG_O:  # a token shared by key and value stays with the key
            tags[t] = begin if t == s else inside


def _check_example(example: Any) -> tuple[str, list]:
    if not isinstance(example, Mapping) or "text" not in example or "events" not in example:
        raise ConfigError("example: expected a stream dict with 'text' and 'events' (see generate_stream)")
    if not isinstance(example["text"], str) or not example["text"]:
        raise EmptyInputError("example: 'text' must be a non-empty string")
    return example["text"], list(example["events"])


def _label_events(events: list, spans: tuple, covered: int, tags: list, ev_t: list, conf: list) -> dict:
    """Fill the per-token targets in place and collect the per-event ones (events are in text order)."""
    sent, keys, vals = spans
    T = len(tags)
    out: dict[str, list] = {k: [] for k in ("event_spans", "key_spans", "value_spans", "event_types",
                                            "write_labels", "versions", "event_index")}
    for i, ev in enumerate(events):
        if ev["end"] > covered or keys[i] == NO_SPAN:
            s = sent[i][0] if sent[i] != NO_SPAN else T
            tags[s:] = [IGNORE_INDEX] * (T - s)  # cut by truncation: every later token is cut too
            break
        _mark(tags, keys[i], TAG_KEY_B, TAG_KEY_I)
        if vals[i] != NO_SPAN:
            _mark(tags, vals[i], TAG_VAL_B, TAG_VAL_I)
        etype = EVENT_TYPES.index(ev["event_type"])
        first, end = keys[i][0], max(keys[i][1], vals[i][1])
        ev_t[first:end] = [etype] * (end - first)
        conf[first:end] = [0.0 if ev["event_type"] == "irrelevant" else 1.0] * (end - first)
        for name, value in (("event_spans", list(sent[i])), ("key_spans", list(keys[i])),
                            ("value_spans", list(vals[i])), ("event_types", etype),
                            ("write_labels", write_label(ev)), ("versions", int(ev["version"])), ("event_index", i)):
            out[name].append(value)
    return out


def token_labels(example: dict, tokenizer: Any, *, max_length: Optional[int] = None,
                 add_special_tokens: bool = False) -> dict:
    """Token ids plus per-token and per-event targets for one stream.

    Returns ``input_ids``, ``attention_mask``, ``tag_ids`` (0..4), ``event_targets`` (per token: the
    event type over each event's key-start .. value-end, the range ``GroundingHead`` pools, else
    -100), ``confidence_targets`` (1.0 on real facts, 0.0 on irrelevant ones, NaN elsewhere) and per
    kept event ``event_spans`` / ``key_spans`` / ``value_spans`` (token ``[start, end)``, value
    ``[-1, -1]`` when absent), ``event_types``, ``write_labels``, ``versions``, ``event_index``
    (position in ``example["events"]``). Events cut by ``max_length`` are dropped and their tokens
    get tag -100. ``add_special_tokens`` defaults to False, as ``MemAdapterForCausalLM.ingest`` reads.
    """
    text, events = _check_example(example)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("tokenizer: token_labels needs a fast tokenizer (it reads the offset mapping)")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ConfigError(f"max_length: expected a positive int or None, got {max_length!r}")
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens,
                    truncation=max_length is not None, max_length=max_length)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    T = len(offsets)
    covered = max((e for _, e in offsets), default=0)  # chars reached by the (possibly truncated) tokens
    sent = char_spans_to_token_spans(offsets, [(ev["start"], ev["end"]) for ev in events])
    keys = char_spans_to_token_spans(offsets, [(ev["key_start"], ev["key_end"]) for ev in events])
    vals = char_spans_to_token_spans(offsets, [(ev["value_start"], ev["value_end"]) if ev["value_start"] >= 0
                                               else NO_SPAN for ev in events])
    tags, ev_t, conf = [TAG_O] * T, [IGNORE_INDEX] * T, [math.nan] * T
    out = _label_events(events, (sent, keys, vals), covered, tags, ev_t, conf)
    return {"input_ids": list(enc["input_ids"]), "attention_mask": [1] * T, "tag_ids": tags,
            "event_targets": ev_t, "confidence_targets": conf, **out}


def tokenize_dataset(dataset: datasets.Dataset, tokenizer: Any, *, max_length: Optional[int] = None,
                     keep_columns: Sequence[str] = ("id", "questions")) -> datasets.Dataset:
    """``token_labels`` over every row (single process; the machines here are small)."""
    drop = [c for c in dataset.column_names if c not in keep_columns]
    return dataset.map(lambda ex: token_labels(ex, tokenizer, max_length=max_length), remove_columns=drop)
