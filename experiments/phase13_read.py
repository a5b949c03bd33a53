"""Phase 13's read: a trained adapter writes a sample's events into slot memory and answers its
question through the hybrid route (slot when the key matches, else the sparse fallback), with the
thresholds :func:`calibrate` sets on a validation split. Inference reads features and texts only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from memadapter.bm25 import query_coverage
from memadapter.chunk_index import ChunkIndex
from memadapter.modeling.selection import slot_versions
from memadapter.router import Router
from memadapter.slots import EventType, SlotMemory

from .phase13_backbones import HiddenCache
from .phase13_data import MAX_KEYS, Sample
from .phase13_model import TEMP, Feats, Phase13Adapter, Targets, featurize

NUM_SLOTS = 32
TOP_SPARSE = 16
TAIL = 64
ROWS = ("full_hidden", "sparse_top16", "memory", "tail64", "hybrid")


# ----------------------------------------------------------------------------- inference
@dataclass
class Thresholds:
    """replace: SlotMemory match threshold (same-key replacement); route: Router branch threshold;
    lexical: weight of the question's word coverage (:func:`query_coverage`: the IDF share of its
    words that an event's sentence holds, IDF over the stream) added to the key cosine wherever a
    question is matched (slots, routing, the fallback). 0 reads keys only. Learned keys are weakest
    on names never seen in training, and the words a question shares with a sentence are exact
    evidence for them. lexical_idf "train" weighs words by their IDF over the adapter's training
    sentences (:func:`background_idf`), so a word of the sentence templates ("lives") weighs little
    and a name never trained on weighs most; "stream" uses IDF over the stream itself.
    version_margin / version_cosine: with a margin, a memory read takes the latest of the best
    slot's versions (``selection.slot_versions``): versions of one fact that never merged into one
    slot score about equally, and the stream says which is current. fallback_versions: the
    fallback, too, reads the latest version of its best event that the writer would write.
    write: an event is written when its p_write reaches this; on unseen sentence structures the
    writer's scores shrink, so :func:`calibrate` can set it from the validation split."""

    replace: float
    route: float
    lexical: float = 0.0
    write: float = 0.5  # SlotMemory write threshold on the writer's p_write (calibrated with write_false)
    lexical_idf: str = "stream"  # coverage word weights: IDF over the stream, or "train": over the training sentences
    version_margin: Optional[float] = None  # read the latest of the best slot's versions (selection.slot_versions)
    version_cosine: float = 0.5  # ... slots within the margin whose key cosine with the best reaches this
    fallback_versions: bool = False  # the fallback, too, reads the latest written version of its best event


# Oracle slot keys are one-hot key ids: cosine is 1 for equal ids and 0 otherwise, so 0.5 is exact
# integer equality for both replacement and arbitration, as the paper's protocol prescribes.
ORACLE_THRESHOLDS = Thresholds(0.5, 0.5)


def memory_keys(ad: Phase13Adapter, f: Feats, keys: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot keys [B, N, dm] and slot query [B, dm]: one-hot key ids (oracle) or learned keys."""
    if ad.protocol == "oracle":
        return F.one_hot(f.event_key_ids, MAX_KEYS).float(), F.one_hot(f.query_key_ids, MAX_KEYS).float()
    return keys, q


@dataclass
class Texts:
    """The sentences a learned read matches words against: events [B][N] and questions [B]."""

    events: list[list[str]]
    questions: list[str]
    idf: Optional[Callable[[str], float]] = None  # word weights (None: IDF over each stream)

    def coverage(self) -> torch.Tensor:
        """[B, N] :func:`query_coverage` of each question by each event sentence of its stream."""
        return torch.tensor([query_coverage(q, ev, self.idf) for q, ev in zip(self.questions, self.events)],
                            dtype=torch.float32)


def _slot_bias(mem: SlotMemory, cov: torch.Tensor, lex: float, offset: int) -> torch.Tensor:
    """[B, M] ``lex`` x the coverage ``cov`` [B, N] of the event each slot came from (0 on a free slot)."""
    slot_event = mem.chunk_id - offset  # [B, M], < 0 on a free slot
    return lex * cov.gather(1, slot_event.clamp(min=0)).masked_fill(slot_event < 0, 0.0)


def _memory_pointer(mem: SlotMemory, mq: torch.Tensor, bias: Optional[torch.Tensor], thr: Thresholds) -> torch.Tensor:
    """[B] the event the memory answers with (-1: no slot clears ``thr.route``): the best-matching
    slot, or with the version rule the latest of its versions. No side effects (no usage credit)."""
    best, slot = mem.match(mq, bias)  # [B, 1]
    if thr.version_margin is not None:
        sims = torch.einsum("bd,bmd->bm", mq, mem.keys) + (0.0 if bias is None else bias)
        _, newest = slot_versions(sims.masked_fill(~mem.occupied, -math.inf), mem.chunk_id, mem.keys,
                                  thr.version_margin, thr.version_cosine)
        slot = torch.where(slot[:, 0] >= 0, newest, slot[:, 0])[:, None]  # [B, 1]
    return torch.where((best[:, 0] >= thr.route) & (slot[:, 0] >= 0),
                       mem.chunk_id.gather(1, slot.clamp(min=0))[:, 0], torch.full((mq.shape[0],), -1))


def _latest_written(cand: torch.Tensor, sim: torch.Tensor, keys: torch.Tensor, p: torch.Tensor, best: int,
                    thr: Thresholds) -> int:
    """Index into ``cand`` [k] (fallback candidates, event ids in any order) of the latest event
    (largest id) among ``best`` and its versions that the writer would write (``p`` [N] >=
    ``thr.write``); versions score within ``thr.version_margin`` of ``sim[best]`` (``sim`` [k]) and
    have key cosine >= ``thr.version_cosine`` with it (``keys`` [N, dk]). ``best`` itself when
    none of them is written."""
    close = (sim >= sim[best] - thr.version_margin) & (keys[cand] @ keys[cand[best]] >= thr.version_cosine)
    written = close & (p[cand] >= thr.write)
    if not bool(written.any()):
        return best
    return int(torch.where(written, cand, torch.full_like(cand, -1)).argmax())


def _hybrid(mk: torch.Tensor, mq: torch.Tensor, keys: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
            thr: Thresholds, offset: int, readout: torch.Tensor,
            texts: Optional[Texts] = None) -> dict[str, torch.Tensor]:
    """Write events into a 32-slot memory, then route: authoritative slot if the key matches, else
    the sparse fallback: the top-16 events by key similarity, ranked by that similarity at the
    training temperature plus the learned readout (``readout`` [B, N] logits), so a rumour or an
    older version of the same key can lose to the update. With ``texts`` and ``thr.lexical`` > 0,
    the question's word coverage is added to the key cosine of slots and fallback events alike.
    Returns hybrid / memory-alone pointers [B] (-1: none), writes, branch."""
    B, N, dk = keys.shape
    lex = thr.lexical if texts is not None else 0.0
    mem = SlotMemory(NUM_SLOTS, mk.shape[-1], dk, batch_size=B, match_threshold=thr.replace, write_threshold=thr.write)
    ids = torch.arange(N).expand(B, N) + offset  # provenance: the event index each slot came from
    wr = mem.write(mk, keys, p.clamp(0.0, 1.0), event=torch.full((B, N), int(EventType.UPDATE)), chunk_id=ids)
    cov = texts.coverage() if lex > 0 else None  # [B, N]
    bias = _slot_bias(mem, cov, lex, offset) if lex > 0 else None  # [B, M]
    alone = _memory_pointer(mem, mq, bias, thr)  # before the read: memory-alone is independent of routing
    indexes = []
    for b in range(B):
        # hybrid = w * cosine + (1 - w) * BM25 ranks like cosine + lex * BM25
        idx = ChunkIndex(dk, dense_weight=1.0 / (1.0 + lex))
        idx.add(keys[b], texts=texts.events[b] if lex > 0 else None)
        indexes.append(idx)
    res = Router(thr.route, top_k_slots=1, top_k_chunks=TOP_SPARSE).route(
        mem, indexes, mq, query_text=texts.questions if lex > 0 else None, chunk_query=q, slot_bias=bias)
    hybrid = torch.full((B,), -1)
    for b, branch in enumerate(res.branch):
        if branch == "memory":  # the read slot, or with the version rule the latest version of it
            hybrid[b] = alone[b] if thr.version_margin is not None else \
                mem.chunk_id[b, int(res.memory.indices[b, 0, 0])]
            continue
        found = res.chunks[b]
        ok = found.ids[0] >= 0
        cand = found.ids[0][ok]  # the top-16 events by key similarity (and BM25 with ``lex``)
        if len(cand):
            sim = found.dense[0][ok] + (lex * cov[b, cand] if lex > 0 else 0.0)
            # Key similarity at the training temperature plus the readout logit: exact oracle keys
            # (cosine 1 vs 0) keep the choice within the query's key; learned keys let the readout
            # prefer the signalled update over a same-looking rumour or older version.
            best = int((sim / TEMP + readout[b, cand]).argmax())
            if thr.fallback_versions and thr.version_margin is not None:
                best = _latest_written(cand, sim, keys[b], p[b], best, thr)
            hybrid[b] = int(cand[best]) + offset
    return {"hybrid": hybrid, "memory": alone, "writes": wr.num_writes,
            "memory_branch": torch.tensor([br == "memory" for br in res.branch])}


def sparse_top(se: torch.Tensor, sq: torch.Tensor, k: int = TOP_SPARSE) -> torch.Tensor:
    """[B] best event among the top-k cosine candidates of each sample (a ChunkIndex per sample)."""
    out = []
    for b in range(se.shape[0]):
        idx = ChunkIndex(se.shape[-1], dense_weight=1.0)
        idx.add(se[b])
        out.append(int(idx.search(sq[b], top_k=k).ids[0, 0]))
    return torch.tensor(out)


@torch.no_grad()
def predict(ad: Phase13Adapter, f: Feats, thr: Thresholds) -> dict[str, torch.Tensor]:
    """Pointers [B] for every row from features alone (no targets, labels or values are passed)."""
    p, keys, q = ad.p_write(f), ad.event_keys(f), ad.query_key(f)
    mk, mq = memory_keys(ad, f, keys, q)
    readout = ad.readout_scores(f)  # [B, N]
    idf = ad.background if thr.lexical_idf == "train" else None
    texts = Texts(f.event_text, f.query_text, idf) if f.event_text is not None else None
    full = _hybrid(mk, mq, keys, q, p, thr, 0, readout, texts)
    s = max(0, keys.shape[1] - TAIL)
    tail_texts = None if texts is None else Texts([e[s:] for e in texts.events], texts.questions, idf)
    tail = _hybrid(mk[:, s:], mq, keys[:, s:], q, p[:, s:], thr, s, readout[:, s:], tail_texts)
    se, sq = ad.sparse_vectors(f)
    return {"full_hidden": readout.argmax(-1), "sparse_top16": sparse_top(se, sq),
            "memory": full["memory"], "tail64": tail["hybrid"], "hybrid": full["hybrid"],
            "writes": full["writes"], "memory_branch": full["memory_branch"]}


@torch.no_grad()
def calibrate(ad: Phase13Adapter, groups: dict[str, list[Sample]], cache: HiddenCache,
              max_false_match: float = 0.01, lexical: float = 0.0,
              write_false: Optional[float] = None, lexical_idf: str = "stream") -> Thresholds:
    """Learned thresholds from a validation split (labels are calibration targets there).

    replace: cosine between signalled events of the same key (positive) vs other keys (negative);
    route: query vs the latest signalled event of its key (positive) vs the best signalled event
    of another key in the same stream (negative: look-alike, other attribute, other entity), as
    key cosine plus ``lexical`` times the question's word coverage (as :func:`predict` reads it);
    write (with ``write_false``, else 0.5): p_write of signalled (positive) vs unsignalled events
    (negative), at most ``write_false`` of them written."""
    if ad.protocol == "oracle":
        return ORACLE_THRESHOLDS
    pr, nr, pq, nq, pw, nw = [], [], [], [], [], []
    idf = ad.background if lexical_idf == "train" else None
    for samples in groups.values():
        f, t = featurize(samples, cache, "learned"), Targets.of(samples)
        keys, q, p = ad.event_keys(f), ad.query_key(f), ad.p_write(f)
        pw.append(p[t.write > 0]), nw.append(p[t.write == 0])
        for b in range(len(samples)):
            w, ids = t.write[b] > 0, t.key_ids[b]
            k, kid = keys[b][w], ids[w]
            sims, same = k @ k.T, kid[:, None] == kid[None, :]
            upper = torch.ones_like(same).triu(1)
            pr.append(sims[same & upper]), nr.append(sims[~same & upper])
            qs, qkey = keys[b] @ q[b], ids[t.target[b]]
            if lexical > 0:
                qs = qs + lexical * torch.tensor(query_coverage(samples[b].query, samples[b].events, idf))
            mine = (w & (ids == qkey)).nonzero()
            if len(mine):
                pq.append(qs[mine[-1]])
            other = w & (ids != qkey)
            if bool(other.any()):
                nq.append(qs[other].max()[None])
    write = 0.5 if write_false is None else \
        min(1.0, Router.calibrate(torch.cat(pw), torch.cat(nw), max_false_match=write_false))
    return Thresholds(Router.calibrate(torch.cat(pr), torch.cat(nr), max_false_match=max_false_match),
                      Router.calibrate(torch.cat(pq), torch.cat(nq), max_false_match=max_false_match), lexical, write,
                      lexical_idf)

