"""Memory + sparse hybrid: slot memory when a slot's key matches the query, chunk retrieval otherwise.

Writes: the same marker-driven writer as ``memory.py``; every token also goes into the chunk
store of ``chunk_sparse.py``. Reads: the branch rule of ``memadapter.router.Router`` -- memory
precedence when the best slot cosine reaches ``match_threshold`` (the slot memory's own
same-key threshold), else fall back to the top chunks and attend inside them. The branch comes
from the match score alone; the method never sees the task name or labels.

The fallback uses ``ChunkStore`` rather than ``ChunkIndex``: ChunkIndex's BM25 path tokenises
text through bm25s, about 7 s per 2M-token stream here, which the stress budget cannot pay 50
times over; ChunkStore scores the same tf of the query token (see ``chunk_sparse.py``).
"""

from __future__ import annotations

import torch

from .._validate import check_positive_int
from ..tasks.vocab import Codebook
from .chunk_sparse import ChunkStore
from .memory import ExplicitMemory


class Hybrid(ExplicitMemory):
    """Explicit memory with a sparse chunk fallback, routed by the slot match score.

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
                 chunk: int = 64, top_k_chunks: int = 4, dense_weight: float = 0.5) -> None:
        super().__init__(codebook, num_slots=num_slots, match_threshold=match_threshold)
        self.chunk = check_positive_int("chunk", chunk)
        self.top_k_chunks = check_positive_int("top_k_chunks", top_k_chunks)
        self.dense_weight = dense_weight

    def _reset(self) -> None:
        super()._reset()
        self.store = ChunkStore(self.codebook, self.batch_size, self.chunk, self.dense_weight)

    def _observe(self, tokens: torch.Tensor) -> None:
        super()._observe(tokens)
        self.store.append(tokens)

    def _answer(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred, match, active = self._read(queries)
        use_memory = match >= self.match_threshold  # [B, Q]
        for j in range(queries.shape[1]):
            fallback = ~use_memory[:, j]
            if bool(fallback.any()) and len(self.store) >= 2:
                vec, chunks = self.store.read(queries[:, j], self.top_k_chunks)  # [B, d], [B]
                pred[:, j] = torch.where(fallback, self.codebook.decode(vec), pred[:, j])
                active[:, j] = torch.where(fallback, chunks, active[:, j])
        return pred, active
