"""MSA-like chunk-sparse attention: route by chunk summaries, attend inside the top chunks.

The stream is cut into ``chunk`` -token chunks. Each chunk keeps a summary: its mean embedding
(dense) and its bag of token ids (lexical). A query scores chunks like ``ChunkIndex`` does,

    score = dense_weight * cos(q, mean) + (1 - dense_weight) * tf(query token) / max_chunks tf

(for a one-token query every idf is the same constant, so BM25 ranks chunks of equal length in
the order of tf), keeps the ``top_k`` chunks and runs softmax attention over the token pairs
inside them. tf is read by comparing stored ids with the query id, which returns exactly what
an inverted-index lookup would. MSA learns its routing keys; this proxy does not.
"""

from __future__ import annotations

import torch

from .._validate import check_positive_int
from ..errors import ConfigError
from ..tasks.vocab import Codebook
from .base import Method, TokenStore, attend_ids, decode_or_invalid


class ChunkStore:
    """Token ids plus per-chunk dense summaries for ``batch_size`` streams."""

    def __init__(self, codebook: Codebook, batch_size: int, chunk: int, dense_weight: float) -> None:
        self.cb, self.chunk, self.dense_weight = codebook, chunk, dense_weight
        self.tokens = TokenStore(batch_size)
        self._sums = torch.zeros(batch_size, 16, codebook.dim)  # [B, chunks, d] embedding sums, grown by doubling

    @property
    def num_chunks(self) -> int:
        return -(-len(self.tokens) // self.chunk)

    def append(self, tokens: torch.Tensor) -> None:
        start = len(self.tokens)
        self.tokens.append(tokens)
        if self.num_chunks > self._sums.shape[1]:
            grown = torch.zeros(self._sums.shape[0], max(self.num_chunks, 2 * self._sums.shape[1]), self.cb.dim)
            grown[:, : self._sums.shape[1]] = self._sums
            self._sums = grown
        chunk_of = (start + torch.arange(tokens.shape[1])) // self.chunk  # [C] chunk id of each new token
        self._sums.index_add_(1, chunk_of, self.cb.embed(tokens))  # [B, C, d] summed into [B, chunks, d]

    def scores(self, query_ids: torch.Tensor) -> torch.Tensor:
        """Chunk scores [B, C] for one query id per stream ([B])."""
        ids = self.tokens.ids
        n, c = ids.shape[1], self.num_chunks
        means = torch.nn.functional.normalize(self._sums[:, :c], dim=-1)  # [B, C, d]
        dense = torch.einsum("bcd,bd->bc", means, self.cb.embed(query_ids))
        hits = (ids == query_ids[:, None].to(ids.dtype)).float()  # [B, N]
        tf = torch.nn.functional.pad(hits, (0, c * self.chunk - n)).view(-1, c, self.chunk).sum(-1)  # [B, C]
        lexical = tf / tf.amax(-1, keepdim=True).clamp_min(1.0)
        return self.dense_weight * dense + (1 - self.dense_weight) * lexical

    def scores_reference(self, query_ids: torch.Tensor) -> torch.Tensor:
        """Plain-loop oracle of ``scores``: re-reads every chunk's tokens."""
        ids = self.tokens.ids.tolist()
        out = torch.zeros(len(ids), self.num_chunks)
        for b, row in enumerate(ids):
            q = int(query_ids[b])
            chunks = [row[s : s + self.chunk] for s in range(0, len(row), self.chunk)]
            tf = [sum(1 for t in c if t == q) for c in chunks]
            for c, toks in enumerate(chunks):
                mean = self.cb.embed(torch.tensor(toks)).sum(0)
                cos = float(mean @ self.cb.embed(torch.tensor(q))) / max(float(mean.norm()), 1e-12)
                out[b, c] = self.dense_weight * cos + (1 - self.dense_weight) * tf[c] / max(max(tf), 1)
        return out

    def read(self, query_ids: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention inside the ``top_k`` best chunks: query ids [B] -> (vectors [B, d], chunks used [B])."""
        ids = self.tokens.ids.long()
        n = ids.shape[1]
        keys, vals = ids[:, :-1], ids[:, 1:]  # [B, N-1] pairs; a pair belongs to its key's chunk
        k = min(top_k, self.num_chunks)
        chunks = self.scores(query_ids).topk(k, dim=-1).indices  # [B, k]
        pos = (chunks.unsqueeze(-1) * self.chunk + torch.arange(self.chunk)).flatten(1)  # [B, k*chunk]
        ok = pos < n - 1
        pos = pos.clamp(max=max(n - 2, 0))
        out = attend_ids(self.cb, keys.gather(1, pos), vals.gather(1, pos),
                         self.cb.embed(query_ids)[:, None], ok)  # [B, 1, d]
        return out[:, 0], torch.full((ids.shape[0],), k, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.tokens)


class ChunkSparse(Method):
    """Chunk-summary routing then attention inside the top chunks (MSA-like proxy).

    Example:
        >>> from memadapter.tasks.vocab import Codebook
        >>> cb = Codebook(dim=16, num_keys=8, num_values=8, num_filler=16)
        >>> m = ChunkSparse(cb, chunk=4, top_k=1); m.reset(1)
        >>> m.observe(torch.tensor([[cb.filler_base] * 5 + [cb.key(2), cb.value(1), cb.filler_base]]))
        >>> pred, active = m.answer(torch.tensor([[cb.key(2)]]))
        >>> int(pred[0, 0]) == cb.value(1), int(active[0, 0])
        (True, 1)
    """

    name = "chunk_sparse"
    unit = "chunks"

    def __init__(self, codebook: Codebook, chunk: int = 64, top_k: int = 4, dense_weight: float = 0.5) -> None:
        super().__init__(codebook)
        self.chunk = check_positive_int("chunk", chunk)
        self.top_k = check_positive_int("top_k", top_k)
        if not 0.0 <= dense_weight <= 1.0:
            raise ConfigError(f"dense_weight: must lie in [0, 1], got {dense_weight}")
        self.dense_weight = dense_weight

    def _reset(self) -> None:
        self.store = ChunkStore(self.codebook, self.batch_size, self.chunk, self.dense_weight)

    def _observe(self, tokens: torch.Tensor) -> None:
        self.store.append(tokens)

    def _answer(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, q = queries.shape
        if len(self.store) < 2:
            return torch.full((b, q), -1, dtype=torch.long), torch.zeros(b, q, dtype=torch.long)
        reads = [self.store.read(queries[:, j], self.top_k) for j in range(q)]
        out = torch.stack([r[0] for r in reads], 1)  # [B, Q, d]
        active = torch.stack([r[1] for r in reads], 1)
        return decode_or_invalid(self.codebook, out, torch.ones(b, q, dtype=torch.bool)), active
