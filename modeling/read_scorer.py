"""The learned reader: one score per entry of a question's candidate pool.

A question's pool holds the usable slots of its memory row and the events the GroundingHead
proposes again in the chunks retrieved for it. Each entry is described by a few numbers that say
how it relates to the question and to the rest of the pool (:data:`FEATURES`): the learned key
match, the question's words found in its key text and in its sentence, whether it names the asked
entity most exactly or carries a name of its own, its event type, where it stands in the stream
and whether a later entry looks like a newer version of it. :class:`ReadScorer` turns them into a
score; the reader injects the best entry.

The scorer replaces a chain of hand rules whose order was fixed by a comment. It is fitted
listwise (:func:`listwise_loss`) on the pools of training streams by ``memadapter.training.fit_reader``;
untrained it scores ``key_match + 0.3 * lexical_sentence``, the plain joint score.

Example:
    >>> pool = ReadPool(key_texts=["Alice", "Bob"], sentences=["Alice lives in Paris.", "Bob lives in Rome."],
    ...                 value_texts=["Paris", "Rome"], keys=torch.eye(2), match=torch.tensor([0.2, 0.3]),
    ...                 order=torch.tensor([1.0, 2.0]), is_slot=torch.tensor([True, False]),
    ...                 withdrawn=torch.tensor([False, False]), event_types=["new", "new"],
    ...                 confidence=torch.tensor([0.9, 1.0]))
    >>> f = pool_features("Where does Alice live?", pool)
    >>> f.shape, int(ReadScorer()(f).argmax())
    (torch.Size([2, 25]), 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from memadapter.bm25 import content_words, lexical_agreement, tokenize
from memadapter.heads import EVENT_TYPES

from .selection import foreign_keys, inserted_names, most_specific

FEATURES: tuple[str, ...] = (
    "key_match",  # learned key . query
    "key_match_gap",  # key_match - the pool's best key_match
    "lexical_key",  # BM25 agreement of the question's content words with the key text, in [0, 1]
    "lexical_sentence",  # ... with the entry's sentence
    "named_key",  # share of the question's content words the key text names
    "named_sentence",  # ... the sentence names
    "most_specific",  # no other key text names a strict superset of the question's words it names
    "foreign_name",  # the key leaves out a name of the question and carries one of its own
    "inserted_name",  # the key puts a name of its own inside the asked name ("Mini")
    "slot",  # a written slot (else an event grounded at read time)
    "withdrawn",  # a retraction: a tombstone slot, an event typed retract or a pointer withdrawal
    *(f"type_{t}" for t in EVENT_TYPES),  # the grounding head's event type (slots: none)
    "position",  # rank in stream order, 0 (first) .. 1 (last)
    "later_version",  # max key cosine with an entry later in the stream
    "earlier_version",  # max key cosine with an entry earlier in the stream
    "has_value",  # it has a value text to copy
    "confidence",  # slot confidence (events 1)
    # appended 2026-12-06: a scorer saved before reads them with weight 0 (widen_features)
    "answer",  # a pointer answer (memadapter.modeling.read_answers)
    "answer_margin",  # sigmoid of its span's margin over "no answer here" (a withdrawal: of its score; others 0)
    # appended 2026-12-07
    "answer_hedge",  # sigmoid of the pointer's hedge score of its sentence, on a pointer answer with a value (others 0)
    # appended 2026-12-07 (thirteenth session)
    "restated_run",  # a pointer answer that is a whole run of words its sentence replaces in an earlier one: the share repeated (others 0)
    "restated_span",  # the pointer's best span touching such a run: the share repeated (others 0)
)
NUM_FEATURES = len(FEATURES)
PRIOR = {"key_match": 1.0, "lexical_sentence": 0.3}  # the untrained score: the plain joint score


@dataclass
class ReadPool:
    """One question's candidates, slots first then grounded events: their key, sentence and value
    texts (value None: withdrawn or none), unit keys [N, dk], key match with the question [N],
    stream order [N], and per entry whether it is a slot, a withdrawal, its event type name ("" for
    a slot, "answer" for a pointer answer), its confidence, its pointer margin, its sentence's
    hedge score and, on a replaced run of a restated sentence or the pointer's best span touching
    one, the share repeated (None: no pointer answer in the pool; else [N], 0 for the other entries)."""

    key_texts: list[str]
    sentences: list[str]
    value_texts: list[Optional[str]]
    keys: torch.Tensor
    match: torch.Tensor
    order: torch.Tensor
    is_slot: torch.Tensor
    withdrawn: torch.Tensor
    event_types: list[str]
    confidence: torch.Tensor
    answer_margin: Optional[torch.Tensor] = None
    answer_hedge: Optional[torch.Tensor] = None
    restated_run: Optional[torch.Tensor] = None
    restated_span: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.key_texts)


def _named_share(words: set[str], texts: Sequence[str]) -> list[float]:
    """Per text, the share of ``words`` among its tokens."""
    return [len(words & set(toks)) / max(1, len(words)) for toks in tokenize(list(texts))]


def _version_features(keys: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max key cosine of each entry with any later / any earlier entry, 0 when there is none. [N] x2."""
    cos = keys @ keys.T  # [N, N]
    later = order[None, :] > order[:, None]  # [N, N]: column j comes after row i
    earlier = order[None, :] < order[:, None]
    lo = torch.full_like(cos, -1.0)
    return (torch.where(later, cos, lo).amax(-1).clamp_min(0.0) if len(order) else order,
            torch.where(earlier, cos, lo).amax(-1).clamp_min(0.0) if len(order) else order)


def pool_features(question: str, pool: ReadPool) -> torch.Tensor:
    """[N, NUM_FEATURES] in the order of :data:`FEATURES` (float32)."""
    n = len(pool)
    if n == 0:
        return torch.zeros(0, NUM_FEATURES)
    words = content_words(question) or set(tokenize([question])[0])
    match = pool.match.float()
    specific = set(most_specific(question, pool.key_texts))
    later, earlier = _version_features(pool.keys.float(), pool.order.float())
    rank = pool.order.float().argsort().argsort().float() / max(1, n - 1)  # [N] in [0, 1]
    types = torch.tensor([[float(t == name) for name in EVENT_TYPES] for t in pool.event_types])  # [N, E]
    columns = [
        match, match - match.max(),
        torch.tensor(lexical_agreement(question, pool.key_texts, True)),
        torch.tensor(lexical_agreement(question, pool.sentences, True)),
        torch.tensor(_named_share(words, pool.key_texts)), torch.tensor(_named_share(words, pool.sentences)),
        torch.tensor([float(i in specific) for i in range(n)]),
        torch.tensor(foreign_keys(question, pool.key_texts), dtype=torch.float),
        torch.tensor(inserted_names(question, pool.key_texts), dtype=torch.float),
        pool.is_slot.float(), pool.withdrawn.float(),
    ]
    answer = torch.tensor([float(t == "answer") for t in pool.event_types])
    margin = torch.zeros(n) if pool.answer_margin is None else torch.sigmoid(pool.answer_margin.float()) * answer
    has_value = torch.tensor([float(bool(v and v.strip())) for v in pool.value_texts])
    # a hedge discounts a value told as hearsay; a withdrawal states no value, so it gets none
    hedge = torch.zeros(n) if pool.answer_hedge is None else torch.sigmoid(pool.answer_hedge.float()) * answer * has_value
    run, span = (torch.zeros(n) if r is None else r.float() for r in (pool.restated_run, pool.restated_span))
    tail = [rank, later, earlier, has_value, pool.confidence.float(), answer, margin, hedge, run, span]
    return torch.cat([torch.stack(columns, -1), types, torch.stack(tail, -1)], -1).float()  # [N, F]


class ReadScorer(nn.Module):
    """Pool features [..., N, F] -> scores [..., N]: a linear score (initialised to :data:`PRIOR`)
    plus a small MLP whose output layer starts at zero, so an unfitted scorer reads like the plain
    joint score and fitting can only add what the pools teach."""

    def __init__(self, num_features: int = NUM_FEATURES, hidden: int = 32):
        super().__init__()
        self.linear = nn.Linear(num_features, 1)
        self.mlp = nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.reset_prior()

    @torch.no_grad()
    def reset_prior(self) -> None:
        """Back to the untrained score: ``key_match + 0.3 * lexical_sentence``."""
        self.linear.weight.zero_()
        self.linear.bias.zero_()
        for name, w in PRIOR.items():
            self.linear.weight[0, FEATURES.index(name)] = w
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        x = features.to(w.device, w.dtype)
        return (self.linear(x) + self.mlp(x)).squeeze(-1)


def widen_features(saved: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """A saved scorer tensor -> ``own``'s shape when only its input features are fewer (a scorer
    saved before features were appended to :data:`FEATURES`): zero weights for the new ones, so
    it scores as it did. Any other tensor is returned as it is.

    >>> widen_features(torch.ones(1, 2), torch.zeros(1, 3)).tolist()
    [[1.0, 1.0, 0.0]]
    """
    if saved.dim() == 2 and own.dim() == 2 and saved.shape[0] == own.shape[0] and saved.shape[1] < own.shape[1]:
        return torch.cat([saved, saved.new_zeros(saved.shape[0], own.shape[1] - saved.shape[1])], 1)
    return saved


def _log_share(scores: torch.Tensor, valid: torch.Tensor, entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log of the softmax mass on ``entries`` [P], whether the pool holds one [P]); scores, valid,
    entries: [P, N], the invalid entries left out of the softmax."""
    scores = scores.masked_fill(~valid, -1e9)
    chosen = entries & valid
    return torch.logsumexp(scores.masked_fill(~chosen, -1e9), -1) - torch.logsumexp(scores, -1), chosen.any(-1)


def listwise_loss(scores: torch.Tensor, valid: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over pools of -log (softmax mass on the positive entries). scores, valid, positive:
    [P, N]; a pool without a positive entry adds nothing.

    Example:
        >>> s = torch.tensor([[2.0, 0.0, 0.0]]); v = torch.ones(1, 3, dtype=torch.bool)
        >>> round(float(listwise_loss(s, v, torch.tensor([[True, False, False]]))), 3)
        0.24
    """
    log_p, has = _log_share(scores, valid, positive)
    return -log_p[has].mean() if bool(has.any()) else scores.sum() * 0.0


def stale_loss(scores: torch.Tensor, valid: torch.Tensor, stale: torch.Tensor) -> torch.Tensor:
    """Mean over pools of -log (1 - softmax mass on the stale entries): the entries of a fact's
    superseded versions, which :func:`listwise_loss` counts no worse than any other wrong entry.
    scores, valid, stale: [P, N]; a pool without a stale entry adds nothing.

    Example:
        >>> s = torch.tensor([[2.0, 0.0, 0.0]]); v = torch.ones(1, 3, dtype=torch.bool)
        >>> round(float(stale_loss(s, v, torch.tensor([[False, True, False]]))), 3)
        0.113
    """
    log_p, has = _log_share(scores, valid, stale)
    return -torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))[has].mean() if bool(has.any()) else scores.sum() * 0.0


@torch.no_grad()
def score_pools(scorer: ReadScorer, pools: Sequence[tuple[str, ReadPool]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(question, pool) pairs -> (scores [B, N], valid [B, N]): every entry of every pool in one
    scorer call, pools padded to the longest."""
    feats = [pool_features(q, pool) for q, pool in pools]
    n = max([1] + [f.shape[0] for f in feats])
    x = torch.zeros(len(feats), n, NUM_FEATURES)  # [B, N, F]
    valid = torch.zeros(len(feats), n, dtype=torch.bool)
    for b, f in enumerate(feats):
        x[b, :f.shape[0]], valid[b, :f.shape[0]] = f, True
    return scorer(x).float().cpu(), valid
