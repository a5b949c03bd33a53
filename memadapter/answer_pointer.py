"""The answer pointer: a question-conditioned start/end head that finds the answer span in one sentence.

The GroundingHead proposes key and value spans while the stream is read, before any question is
known, and it proposes only what looks like the facts it was trained on. The pointer reads at
question time instead: the frozen backbone reads ``Question: ...\\nText: <sentence>``, and a small
head over the text tokens' hidden states (several layers, concatenated) scores each token as the
answer's start and as its end. The token just before the text is the *null* position: a sentence
that does not answer the question should put both start and end there. A span's ``margin`` is its
start + end score minus the null's, so margins compare across sentences: the reader gets them as a
feature (``memadapter.modeling.read_scorer``). A third score, read at the sentence's last token (which
has seen the question and the whole sentence), says that the sentence *withdraws* what is asked
("The entry code of the studio was cancelled"): a withdrawal holds no span to point at, and a value
read from its words ("no longer works") would be a wrong answer. A fourth score, read at the same
token by a separate linear head (``hedge``), says that the sentence names a value without stating it
as a fact ("It was wrongly said that ...", "... was only a rumoured ..."): the reader weighs it, with
the version features, as a reason to trust the span less. It is fitted on its own, on the frozen
backbone's states (``memadapter.training.fit_hedge``), so the span and withdrawal scores stay as they were.

Example:
    >>> head = AnswerPointer(in_features=4)
    >>> logits = head(torch.randn(2, 6, 4))  # [B, T, 3]: start, end and withdrawal scores per token
    >>> text = torch.tensor([[False] + [True] * 5] * 2)  # token 0 is the null, then the sentence
    >>> start, end, margin = best_spans(logits[..., :2], text, torch.zeros(2, dtype=torch.long))
    >>> bool(((start >= 1) & (end >= start) & (end - start < MAX_SPAN)).all())
    True
    >>> withdraws(logits, text).shape  # [B]: the withdrawal score at each row's last text token
    torch.Size([2])
    >>> head.hedges(torch.randn(2, 6, 4), text).tolist()  # [B]: an unfitted hedge head scores 0
    [0.0, 0.0]
"""

from __future__ import annotations

import re
from typing import Optional

import torch
import torch.nn as nn

from .errors import ShapeError
from .restatement import FEATURES as RESTATEMENT_FEATURES

MAX_SPAN = 16  # tokens: the longest answer span the pointer proposes
PROMPT = "Question: {question}\nText:"  # what the backbone reads before the sentence (then " " + sentence)


class AnswerPointer(nn.Module):
    """Hidden states [..., T, in_features] -> start, end and withdrawal scores [..., T, 3]: an MLP with
    one hidden layer of ``hidden`` units (0: a linear head).

    ``changes`` [..., T, R] (optional) are each token's restatement features
    (:data:`memadapter.restatement.FEATURES`, :func:`memadapter.restatement.token_changes`);
    ``restated`` [R, 2] weighs them into the start and end scores. It starts at zero, so a pointer
    reads as before until they are fitted (``memadapter.training.fit_restatement``). ``hedge`` scores
    a hedged sentence (module docstring); it also starts at zero (``memadapter.training.fit_hedge``)."""

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        self.net = (nn.Linear(in_features, 3) if hidden == 0 else
                    nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 3)))
        self.restated = nn.Parameter(torch.zeros(len(RESTATEMENT_FEATURES), 2))  # [R, start / end]
        self.hedge = nn.Linear(in_features, 1)
        nn.init.zeros_(self.hedge.weight)
        nn.init.zeros_(self.hedge.bias)

    def forward(self, hidden: torch.Tensor, changes: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = self.restated
        logits = self.net(hidden.to(w.device, w.dtype))
        if changes is None:
            return logits
        bias = changes.to(w.device, w.dtype) @ w  # [..., T, 2]
        return logits + torch.cat([bias, torch.zeros_like(bias[..., :1])], -1)

    def hedges(self, hidden: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """[B]: the hedge score at each row's last text token (``hidden`` [B, T, in_features],
        ``text_mask`` [B, T], contiguous); -inf for a row without text."""
        last = last_text_token(text_mask)
        w = self.hedge.weight
        at = hidden[torch.arange(len(last), device=hidden.device), last.clamp_min(0)].to(w.device, w.dtype)  # [B, F]
        return self.hedge(at)[:, 0].float().masked_fill(last.to(w.device) < 0, float("-inf"))


def best_spans(logits: torch.Tensor, text_mask: torch.Tensor, null: torch.Tensor, max_span: int = MAX_SPAN,
               starts: Optional[torch.Tensor] = None, ends: Optional[torch.Tensor] = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the best span of text tokens: (start [B], end [B], margin [B]).

    logits [B, T, 2]; text_mask [B, T] (the sentence's tokens); null [B] (index of the null token).
    A span starts and ends on text tokens, ``start <= end < start + max_span``; its score is
    start + end logit, and ``margin`` is that minus the null's start + end logit. ``starts`` /
    ``ends`` [B, T] (optional) narrow where a span may start / end (:func:`word_bounds`); a row
    with no such span within ``max_span`` falls back to any text tokens. A row without text
    returns its null position and margin -inf.
    """
    if logits.dim() != 3 or logits.shape[-1] != 2 or tuple(text_mask.shape) != tuple(logits.shape[:2]):
        raise ShapeError(f"logits: expected [B, T, 2] with text_mask [B, T], got {tuple(logits.shape)} and "
                         f"{tuple(text_mask.shape)}")
    free = _scored_spans(logits.float(), text_mask, text_mask, null, max_span)
    if starts is None and ends is None:
        return free
    s_ok = text_mask & (starts if starts is not None else text_mask)
    e_ok = text_mask & (ends if ends is not None else text_mask)
    bound = _scored_spans(logits.float(), s_ok, e_ok, null, max_span)
    found = torch.isfinite(bound[2]) | ~text_mask.any(-1)
    return tuple(torch.where(found, b, f) for b, f in zip(bound, free))  # type: ignore[return-value]


def _scored_spans(logits: torch.Tensor, start_ok: torch.Tensor, end_ok: torch.Tensor, null: torch.Tensor,
                  max_span: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, T, _ = logits.shape
    text_mask = start_ok | end_ok
    start = logits[..., 0].masked_fill(~start_ok, float("-inf"))  # [B, T]
    end = logits[..., 1].masked_fill(~end_ok, float("-inf"))
    pos = torch.arange(T, device=logits.device)
    width = pos[None, :] - pos[:, None]  # [T, T]: end - start
    allowed = (width >= 0) & (width < max_span)
    score = (start[:, :, None] + end[:, None, :]).masked_fill(~allowed, float("-inf"))  # [B, T(start), T(end)]
    best = score.flatten(1).argmax(-1)  # [B]
    s, e = best // T, best % T
    top = score.flatten(1).gather(1, best[:, None])[:, 0]
    rows = torch.arange(B, device=logits.device)
    margin = top - logits[rows, null, 0] - logits[rows, null, 1]
    empty = ~text_mask.any(-1)
    return torch.where(empty, null, s), torch.where(empty, null, e), margin.masked_fill(empty, float("-inf"))


_LEAD = re.compile(r"[^\w\s]*")  # a word's leading punctuation: "(", '"', "$"
_TAIL = re.compile(r"(?:['’]s)?[^\w\s]*")  # what may follow a span inside its word: "'s", ".", ","


def word_bounds(text: str, offsets: list[tuple[int, int]]) -> tuple[list[bool], list[bool]]:
    """Which tokens may start / end an answer span: (starts, ends), one flag per token of ``offsets``
    ((start, end) characters in ``text``). A span may not cut a word (a run of non-space
    characters): it starts after a space or the word's leading punctuation, and ends before a
    space or what only punctuation or a possessive "'s" follows. "28564" of "2856496." and "-21"
    of "D-21" are cut words; "Vienna" of "Vienna." and "Wilson" of "Wilson's" are not.

    >>> text = " code D-21, not 2856496."
    >>> offsets = [(0, 5), (5, 7), (7, 8), (8, 10), (10, 11), (11, 15), (15, 21), (21, 23), (23, 24)]
    >>> starts, ends = word_bounds(text, offsets)
    >>> [text[s:e] for (s, e), ok in zip(offsets, starts) if ok], [text[s:e] for (s, e), ok in zip(offsets, ends) if ok]
    ([' code', ' D', ' not', ' 28564'], [' code', '21', ',', ' not', '96', '.'])
    """
    starts, ends = [], []
    for s, e in offsets:
        s += len(text[s:e]) - len(text[s:e].lstrip())  # a token's leading space is not its word
        word_start, word_end = _word_start(text, s), _word_end(text, e)
        starts.append(e > s and _LEAD.fullmatch(text[word_start:s]) is not None)
        ends.append(e > s and _TAIL.fullmatch(text[e:word_end]) is not None)
    return starts, ends


def _word_start(text: str, i: int) -> int:
    while i > 0 and not text[i - 1].isspace():
        i -= 1
    return i


def _word_end(text: str, i: int) -> int:
    while i < len(text) and not text[i].isspace():
        i += 1
    return i


def withdraws(logits: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """[B]: the withdrawal score (channel 2 of ``logits`` [B, T, 3]) at each row's last text token
    (``text_mask`` [B, T], contiguous); -inf for a row without text."""
    if logits.dim() != 3 or logits.shape[-1] != 3 or tuple(text_mask.shape) != tuple(logits.shape[:2]):
        raise ShapeError(f"logits: expected [B, T, 3] with text_mask [B, T], got {tuple(logits.shape)} and "
                         f"{tuple(text_mask.shape)}")
    last = last_text_token(text_mask)
    score = logits[torch.arange(len(last), device=logits.device), last.clamp_min(0), 2].float()
    return score.masked_fill(last < 0, float("-inf"))


def last_text_token(text_mask: torch.Tensor) -> torch.Tensor:
    """[B]: the index of each row's last True in ``text_mask`` [B, T]; -1 for a row without one."""
    pos = torch.arange(text_mask.shape[1], device=text_mask.device)
    return torch.where(text_mask, pos, -1).amax(-1)


def best_spans_reference(logits: torch.Tensor, text_mask: torch.Tensor, null: torch.Tensor, max_span: int = MAX_SPAN,
                         starts: Optional[torch.Tensor] = None, ends: Optional[torch.Tensor] = None,
                         ) -> tuple[list[int], list[int], list[float]]:
    """Plain loops over every (start, end) pair: the oracle :func:`best_spans` is tested against."""
    out_starts, out_ends, margins = [], [], []
    for b in range(logits.shape[0]):
        text = [t for t in range(logits.shape[1]) if text_mask[b, t]]
        nul = float(logits[b, int(null[b]), 0]) + float(logits[b, int(null[b]), 1])
        best = (int(null[b]), int(null[b]), float("-inf"))
        for bounded in (True, False):  # within the word bounds first, then (none found) anywhere
            for i in text:
                for j in text:
                    inside = not bounded or ((starts is None or bool(starts[b, i])) and (ends is None or bool(ends[b, j])))
                    if 0 <= j - i < max_span and inside:
                        score = float(logits[b, i, 0]) + float(logits[b, j, 1])
                        if score > best[2]:
                            best = (i, j, score)
            if best[2] > float("-inf"):
                break
        out_starts.append(best[0])
        out_ends.append(best[1])
        margins.append(best[2] - nul if text else float("-inf"))
    return out_starts, out_ends, margins
