"""Memory + sparse hybrid on the product components: SlotMemory, ChunkIndex and Router.

Writes: the marker-driven writer of ``memory.py`` fills a ``SlotMemory``; every request also
keeps its token ids (int32, ``TokenStore``) and one ``ChunkIndex`` fed each ``chunk``-token chunk
with its mean embedding as the dense summary and its token ids as the lexical entry (``terms=``,
BM25 over ids). Complete chunks are handed to the index in groups of ``index_batch`` (fewer,
larger adds); the unfinished last chunk is closed when a question arrives. Reads:
``Router.route`` per question -- the memory branch when the best slot cosine reaches
``match_threshold``, else ``ChunkIndex.search`` with the query token as ``query_terms`` -- and the
fallback answer is the pair attention of ``base.attend_ids`` over the tokens of the selected
chunks only. The active set is the Router's. Nothing here sees the task name or labels.
"""

from __future__ import annotations

import torch

from .._validate import check_positive_int
from ..chunk_index import ChunkIndex
from ..errors import ConfigError
from ..router import FALLBACK, RouteResult, Router
from ..tasks.vocab import Codebook
from .base import TokenStore, attend_ids, attend_reference, decode_or_invalid
from .memory import ExplicitMemory


class Hybrid(ExplicitMemory):
    """Explicit memory with a ChunkIndex fallback, routed per question by ``Router``.

    Example:
        >>> from memadapter.tasks.vocab import Codebook, WRITE
        >>> cb = Codebook(dim=16, num_keys=8, num_values=8, num_filler=16)
        >>> m = Hybrid(cb, num_slots=4, chunk=4); m.reset(1)
        >>> m.observe(torch.tensor([[WRITE, cb.key(1), cb.value(3), 0, cb.key(2), cb.value(5), 0, 0]]))
        >>> [int(m.answer(torch.tensor([[cb.key(k)]]))[0][0, 0]) - cb.value_base for k in (1, 2)]
        [3, 5]
    """

    name = "hybrid"
    unit = "slots|chunks"

    def __init__(self, codebook: Codebook, num_slots: int = 32, match_threshold: float = 0.8,
                 chunk: int = 512, top_k_chunks: int = 4, neighbours: int = 0,
                 dense_weight: float = 0.5, index_batch: int = 64) -> None:
        super().__init__(codebook, num_slots=num_slots, match_threshold=match_threshold)
        self.chunk = check_positive_int("chunk", chunk)
        self.index_batch = check_positive_int("index_batch", index_batch)
        if isinstance(dense_weight, bool) or not isinstance(dense_weight, (int, float)) \
                or not 0.0 <= dense_weight <= 1.0:
            raise ConfigError(f"dense_weight: must lie in [0, 1], got {dense_weight}")
        self.dense_weight = float(dense_weight)
        self.router = Router(match_threshold, top_k_slots=self.top_k, top_k_chunks=top_k_chunks,
                             neighbours=neighbours)

    def _reset(self) -> None:
        super()._reset()
        self.tokens = TokenStore(self.batch_size)
        self.indexes = [ChunkIndex(self.codebook.dim, dense_weight=self.dense_weight, chunk_tokens=self.chunk)
                        for _ in range(self.batch_size)]
        self._indexed = 0  # tokens [0, _indexed) are in the indexes

    def _observe(self, tokens: torch.Tensor) -> None:
        super()._observe(tokens)
        self.tokens.append(tokens)
        pending = len(self.tokens) - self._indexed
        if pending >= self.index_batch * self.chunk:
            self._index(self._indexed + pending // self.chunk * self.chunk)

    def _index(self, end: int) -> None:
        """Add tokens [_indexed, end) to every request's index as chunks of ``chunk`` tokens
        (the last one shorter when a question closes it early), ``index_batch`` chunks per add."""
        group = self.index_batch * self.chunk
        for lo in range(self._indexed, end, group):
            hi = min(end, lo + group)
            ids = self.tokens.ids[:, lo:hi].long()  # [B, L]
            bsz, width = ids.shape
            starts = torch.arange(lo, hi, self.chunk)  # [n]
            spans = torch.stack([starts, (starts + self.chunk).clamp(max=hi)], dim=1)  # [n, 2]
            # one bag per (request, chunk) over the flattened ids; never materialises [B, L, d]
            offsets = (torch.arange(bsz)[:, None] * width + (starts - lo)[None, :]).flatten()  # [B*n]
            means = torch.nn.functional.embedding_bag(ids.flatten(), self.codebook.embeddings, offsets,
                                                      mode="mean").view(bsz, len(starts), -1)  # [B, n, d]
            ids_np = ids.numpy()
            for b, index in enumerate(self.indexes):
                terms = [ids_np[b, s - lo : e - lo] for s, e in spans.tolist()]
                index.add(means[b], spans=spans, terms=terms)
        self._indexed = max(self._indexed, end)

    def _answer(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._index(len(self.tokens))  # close the unfinished chunk: a question may be about it
        b, q = queries.shape
        pred = torch.full((b, q), -1, dtype=torch.long)
        active = torch.zeros(b, q, dtype=torch.long)
        for j in range(q):
            key = queries[:, j]  # [B]
            qvec = self.codebook.embed(key)  # [B, d]
            route = self.router.route(self.memory, self.indexes, qvec, query_terms=key[:, None])
            pred[:, j] = self._fallback(route, qvec)
            if route.memory is not None:
                read = route.memory  # rows that did not take the memory branch are unused
                mem = decode_or_invalid(self.codebook, read.readout[:, 0], read.valid[:, 0].any(-1))
                pred[:, j] = torch.where(route.uses_memory, mem, pred[:, j])
            active[:, j] = route.active
        return pred, active

    def _pairs(self, route: RouteResult) -> list[list[int]]:
        """Per request: stream positions t of the (t, t+1) pairs inside its selected chunks
        (none for a memory-branch row). A pair belongs to the chunk of its key token."""
        n = len(self.tokens)
        out = []
        for b, res in enumerate(route.chunks):
            if route.branch[b] != FALLBACK or res is None:
                out.append([])
                continue
            spans = [self.indexes[b].span(c) for c in res.expanded[0]]
            out.append([t for s, e in spans for t in range(s, min(e, n - 1))])
        return out

    def _fallback(self, route: RouteResult, qvec: torch.Tensor) -> torch.Tensor:
        """Attention over the selected chunks' pairs, all fallback rows at once: [B] ids, -1 where none."""
        pos_lists = self._pairs(route)
        width = max(len(p) for p in pos_lists)
        if width == 0:  # every row took the memory branch, or nothing is stored yet
            return torch.full((len(pos_lists),), -1, dtype=torch.long)
        pos = torch.zeros(len(pos_lists), width, dtype=torch.long)  # [B, P] padded positions
        valid = torch.zeros(len(pos_lists), width, dtype=torch.bool)
        for b, p in enumerate(pos_lists):
            pos[b, : len(p)] = torch.as_tensor(p, dtype=torch.long)
            valid[b, : len(p)] = True
        ids, last = self.tokens.ids, max(len(self.tokens) - 1, 0)
        keys = ids.gather(1, pos).long()  # [B, P]
        vals = ids.gather(1, (pos + 1).clamp(max=last)).long()  # padding stays in range; masked anyway
        out = attend_ids(self.codebook, keys, vals, qvec[:, None], valid)[:, 0]  # [B, d]
        return decode_or_invalid(self.codebook, out, valid.any(1))

    def fallback_reference(self, route: RouteResult, qvec: torch.Tensor) -> torch.Tensor:
        """Plain-loop oracle of the fallback read: one materialised attention per request."""
        ids = self.tokens.ids.tolist()
        out = []
        for b, p in enumerate(self._pairs(route)):
            if not p:
                out.append(-1)
                continue
            keys = torch.tensor([[ids[b][t] for t in p]])
            vals = torch.tensor([[ids[b][t + 1] for t in p]])
            vec = attend_reference(self.codebook, keys, vals, qvec[b][None, None])[0, 0]
            out.append(int(self.codebook.decode(vec)))
        return torch.tensor(out, dtype=torch.long)
