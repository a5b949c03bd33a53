"""Teacher-forced training objective and ``MemAdapterTrainer`` (a thin ``transformers.Trainer``).

One step on a collated batch (see :mod:`memadapter.training.collator`):

1. the frozen backbone reads the streams up to ``read_layer``; the GroundingHead tags tokens and
   types events (grounding loss);
2. key / value vectors are pooled over the *labelled* key and value spans (teacher forcing), the
   WriteController sees each event against the events before it in the stream (match, conflict,
   fill: what the slot memory would show it) -> p_write (lite write loss, budget penalty);
3. the QueryHead encodes each question; InfoNCE + hard-negative hinge against its stream's keys;
4. the gold event's value (``answer_memory="gold"``) or the query's soft read over the stream's
   values (``"soft"``) is injected through the prefix / cross-attention injector and the frozen
   backbone is scored on the answer tokens (answer loss).

The objective is an ``nn.Module`` whose ``forward`` runs all of this, so DistributedDataParallel
(``accelerate launch``) sees one forward per step and syncs the adapter's gradients. Only adapter
parameters require gradients; checkpoints hold the adapter's safetensors and the Trainer's state.

Example:
    >>> objective = TeacherForcedObjective(model, LossWeights())                 # doctest: +SKIP
    >>> trainer = MemAdapterTrainer(model=objective, args=args, train_dataset=ds,
    ...                             data_collator=MemAdapterCollator(tok))      # doctest: +SKIP
    >>> trainer.train()                                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from memadapter.errors import ConfigError
from memadapter.heads import pool_spans, relation_spans
from memadapter.modeling import hub
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM

from . import losses as L
from .collator import DEFAULT_QUESTION_KINDS

ANSWER_MEMORY = ("gold", "soft")
# Key match from which a slot counts toward the logged ``active_set_size``: only a statistic of
# training (the old default of the retired read.router_match_threshold); the read path no longer
# thresholds key matches, the learned ReadScorer ranks them.
ACTIVE_SET_MATCH = 0.5


@dataclass
class LossWeights:
    """Weights and knobs of the training objective (the ``training.loss`` section of a config).

    Example:
        >>> LossWeights(write=0.0).write      # answer-only training, the paper's other variant
        0.0
    """

    answer: float = 1.0
    grounding: float = 1.0
    write: float = L.LITE_WRITE_WEIGHT
    contrastive: float = 1.0
    budget: float = 0.1
    write_budget: float = 8.0  # expected writes per stream before the budget penalty starts
    temperature: float = 0.1
    margin: float = 0.2
    hard_weight: float = 1.0
    key_consistency: float = 0.0  # same-fact event keys together, other facts apart (write-time matching)
    answer_memory: str = "gold"

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "answer_memory":
                if v not in ANSWER_MEMORY:
                    raise ConfigError(f"answer_memory: must be one of {ANSWER_MEMORY}, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{f.name}: must be a finite number >= 0, got {v!r}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "LossWeights":
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"loss: unknown keys {unknown}")
        return cls(**d)


# ---------------------------------------------------------------------------- event features
def pool_event_spans(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean of hidden [B, T, H] over spans [B, N, 2] (end exclusive) -> [B, N, H], vectorised."""
    t = torch.arange(hidden.shape[1], device=hidden.device)
    inside = (t >= spans[..., :1]) & (t < spans[..., 1:])  # [B, N, T]
    w = inside.to(hidden.dtype)
    return torch.einsum("bnt,bth->bnh", w, hidden) / w.sum(-1, keepdim=True).clamp_min(1.0)


def pool_event_spans_reference(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Per-row loop over ``memadapter.heads.pool_spans`` (itself tested against its own loop)."""
    return torch.stack([pool_spans(hidden[b], spans[b]) for b in range(hidden.shape[0])])


def prior_event_features(keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                         num_slots: int) -> torch.Tensor:
    """What the WriteController would see for event n if events < n were already in memory.

    keys [B, N, dk] (unit), values [B, N, dv], mask [B, N] -> [B, N, 3]: best key cosine against
    earlier valid events (-1 when none), value conflict with that best match (1 - cosine, 0 when
    none), memory fill (earlier valid events / num_slots, at most 1).
    """
    B, N, _ = keys.shape
    sims = keys @ keys.transpose(1, 2)  # [B, N, N]
    earlier = torch.ones(N, N, dtype=torch.bool, device=keys.device).tril(-1)  # [n, m]: m < n
    allowed = earlier[None] & mask[:, None, :]  # [B, N, N]
    best, idx = sims.masked_fill(~allowed, -2.0).max(-1)  # [B, N]
    has = allowed.any(-1)
    matched_v = values.gather(1, idx[..., None].expand(B, N, values.shape[-1]))  # [B, N, dv]
    conflict = torch.where(has, 1 - F.cosine_similarity(matched_v, values, dim=-1), torch.zeros_like(best))
    fill = (allowed.sum(-1).float() / num_slots).clamp(max=1.0)
    return torch.stack([torch.where(has, best, torch.full_like(best, -1.0)), conflict, fill], -1)


def prior_event_features_reference(keys, values, mask, num_slots: int) -> torch.Tensor:
    """Plain-loop reference for :func:`prior_event_features`."""
    B, N, _ = keys.shape
    out = torch.zeros(B, N, 3)
    for b in range(B):
        for n in range(N):
            prev = [m for m in range(n) if bool(mask[b, m])]
            if not prev:
                out[b, n] = torch.tensor([-1.0, 0.0, 0.0])
                continue
            sims = [float(keys[b, n] @ keys[b, m]) for m in prev]
            m = prev[max(range(len(prev)), key=lambda i: sims[i])]
            conflict = 1 - float(F.cosine_similarity(values[b, m], values[b, n], dim=0))
            out[b, n] = torch.tensor([max(sims), conflict, min(len(prev) / num_slots, 1.0)])
    return out


def gold_value_ids(batch: dict, n: int, withdrawn: Sequence[int] = ()) -> torch.Tensor:
    """Each question's gold value tokens from its stream: [Q, 1, n] ids, -1 past the span's end.

    What ingest stores for the same event at inference (the value span's text, re-tokenised); a
    gold event without a value (a retraction: value span = key span) gets ``withdrawn`` (the ids of
    config.withdrawn_text, which select copies for a slot without value text), a question without
    a gold event none.
    """
    s, gold = batch["question_stream"], batch["answer_event"].clamp(min=0)  # [Q]
    key, value = batch["key_spans"][s, gold], batch["value_spans"][s, gold]  # [Q, 2]
    has_gold = batch["answer_event"] >= 0  # [Q]
    has = has_gold & (value[:, 0] >= key[:, 1])  # [Q]
    pos = value[:, :1] + torch.arange(n, device=value.device)  # [Q, n]
    ids = batch["input_ids"][s].gather(1, pos.clamp(max=batch["input_ids"].shape[1] - 1))  # [Q, n]
    ids = torch.where((pos < value[:, 1:]) & has[:, None], ids, torch.full_like(ids, -1))
    if len(withdrawn):
        fill = torch.full((n,), -1, dtype=ids.dtype, device=ids.device)
        fill[: min(n, len(withdrawn))] = torch.tensor(list(withdrawn)[:n], dtype=ids.dtype, device=ids.device)
        ids = torch.where((has_gold & ~has)[:, None], fill, ids)
    return ids[:, None]  # [Q, 1, n]


# ---------------------------------------------------------------------------- objective
class TeacherForcedObjective(nn.Module):
    """The adapter's training step as a module: ``forward(**batch) -> {"loss", parts, metrics}``.

    Example:
        >>> obj = TeacherForcedObjective(memadapter_model, LossWeights(answer_memory="soft"))  # doctest: +SKIP
        >>> out = obj(**collator(features)); out["loss"].backward()                           # doctest: +SKIP
    """

    def __init__(self, model: MemAdapterForCausalLM, weights: Optional[LossWeights] = None,
                 question_kinds: Sequence[str] = DEFAULT_QUESTION_KINDS):
        super().__init__()
        if not isinstance(model, MemAdapterForCausalLM):
            raise ConfigError(f"model: expected a MemAdapterForCausalLM, got {type(model).__name__}")
        self.model = model
        self.weights = weights or LossWeights()
        if model.config.value_tokens > 0 and self.weights.answer_memory != "gold":
            raise ConfigError("answer_memory: value_tokens > 0 copies one event's tokens; it needs answer_memory='gold'")
        self.question_kinds = tuple(question_kinds)

    def _read(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Hidden states carry no gradient unless a LoRA on the backbone is being trained.
        lora = any(p.requires_grad for _, p in self.model.backbone.named_parameters())
        with torch.set_grad_enabled(lora and torch.is_grad_enabled()):
            return self.model._hidden(ids, mask)

    def _events(self, batch: dict) -> dict[str, torch.Tensor]:
        m, mask = self.model, batch["attention_mask"]
        hidden = self._read(batch["input_ids"], mask)  # [B, T, H]
        g = m.grounding(hidden, mask.bool())
        h = m.grounding.norm(hidden)
        rel = relation_spans(batch["key_spans"], batch["value_spans"], mask.sum(-1, keepdim=True))  # [B, N, 2]
        keys = m.grounding.key(pool_event_spans(h, batch["key_spans"]), pool_event_spans(h, rel))  # [B, N, dk]
        values = m.grounding.value_proj(pool_event_spans(h, batch["value_spans"]))  # [B, N, dv]
        whole = torch.stack([batch["key_spans"][..., 0],
                             torch.maximum(batch["key_spans"][..., 1], batch["value_spans"][..., 1])], -1)
        ev_probs = pool_event_spans(g.event_logits, whole).softmax(-1)  # [B, N, E]
        conf = torch.sigmoid(pool_event_spans(g.confidence_logits[..., None], whole)[..., 0])  # [B, N]
        feats = prior_event_features(keys.detach(), values.detach(), batch["event_mask"], m.config.num_slots)
        feats = torch.cat([conf.detach()[..., None], feats], -1)  # [B, N, 4] in WRITE_FEATURES order
        B, N = keys.shape[:2]
        p = m.writer(keys.flatten(0, 1), ev_probs.flatten(0, 1), feats.flatten(0, 1)).view(B, N)  # [B*N] -> [B, N]
        return dict(g=g, keys=keys, values=values, p_write=p)

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        w, ev = self.weights, self._events(batch)
        emask = batch["event_mask"]
        parts = {
            "grounding": L.grounding_loss(ev["g"].tag_logits, batch["tag_ids"], ev["g"].event_logits,
                                          batch["event_type_ids"], ev["g"].confidence_logits,
                                          batch.get("confidence_targets")),
            "write": L.write_aux_loss(ev["p_write"], batch["write_labels"], emask, weight=1.0),
            "budget": L.write_budget_penalty(ev["p_write"], emask, w.write_budget),
            "key_consistency": L.key_consistency_loss(ev["keys"], batch["event_groups"], emask)
            if w.key_consistency > 0 and "event_groups" in batch else ev["keys"].sum() * 0.0,
        }
        writes = ((ev["p_write"] > 0.5) & emask).float()
        metrics = {
            "writes_per_stream": writes.sum(1).detach(),
            "write_correct": ((writes == batch["write_labels"]).float() * emask).sum().detach(),
            "write_count": emask.sum().float(),
        }
        q_parts, q_metrics = self._questions(batch, ev)
        parts.update(q_parts)
        metrics.update(q_metrics)
        loss = (w.grounding * parts["grounding"] + w.write * parts["write"] + w.budget * parts["budget"]
                + w.contrastive * parts["contrastive"] + w.answer * parts["answer"]
                + w.key_consistency * parts["key_consistency"])
        return {"loss": loss, **{f"loss_{k}": v.detach() for k, v in parts.items()}, **metrics}

    def _questions(self, batch: dict, ev: dict) -> tuple[dict, dict]:
        m, w = self.model, self.weights
        Q = batch["qa_input_ids"].shape[0]
        zero = ev["keys"].sum() * 0.0
        if Q == 0:
            return {"contrastive": zero, "answer": zero}, {}
        hidden = self._read(batch["qa_input_ids"], batch["qa_attention_mask"])  # [Q, L, H]
        query = m.query_head(hidden, batch["qa_question_mask"])  # [Q, dk]; the answer tokens are never read
        s = batch["question_stream"]
        keys, values, emask = ev["keys"][s], ev["values"][s], batch["event_mask"][s]  # [Q, N, *]
        gold = batch["answer_event"]
        has = gold >= 0
        contrastive = zero
        if bool(has.any()):
            contrastive = L.contrastive_matching_loss(query[has], keys[has], emask[has], gold[has],
                                                      batch["negative_kind"][has], temperature=w.temperature,
                                                      margin=w.margin, hard_weight=w.hard_weight)
        mem, valid = self._answer_memory(query, keys, values, emask, gold)
        answer, answer_ok = zero, torch.zeros(Q, device=query.device)
        if m._injector().takes_values:  # text reads its selection as words: no answer loss through it
            value_ids = None
            if m.config.value_tokens > 0:
                withdrawn = m.value_token_ids(m.config.read.withdrawn_text)
                value_ids = gold_value_ids(batch, m.config.value_tokens, withdrawn)
            out = m.forward_with_values(batch["qa_input_ids"], batch["qa_attention_mask"], mem, valid,
                                        value_ids=value_ids)
            answer = L.answer_loss(out.logits, batch["qa_labels"])
            answer_ok = L.answer_token_correct(out.logits.detach(), batch["qa_labels"])
        scores = torch.einsum("qd,qnd->qn", query.detach(), keys.detach()).masked_fill(~emask, -2.0)  # [Q, N]
        active = (scores >= ACTIVE_SET_MATCH).sum(1).clamp(max=m.config.top_k).float()
        match_ok = torch.where(has, L.matching_accuracy(query.detach(), keys.detach(), emask, gold.clamp(min=0)),
                               torch.zeros_like(answer_ok))
        return ({"contrastive": contrastive, "answer": answer},
                {"active_set": active, "match_correct": match_ok, "answer_correct": answer_ok,
                 "has_gold": has.float(), "question_kind": batch["question_kind"]})

    def _answer_memory(self, query, keys, values, emask, gold) -> tuple[torch.Tensor, torch.Tensor]:
        """What the injector reads: [Q, 1, dv] and valid [Q, 1]."""
        if self.weights.answer_memory == "gold":
            v = values.gather(1, gold.clamp(min=0)[:, None, None].expand(-1, 1, values.shape[-1]))  # [Q, 1, dv]
            return v, (gold >= 0)[:, None]
        logits = torch.einsum("qd,qnd->qn", query, keys) / self.weights.temperature  # [Q, N]
        att = logits.masked_fill(~emask, torch.finfo(logits.dtype).min).softmax(-1) * emask
        return torch.einsum("qn,qnd->qd", att, values)[:, None], emask.any(1)[:, None]


# ---------------------------------------------------------------------------- trainer
class MetricTotals:
    """Running sums of the step metrics as one fixed-length vector (same shape on every rank)."""

    def __init__(self, kinds: Sequence[str]):
        self.kinds = tuple(kinds)
        self.sums = torch.zeros(6 + 3 * len(self.kinds), dtype=torch.float64)

    def add(self, out: dict) -> None:
        k = len(self.kinds)
        s = self.sums
        s[0] += float(out["writes_per_stream"].sum())
        s[1] += out["writes_per_stream"].numel()
        s[2] += float(out["write_correct"])
        s[3] += float(out["write_count"])
        if "question_kind" not in out:
            return
        s[4] += float(out["active_set"].sum())
        s[5] += out["active_set"].numel()
        kind = out["question_kind"].cpu().long()
        gold = out["has_gold"].cpu().double()
        s[6:6 + k] += torch.bincount(kind, weights=out["match_correct"].cpu().double() * gold, minlength=k)[:k]
        s[6 + k:6 + 2 * k] += torch.bincount(kind, weights=out["answer_correct"].cpu().double(), minlength=k)[:k]
        s[6 + 2 * k:] += torch.bincount(kind, minlength=k)[:k].double()

    def summary(self, sums: torch.Tensor) -> dict[str, float]:
        k, s = len(self.kinds), sums.double()
        logs = {"writes_per_stream": _div(s[0], s[1]), "write_accuracy": _div(s[2], s[3]),
                "active_set_size": _div(s[4], s[5])}
        for i, name in enumerate(self.kinds):
            if s[6 + 2 * k + i] > 0:
                logs[f"match_acc/{name}"] = _div(s[6 + i], s[6 + 2 * k + i])
                logs[f"answer_acc/{name}"] = _div(s[6 + k + i], s[6 + 2 * k + i])
        return {key: v for key, v in logs.items() if not math.isnan(v)}


def _div(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a / b) if float(b) > 0 else float("nan")


class MemAdapterTrainer(Trainer):
    """``transformers.Trainer`` over a :class:`TeacherForcedObjective`; overrides only what must change.

    - ``compute_loss``: the objective's loss; its metrics are summed for ``log``;
    - ``log``: adds writes per stream, active-set size, write accuracy and per-task matching /
      answer accuracy, summed over all processes;
    - ``_save`` / ``_load_from_checkpoint``: the adapter only (``adapter_config.json``,
      ``adapter_model.safetensors``, model card), JSON training args, never the backbone.

    Example:
        >>> trainer = MemAdapterTrainer(model=TeacherForcedObjective(model), args=args,
        ...                             train_dataset=ds, data_collator=collator)   # doctest: +SKIP
        >>> trainer.train(resume_from_checkpoint=True)                             # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, TeacherForcedObjective):
            raise ConfigError(f"model: expected a TeacherForcedObjective, got {type(self.model).__name__}")
        if self.args.load_best_model_at_end:
            raise ConfigError("load_best_model_at_end: not supported by MemAdapterTrainer")
        self._totals = MetricTotals(self.model.question_kinds)

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        out = model(**inputs)
        if model.training:
            self._totals.add(out)
        return (out["loss"], out) if return_outputs else out["loss"]

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs:  # a training log; every rank reaches it at the same step
            sums = self.accelerator.reduce(self._totals.sums.to(self.args.device), reduction="sum").cpu()
            logs.update(self._totals.summary(sums))
            self._totals.sums.zero_()
        super().log(logs, start_time)

    @torch.no_grad()
    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
        """Teacher-forced loss and the same per-task metrics on ``eval_dataset``, summed over processes."""
        loader = self.get_eval_dataloader(eval_dataset)
        objective = self.accelerator.unwrap_model(self.model)
        was_training = objective.training
        objective.eval()
        totals = MetricTotals(objective.question_kinds)
        loss = torch.zeros(2, dtype=torch.float64)  # [sum of batch losses, batches]
        try:
            for batch in loader:
                out = objective(**self._prepare_inputs(batch))
                totals.add(out)
                loss += torch.tensor([float(out["loss"]), 1.0], dtype=torch.float64)
        finally:
            objective.train(was_training)
        sums = self.accelerator.reduce(torch.cat([loss, totals.sums]).to(self.args.device), reduction="sum").cpu()
        metrics = {"loss": _div(sums[0], sums[1]), **totals.summary(sums[2:])}
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log(metrics)
        return metrics

    def adapter_model(self) -> MemAdapterForCausalLM:
        return self.accelerator.unwrap_model(self.model).model

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.adapter_model().save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        with open(os.path.join(output_dir, "training_args.json"), "w") as fh:
            fh.write(self.args.to_json_string())  # JSON, not the pickled training_args.bin
        with open(os.path.join(output_dir, "loss_weights.json"), "w") as fh:
            json.dump(asdict(self.accelerator.unwrap_model(self.model).weights), fh, indent=2)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        target = (model or self.model)
        target = self.accelerator.unwrap_model(target).model
        target.load_adapter_state_dict(hub.load_adapter_weights(resume_from_checkpoint))
