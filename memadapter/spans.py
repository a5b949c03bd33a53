"""Token spans of candidate memory events: BIO tags decoded into key and value spans, keys paired
with their values, spans widened to whole words, the relation region after a key, and mean pooling
over spans, and chunk boundaries at sentence ends. Plain loops and vectorised forms side by side;
the batched forms (``*_batched``) are what ingest runs, each tested against its loop.
:mod:`memadapter.heads` reads them.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

TAGS: tuple[str, ...] = ("O", "KEY_B", "KEY_I", "VAL_B", "VAL_I")
TAG_O, TAG_KEY_B, TAG_KEY_I, TAG_VAL_B, TAG_VAL_I = range(5)
# Tokens after a key that carry its relation when no value follows ("Greta's phone number; ...").
RELATION_WINDOW = 6


def decode_spans(tags: list[int]) -> list[tuple[str, int, int]]:
    """BIO decode one row: returns ``(kind, start, end)`` with kind in {"key", "value"}.

    An I tag without a preceding B of the same kind opens a span (lenient decoding), so a
    slightly wrong tagger still yields spans instead of nothing.
    """
    spans: list[tuple[str, int, int]] = []
    kind: Optional[str] = None
    start = 0
    for t, tag in enumerate(tags):
        tag_kind = "key" if tag in (TAG_KEY_B, TAG_KEY_I) else "value" if tag in (TAG_VAL_B, TAG_VAL_I) else None
        begins = tag in (TAG_KEY_B, TAG_VAL_B)
        if kind is not None and (tag_kind != kind or begins):
            spans.append((kind, start, t))
            kind = None
        if tag_kind is not None and kind is None:
            kind, start = tag_kind, t
    if kind is not None:
        spans.append((kind, start, len(tags)))
    return spans


def pair_spans(spans: list[tuple[str, int, int]]) -> list[tuple[tuple[int, int], Optional[tuple[int, int]]]]:
    """Pair each key span with the value span right after it (none when the next span is a key)."""
    pairs: list[tuple[tuple[int, int], Optional[tuple[int, int]]]] = []
    for i, (kind, s, e) in enumerate(spans):
        if kind != "key":
            continue
        value = None
        for kind2, s2, e2 in spans[i + 1 :]:
            if kind2 == "value":
                value = (s2, e2)
            break
        pairs.append(((s, e), value))
    return pairs


def word_starts(rows: list[list[int]], decode_batch: Callable[[list[list[int]]], list[str]]) -> list[list[bool]]:
    """For each token of each row: does it begin a word? A token continues the previous token's word
    when its text, read after that token, starts with a letter or digit and the previous token's
    text ends with one. Decoding pairs keeps this tokenizer-agnostic (byte-level "Ġ" and
    SentencePiece "▁" space markers alike); the first token of a row begins a word.

    Example:
        >>> pieces = {1: " Mer", 2: "idian", 3: " is", 4: " 2", 5: "10"}
        >>> word_starts([[1, 2, 3, 4, 5]], lambda rows: ["".join(pieces[t] for t in r) for r in rows])
        [[True, False, True, True, False]]
    """
    out = []
    for row in rows:
        singles = decode_batch([[t] for t in row])
        pairs = decode_batch([row[i - 1 : i + 1] for i in range(1, len(row))])
        starts = [True] if row else []
        for prev, pair in zip(singles, pairs):
            piece = pair[len(prev):] if pair.startswith(prev) else " "  # a split multi-byte character: no claim
            starts.append(not (piece[:1].isalnum() and prev[-1:].isalnum()))
        out.append(starts)
    return out


def sentence_ends(rows: list[list[int]], decode_batch: Callable[[list[list[int]]], list[str]]) -> list[list[bool]]:
    """For each token of each row: does its text end a sentence (".", "!", "?" or a line break)?

    Example:
        >>> pieces = {1: " valid", 2: ".", 3: " It", 4: "!\\n"}
        >>> sentence_ends([[1, 2, 3, 4]], lambda rows: ["".join(pieces[t] for t in r) for r in rows])
        [[False, True, False, True]]
    """
    return [[any(c in ".!?\n" for c in piece) for piece in decode_batch([[t] for t in row])] for row in rows]


def sentence_chunks(sentence_end: Sequence[bool], size: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` chunks (end exclusive) of at most ``size`` tokens, each ending
    after the last sentence-ending token (``sentence_end[t]``, :func:`sentence_ends`) in its second
    half, or after exactly ``size`` tokens when there is none there (or the tokens run out).

    Each chunk is read on its own, so a cut inside a sentence ("... has a job at Blue" |
    "field Bank.") leaves a key without its value, or a withdrawal without the fact it withdraws.

    Example:
        >>> sentence_chunks([False, True, False, False, True, False, False], 4)
        [(0, 2), (2, 5), (5, 7)]
        >>> sentence_chunks([False] * 5, 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    if size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    chunks, start, n = [], 0, len(sentence_end)
    while start < n:
        end = start + size
        if end < n:  # the last end in [start + size // 2, end): never a chunk shorter than half
            end = next((t + 1 for t in range(end - 1, start + max(size // 2, 1) - 2, -1) if sentence_end[t]), end)
        chunks.append((start, min(end, n)))
        start = chunks[-1][1]
    return chunks


def snap_to_words(pairs: list[tuple[tuple[int, int], Optional[tuple[int, int]]]], word_start: Sequence[bool],
                  ) -> list[tuple[tuple[int, int], Optional[tuple[int, int]]]]:
    """Widen each (key, value) span pair to whole words: a start moves back to its word's first
    token, an end forward to the next word's start (``word_start[t]``: token t begins a word; end
    exclusive). A value never starts inside its key (nor stays when the key's words took it all).

    Example:
        >>> snap_to_words([((1, 2), (4, 5))], [True, True, False, True, True, False, True])
        [((1, 3), (4, 6))]
    """
    length = len(word_start)

    def snap(s: int, e: int, floor: int) -> tuple[int, int]:
        while s > floor and not word_start[s]:
            s -= 1
        while e < length and not word_start[e]:
            e += 1
        return s, e

    out = []
    for (k0, k1), value in pairs:
        key = snap(k0, k1, 0)
        if value is not None:
            v0 = max(value[0], key[1])
            value = snap(v0, max(value[1], v0 + 1), key[1]) if v0 < length else None  # the key took it all
        out.append((key, value))
    return out


def relation_spans(key_spans: torch.Tensor, value_spans: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The tokens that say *which* attribute a key is about: key end .. value start.

    A causal backbone's key tokens ("The Vega kettle") cannot see the relation that follows
    ("sells for"), so a key pooled over the entity alone is the same for the kettle's price and
    its colour. The relation region is ``[key_end, value_start)`` when a value follows the key;
    otherwise (a retraction, whose value span equals its key span) the ``RELATION_WINDOW`` tokens
    after the key, cut at ``lengths``. An empty region falls back to the key's last token.

    key_spans, value_spans [..., 2] (end exclusive), lengths broadcastable to [...] -> [..., 2].
    """
    k0, k1, v0 = key_spans[..., 0], key_spans[..., 1], value_spans[..., 0]
    has_value = v0 >= k1
    end = torch.where(has_value, v0, torch.minimum(k1 + RELATION_WINDOW, torch.as_tensor(lengths).to(k1)))
    empty = end <= k1
    start = torch.where(empty, (k1 - 1).clamp(min=0), k1)
    return torch.stack([torch.where(empty, torch.maximum(k0, start), start), torch.where(empty, k1, end)], -1)


def relation_spans_reference(key_spans: list, value_spans: list, length: int) -> list:
    """Plain-loop reference for :func:`relation_spans` on one row of (start, end) pairs."""
    out = []
    for (k0, k1), (v0, _) in zip(key_spans, value_spans):
        end = v0 if v0 >= k1 else min(k1 + RELATION_WINDOW, length)
        out.append([max(k0, k1 - 1), k1] if end <= k1 else [k1, end])
    return out


def pool_spans(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [T, H] over each ``spans`` [N, 2] (end exclusive) -> [N, H]. Vectorised."""
    t = torch.arange(hidden.shape[0], device=hidden.device)
    inside = (t[None, :] >= spans[:, :1]) & (t[None, :] < spans[:, 1:])  # [N, T]
    weights = inside.to(hidden.dtype)
    counts = weights.sum(-1, keepdim=True).clamp_min(1.0)  # [N, 1]
    return (weights @ hidden) / counts


def pool_spans_reference(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Plain-loop reference for ``pool_spans``."""
    rows = []
    for s, e in spans.tolist():
        rows.append(hidden[s:e].mean(0) if e > s else hidden.new_zeros(hidden.shape[-1]))
    return torch.stack(rows) if rows else hidden.new_zeros(0, hidden.shape[-1])


def pool_spans_batched(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, H] over ``spans`` [B, N, 2] (end exclusive) -> [B, N, H]; empty: 0.

    Prefix sums (float32) make the cost O(T H + N H): it does not grow as N x T the way a mask
    product would. Equal to :func:`pool_spans` per row up to float rounding."""
    B, T, H = hidden.shape
    cs = F.pad(hidden.float().cumsum(1), (0, 0, 1, 0))  # [B, T + 1, H]
    s, e = spans[..., 0].clamp(0, T), spans[..., 1].clamp(0, T)  # [B, N]
    total = cs.gather(1, e[..., None].expand(-1, -1, H)) - cs.gather(1, s[..., None].expand(-1, -1, H))  # [B, N, H]
    count = (e - s).clamp(min=0)[..., None].to(total.dtype)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total)).to(hidden.dtype)


def decode_pairs_batched(tags: torch.Tensor, lengths: torch.Tensor,
                         word_start: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    """:func:`decode_spans` + :func:`pair_spans` + :func:`snap_to_words` as tensor ops.

    tags [B, T] long (padding tagged O), lengths [B], word_start [B, T] bool (None: off). Returns key_spans [B, N, 2], value_spans [B, N, 2] (the key span when there is no value),
    has_value [B, N], mask [B, N]; candidates in row order."""
    B, T = tags.shape
    dev = tags.device
    pos = torch.arange(T, device=dev)
    tags = torch.where(pos[None] < lengths[:, None], tags, torch.full_like(tags, TAG_O))
    kind = torch.where((tags == TAG_KEY_B) | (tags == TAG_KEY_I), 1, torch.where(tags >= TAG_VAL_B, 2, 0))  # [B, T]
    prev = F.pad(kind, (1, 0))[:, :-1]
    start = (kind > 0) & ((prev != kind) | (tags == TAG_KEY_B) | (tags == TAG_VAL_B))  # [B, T]
    S = max(int(start.sum(1).max()), 1) if T else 1
    sid = start.long().cumsum(1) - 1  # [B, T]: the span a token belongs to (when kind > 0)
    inside = (kind > 0) & (sid >= 0)
    idx = torch.where(inside, sid, torch.full_like(sid, S))  # spare column S takes the rest
    sp_start = torch.full((B, S + 1), T, device=dev).scatter_reduce(1, idx, pos.expand(B, T), "amin")[:, :S]
    sp_end = torch.zeros(B, S + 1, dtype=torch.long, device=dev).scatter_reduce(1, idx, pos.expand(B, T) + 1, "amax")[:, :S]
    sp_kind = torch.zeros(B, S + 1, dtype=torch.long, device=dev).scatter_reduce(1, idx, kind, "amax")[:, :S]
    valid = sp_kind > 0  # [B, S]
    # a key pairs with the very next span when that is a value
    nxt_kind, nxt_s, nxt_e = (F.pad(x, (0, 1))[:, 1:] for x in (sp_kind, sp_start, sp_end))
    has_value = valid & (sp_kind == 1) & (nxt_kind == 2)
    keep = valid & (sp_kind == 1)  # [B, S]
    k0, k1 = sp_start, sp_end
    v0, v1 = torch.where(has_value, nxt_s, k0), torch.where(has_value, nxt_e, k1)
    if word_start is not None:
        k0, k1, v0, v1, has_value = _snap_batched(word_start, lengths, k0, k1, v0, v1, has_value)
    return _compact(keep, torch.stack([k0, k1], -1), torch.stack([v0, v1], -1), has_value)


def _snap_batched(word_start: torch.Tensor, lengths: torch.Tensor, k0, k1, v0, v1, has_value):
    """:func:`snap_to_words` on [B, S] span tensors: a start back to its word's first token (not
    below ``floor``), an end forward to the next word start (or the row's length)."""
    B, T = word_start.shape
    pos = torch.arange(T + 1, device=word_start.device)
    ws = torch.cat([word_start.bool(), torch.ones(B, 1, dtype=torch.bool, device=word_start.device)], 1)
    ws = ws | (pos[None] >= lengths[:, None])  # past the row's end counts as a word start
    back = torch.where(ws, pos, torch.full_like(pos, -1)).cummax(1).values  # [B, T + 1]: last start <= t
    fwd = torch.where(ws, pos, torch.full_like(pos, T)).flip(1).cummin(1).values.flip(1)  # first start >= t
    k0n = back.gather(1, k0).clamp(min=0)
    k1n = fwd.gather(1, k1)
    a = torch.maximum(v0, k1n)
    has_value = has_value & (a < lengths[:, None])
    a = a.clamp(max=T)
    v0n = torch.maximum(back.gather(1, a), k1n)
    v1n = fwd.gather(1, torch.maximum(v1, a + 1).clamp(max=T))
    return k0n, k1n, torch.where(has_value, v0n, k0n), torch.where(has_value, v1n, k1n), has_value


def _compact(keep: torch.Tensor, key_spans: torch.Tensor, value_spans: torch.Tensor, has_value: torch.Tensor):
    """Move the kept [B, S] entries to the front of each row, in order: -> [B, N] tensors."""
    N = int(keep.sum(1).max()) if keep.numel() else 0
    order = torch.sort((~keep).long(), dim=1, stable=True).indices[:, :N]  # kept first, in order
    mask = keep.gather(1, order)
    take = lambda x: x.gather(1, order[..., None].expand(-1, -1, x.shape[-1])) if x.dim() == 3 else x.gather(1, order)  # noqa: E731
    return take(key_spans), take(value_spans), take(has_value) & mask, mask


def marks_tensor(rows: list[list[bool]], lengths: torch.Tensor, T: int, pad: bool, device: torch.device) -> torch.Tensor:
    """Per-token marks [B][<= T] (each row cut at its length) -> bool [B, T], ``pad`` past the end."""
    out = torch.full((len(rows), T), pad, dtype=torch.bool)
    for b, (row, n) in enumerate(zip(rows, lengths.tolist())):
        out[b, :n] = torch.tensor(row[:n], dtype=torch.bool)
    return out.to(device)
