"""Training losses for the memory adapter, each a small function with a plain-loop reference.

- :func:`answer_loss`: next-token cross-entropy on the answer tokens of a question, computed on
  logits that the backbone produced with the memory injected (prefix or cross-attention);
- :func:`grounding_loss`: token tagging (O / KEY_B / KEY_I / VAL_B / VAL_I) plus event type;
- :func:`write_aux_loss`: the paper's "lite" write supervision, BCE on p_write at weight 0.25
  (Phase 12: answer-only training wrote ~2,445 times, lite supervision 1-2 times);
- :func:`contrastive_matching_loss`: InfoNCE of a question's query against the key of every
  event of its stream (the answer event is the positive), plus a margin on the hard negatives
  (same entity other attribute, same attribute older version, look-alike entity);
- :func:`write_budget_penalty`: the expected number of writes above a per-stream budget.

Every function takes tensors, ignores padded entries through masks or -100, and raises a typed
error from :mod:`memadapter.errors` naming the argument on bad input.

Example:
    >>> import torch
    >>> p = torch.tensor([0.9, 0.1]); y = torch.tensor([1.0, 0.0])
    >>> round(float(write_aux_loss(p, y)), 4)
    0.0263
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from memadapter._validate import check_tensor
from memadapter.errors import ConfigError, DTypeError, ShapeError

IGNORE_INDEX = -100
LITE_WRITE_WEIGHT = 0.25  # the paper's lite write auxiliary weight (section 4.3, Phase 12)
_EPS = 1e-6

# Hard-negative kinds, as the collator labels each (question, event) pair.
NEG_NONE, NEG_SAME_ENTITY, NEG_OLDER_VERSION, NEG_LOOKALIKE = 0, 1, 2, 3
NEGATIVE_KINDS: tuple[str, ...] = ("other", "same_entity_other_attribute", "older_version", "lookalike_entity")


def _check_same_shape(name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ShapeError(f"{name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")


def _check_labels(name: str, labels: object, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
        raise DTypeError(f"{name}: expected an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    _check_same_shape(name, labels, shape)
    return labels


# ---------------------------------------------------------------------------- answer
def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Causal LM loss: logits [B, T, V] at position t predict labels [B, t+1]; -100 is ignored.

    Returns 0 (with a gradient path) when no label is set, so a batch without answers is not NaN.
    """
    check_tensor("logits", logits, ndim=3, finite=False)
    labels = _check_labels("labels", labels, tuple(logits.shape[:2]))
    pred, gold = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()  # [B*(T-1), V], [B*(T-1)]
    keep = gold != IGNORE_INDEX
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(pred[keep].float(), gold[keep])


def answer_loss_reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain-loop reference for :func:`answer_loss`."""
    total, count = logits.new_zeros((), dtype=torch.float32), 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y != IGNORE_INDEX:
                total = total - torch.log_softmax(logits[b, t].float(), -1)[y]
                count += 1
    return total / max(count, 1)


def answer_token_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: 1 when every labelled answer token is the argmax (exact match under teacher forcing).

    logits [B, T, V], labels [B, T] -> [B] float; rows without labels count as 0.
    """
    pred, gold = logits[:, :-1].argmax(-1), labels[:, 1:]  # [B, T-1]
    keep = gold != IGNORE_INDEX
    wrong = (pred != gold) & keep
    return (keep.any(1) & ~wrong.any(1)).float()


# ---------------------------------------------------------------------------- grounding
def grounding_loss(
    tag_logits: torch.Tensor,
    tag_targets: torch.Tensor,
    event_logits: torch.Tensor,
    event_targets: torch.Tensor,
    confidence_logits: torch.Tensor | None = None,
    confidence_targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """CE over token tags [B, T, 5] vs [B, T] plus CE over event types [B, T, E] vs [B, T] (-100 ignored),
    plus BCE of confidence logits [B, T] vs targets [B, T] in [0, 1] (NaN ignored) when given.

    The event and confidence terms are only added where some token carries such a label.
    """
    check_tensor("tag_logits", tag_logits, ndim=3, finite=False)
    check_tensor("event_logits", event_logits, ndim=3, finite=False)
    _check_labels("tag_targets", tag_targets, tuple(tag_logits.shape[:2]))
    _check_labels("event_targets", event_targets, tuple(event_logits.shape[:2]))
    loss = _masked_ce(tag_logits.flatten(0, 1), tag_targets.flatten())
    if bool((event_targets != IGNORE_INDEX).any()):
        loss = loss + _masked_ce(event_logits.flatten(0, 1), event_targets.flatten())
    if confidence_targets is not None:
        check_tensor("confidence_targets", confidence_targets, finite=False, nonempty=False)
        _check_same_shape("confidence_targets", confidence_targets, tuple(tag_logits.shape[:2]))
        keep = ~torch.isnan(confidence_targets)
        if confidence_logits is None:
            raise ShapeError("confidence_logits: required with confidence_targets")
        if bool(keep.any()):
            loss = loss + F.binary_cross_entropy_with_logits(confidence_logits[keep].float(), confidence_targets[keep])
    return loss


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    keep = targets != IGNORE_INDEX
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep].float(), targets[keep])


def grounding_loss_reference(tag_logits, tag_targets, event_logits, event_targets, confidence_logits=None,
                             confidence_targets=None) -> torch.Tensor:
    """Plain-loop reference for :func:`grounding_loss`."""

    def mean_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        terms = [-torch.log_softmax(logits[b, t].float(), -1)[int(targets[b, t])]
                 for b in range(targets.shape[0]) for t in range(targets.shape[1]) if int(targets[b, t]) != IGNORE_INDEX]
        return torch.stack(terms).mean() if terms else logits.new_zeros(())

    loss = mean_ce(tag_logits, tag_targets)
    if bool((event_targets != IGNORE_INDEX).any()):
        loss = loss + mean_ce(event_logits, event_targets)
    if confidence_targets is not None:
        terms = []
        for z, y in zip(confidence_logits.flatten().tolist(), confidence_targets.flatten().tolist()):
            if not math.isnan(y):
                p = 1 / (1 + math.exp(-z))
                terms.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
        loss = loss + (sum(terms) / len(terms) if terms else 0.0)
    return loss


# ---------------------------------------------------------------------------- writes
def write_aux_loss(p_write: torch.Tensor, write_targets: torch.Tensor, mask: torch.Tensor | None = None,
                   weight: float = LITE_WRITE_WEIGHT) -> torch.Tensor:
    """``weight`` * BCE(p_write, write_targets) over the entries where ``mask`` is True (any shape)."""
    check_tensor("p_write", p_write, nonempty=False)
    check_tensor("write_targets", write_targets, nonempty=False)
    _check_same_shape("write_targets", write_targets, tuple(p_write.shape))
    _check_weight("weight", weight)
    mask = _as_mask("mask", mask, p_write)
    if not bool(mask.any()):
        return p_write.sum() * 0.0
    p = p_write[mask].float().clamp(_EPS, 1 - _EPS)
    return weight * F.binary_cross_entropy(p, write_targets[mask].float())


def write_aux_loss_reference(p_write, write_targets, mask=None, weight: float = LITE_WRITE_WEIGHT) -> torch.Tensor:
    """Plain-loop reference for :func:`write_aux_loss`."""
    p, y = p_write.flatten().tolist(), write_targets.flatten().tolist()
    m = [True] * len(p) if mask is None else mask.flatten().tolist()
    terms = []
    for pi, yi, mi in zip(p, y, m):
        if mi:
            pi = min(max(pi, _EPS), 1 - _EPS)
            terms.append(-(yi * math.log(pi) + (1 - yi) * math.log(1 - pi)))
    return torch.tensor(weight * sum(terms) / len(terms) if terms else 0.0)


def write_budget_penalty(p_write: torch.Tensor, mask: torch.Tensor, budget: float) -> torch.Tensor:
    """Mean over streams of relu(expected writes - budget) / candidates: p_write, mask [B, N].

    Expected writes of a stream are the sum of its p_write; the penalty is zero while a stream
    stays within ``budget`` writes and grows with each expected write beyond it.
    """
    check_tensor("p_write", p_write, ndim=2, nonempty=False)
    mask = _as_mask("mask", mask, p_write)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0 or not math.isfinite(budget):
        raise ConfigError(f"budget: must be a finite number >= 0, got {budget!r}")
    expected = (p_write.float() * mask).sum(1)  # [B]
    count = mask.sum(1).clamp_min(1)  # [B]
    return (F.relu(expected - budget) / count).mean() if p_write.shape[0] else p_write.sum() * 0.0


def write_budget_penalty_reference(p_write, mask, budget: float) -> torch.Tensor:
    """Plain-loop reference for :func:`write_budget_penalty`."""
    rows = []
    for b in range(p_write.shape[0]):
        ps = [float(p_write[b, n]) for n in range(p_write.shape[1]) if bool(mask[b, n])]
        rows.append(max(sum(ps) - budget, 0.0) / max(len(ps), 1))
    return torch.tensor(sum(rows) / len(rows) if rows else 0.0)


def _as_mask(name: str, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if not isinstance(mask, torch.Tensor) or mask.is_floating_point():
        raise DTypeError(f"{name}: expected a bool or 0/1 integer tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    _check_same_shape(name, mask, tuple(like.shape))
    return mask.bool()


def _check_weight(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}: must be a finite number >= 0, got {value!r}")


# ---------------------------------------------------------------------------- matching
def contrastive_matching_loss(
    queries: torch.Tensor,
    event_keys: torch.Tensor,
    event_mask: torch.Tensor,
    positive: torch.Tensor,
    negative_kind: torch.Tensor | None = None,
    *,
    temperature: float = 0.1,
    margin: float = 0.2,
    hard_weight: float = 1.0,
) -> torch.Tensor:
    """Query-event matching: queries [Q, dk], event_keys [Q, N, dk] (each question's own stream),
    event_mask [Q, N], positive [Q] (index of the answer event), negative_kind [Q, N] in 0..3.

    InfoNCE over the stream's valid events (every other event of the stream is a negative), plus
    ``hard_weight`` * mean hinge ``relu(margin - (s_pos - s_hard))`` over hard negatives
    (kinds 1-3), so the nearest confusions are pushed apart even when the softmax is already sure.
    """
    q, n = _check_matching(queries, event_keys, event_mask, positive, negative_kind)
    if temperature <= 0 or not math.isfinite(temperature):
        raise ConfigError(f"temperature: must be a finite number > 0, got {temperature!r}")
    _check_weight("margin", margin)
    _check_weight("hard_weight", hard_weight)
    if q == 0:
        return queries.sum() * 0.0
    sims = torch.einsum("qd,qnd->qn", queries.float(), event_keys.float())  # [Q, N] cosines
    logits = (sims / temperature).masked_fill(~event_mask, torch.finfo(torch.float32).min)
    loss = F.cross_entropy(logits, positive)
    if negative_kind is not None and hard_weight > 0:
        hard = (negative_kind > NEG_NONE) & event_mask  # [Q, N]
        if bool(hard.any()):
            s_pos = sims.gather(1, positive[:, None])  # [Q, 1]
            loss = loss + hard_weight * F.relu(margin - (s_pos - sims))[hard].mean()
    return loss


def contrastive_matching_loss_reference(queries, event_keys, event_mask, positive, negative_kind=None, *,
                                        temperature: float = 0.1, margin: float = 0.2,
                                        hard_weight: float = 1.0) -> torch.Tensor:
    """Plain-loop reference for :func:`contrastive_matching_loss`."""
    nce, hinges = [], []
    for i in range(queries.shape[0]):
        valid = [j for j in range(event_keys.shape[1]) if bool(event_mask[i, j])]
        sims = {j: float(queries[i].double() @ event_keys[i, j].double()) for j in valid}
        pos = int(positive[i])
        log_z = math.log(sum(math.exp(sims[j] / temperature) for j in valid))
        nce.append(log_z - sims[pos] / temperature)
        if negative_kind is not None:
            hinges += [max(margin - (sims[pos] - sims[j]), 0.0) for j in valid if int(negative_kind[i, j]) > NEG_NONE]
    loss = sum(nce) / max(len(nce), 1)
    if hinges and hard_weight > 0:
        loss += hard_weight * sum(hinges) / len(hinges)
    return torch.tensor(loss)


def _check_matching(queries, event_keys, event_mask, positive, negative_kind) -> tuple[int, int]:
    check_tensor("queries", queries, ndim=2, nonempty=False)
    check_tensor("event_keys", event_keys, ndim=3, last_dim=queries.shape[-1], nonempty=False)
    q, n = event_keys.shape[:2]
    if q != queries.shape[0]:
        raise ShapeError(f"event_keys: {q} rows for {queries.shape[0]} queries")
    if not isinstance(event_mask, torch.Tensor) or event_mask.dtype != torch.bool:
        raise DTypeError(f"event_mask: expected a bool tensor, got {getattr(event_mask, 'dtype', type(event_mask).__name__)}")
    _check_same_shape("event_mask", event_mask, (q, n))
    _check_labels("positive", positive, (q,))
    if q and (bool((positive < 0).any()) or bool((positive >= n).any())):
        raise ShapeError(f"positive: indices must lie in 0..{n - 1}, got {positive.tolist()}")
    if q and not bool(event_mask.gather(1, positive[:, None]).all()):
        raise ShapeError("positive: every positive must point at a valid event (event_mask True)")
    if negative_kind is not None:
        _check_labels("negative_kind", negative_kind, (q, n))
    return q, n


def matching_accuracy(queries: torch.Tensor, event_keys: torch.Tensor, event_mask: torch.Tensor,
                      positive: torch.Tensor) -> torch.Tensor:
    """Per question: 1 when the answer event has the highest cosine among its stream's events. [Q]."""
    sims = torch.einsum("qd,qnd->qn", queries.float(), event_keys.float())  # [Q, N]
    sims = sims.masked_fill(~event_mask, -math.inf)
    return (sims.argmax(1) == positive).float()


# ---------------------------------------------------------------------------- write-time key matching
def key_consistency_loss(keys: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor, *,
                         same: float = 0.9, different: float = 0.6) -> torch.Tensor:
    """Event keys of one stream: the same fact (entity, attribute) above ``same``, others below ``different``.

    keys [B, N, dk] (unit), groups [B, N] (fact id within its stream, -1 = none), mask [B, N].
    Overwrites and retractions only work if a later event's key *matches the earlier slot*
    (SlotMemory's match threshold, 0.8 by default); query-event contrast never asks for that.
    Mean hinge over same-fact pairs ``relu(same - cos)`` plus over other pairs ``relu(cos - different)``.
    """
    _check_same_shape("groups", groups, tuple(keys.shape[:2]))
    valid = mask.bool() & (groups >= 0)  # [B, N]
    n = keys.shape[1]
    pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=keys.device)  # [B, N, N]
    sims = keys.float() @ keys.float().transpose(1, 2)  # [B, N, N]
    equal = groups[:, :, None] == groups[:, None, :]
    loss = keys.sum() * 0.0
    for sel, hinge in ((pair & equal, F.relu(same - sims)), (pair & ~equal, F.relu(sims - different))):
        if bool(sel.any()):
            loss = loss + hinge[sel].mean()
    return loss


def key_consistency_loss_reference(keys, groups, mask, *, same: float = 0.9, different: float = 0.6) -> torch.Tensor:
    """Plain-loop reference for :func:`key_consistency_loss`."""
    pos, neg = [], []
    for b in range(keys.shape[0]):
        idx = [i for i in range(keys.shape[1]) if bool(mask[b, i]) and int(groups[b, i]) >= 0]
        for i in idx:
            for j in idx:
                if i != j:
                    cos = float(keys[b, i].double() @ keys[b, j].double())
                    if int(groups[b, i]) == int(groups[b, j]):
                        pos.append(max(same - cos, 0.0))
                    else:
                        neg.append(max(cos - different, 0.0))
    return torch.tensor(sum(pos) / max(len(pos), 1) + sum(neg) / max(len(neg), 1))
