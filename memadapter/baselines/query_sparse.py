"""Query-sparse attention (NSA / DeepSeek-sparse-attention style proxy).

Per query, every stored token is scored by the query-key logit (DSA's indexer role), a block's
score is the max inside it (NSA's block selection), the ``top_k`` blocks are kept and softmax
attention runs over the token pairs inside them only. The scoring pass touches every token;
the active set is ``top_k`` blocks of ``block`` tokens. Not a faithful kernel: no learned
indexer, no compressed or sliding branch.
"""

from __future__ import annotations

import torch

from .._validate import check_positive_int
from ..tasks.vocab import Codebook
from .base import Method, TokenStore, attend_ids, attend_reference, decode_or_invalid


def select_blocks(token_scores: torch.Tensor, block: int, top_k: int) -> torch.Tensor:
    """Top-``top_k`` block ids by max token score: [B, N] -> [B, k] (k = min(top_k, blocks))."""
    b, n = token_scores.shape
    nb = -(-n // block)
    padded = torch.full((b, nb * block), float("-inf")).index_copy(1, torch.arange(n), token_scores)
    block_max = padded.view(b, nb, block).amax(-1)  # [B, nb]
    return block_max.topk(min(top_k, nb), dim=-1).indices


def select_blocks_reference(token_scores: torch.Tensor, block: int, top_k: int) -> torch.Tensor:
    """Plain-loop oracle of ``select_blocks`` (ties broken as topk does not matter in tests)."""
    out = []
    for row in token_scores.tolist():
        maxes = [max(row[s : s + block]) for s in range(0, len(row), block)]
        out.append(sorted(range(len(maxes)), key=lambda i: -maxes[i])[:top_k])
    return torch.tensor(out)


class QuerySparse(Method):
    """Top-k blocks per query by max key score, then attention inside them.

    Example:
        >>> from memadapter.tasks.vocab import Codebook
        >>> cb = Codebook(dim=16, num_keys=8, num_values=8, num_filler=16)
        >>> m = QuerySparse(cb, block=4, top_k=1); m.reset(1)
        >>> m.observe(torch.tensor([[cb.filler_base] * 6 + [cb.key(2), cb.value(1)]]))
        >>> pred, active = m.answer(torch.tensor([[cb.key(2)]]))
        >>> int(pred[0, 0]) == cb.value(1), int(active[0, 0])
        (True, 1)
    """

    name = "query_sparse"
    unit = "blocks"

    def __init__(self, codebook: Codebook, block: int = 64, top_k: int = 4) -> None:
        super().__init__(codebook)
        self.block = check_positive_int("block", block)
        self.top_k = check_positive_int("top_k", top_k)

    def _reset(self) -> None:
        self.store = TokenStore(self.batch_size)

    def _observe(self, tokens: torch.Tensor) -> None:
        self.store.append(tokens)

    def _gather(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per query: the key ids, value ids and validity of the pairs in its selected blocks."""
        ids = self.store.ids.long()
        keys, vals = ids[:, :-1], ids[:, 1:]  # [B, N]
        q_vecs = self.codebook.embed(queries)  # [B, Q, d]
        vocab_scores = q_vecs @ self.codebook.embeddings.T  # [B, Q, V]
        out_k, out_v, out_ok = [], [], []
        for j in range(queries.shape[1]):
            token_scores = vocab_scores[:, j].gather(1, keys)  # [B, N]
            blocks = select_blocks(token_scores, self.block, self.top_k)  # [B, k]
            pos = (blocks.unsqueeze(-1) * self.block + torch.arange(self.block)).flatten(1)  # [B, k*block]
            ok = pos < keys.shape[1]
            pos = pos.clamp(max=keys.shape[1] - 1)
            out_k.append(keys.gather(1, pos)), out_v.append(vals.gather(1, pos)), out_ok.append(ok)
        return torch.stack(out_k, 1), torch.stack(out_v, 1), torch.stack(out_ok, 1)  # [B, Q, k*block]

    def _answer(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, q = queries.shape
        if len(self.store) < 2:
            return torch.full((b, q), -1, dtype=torch.long), torch.zeros(b, q, dtype=torch.long)
        keys, vals, ok = self._gather(queries)
        q_vecs = self.codebook.embed(queries)
        out = torch.cat([attend_ids(self.codebook, keys[:, j], vals[:, j], q_vecs[:, j : j + 1], ok[:, j])
                         for j in range(q)], dim=1)  # [B, Q, d]
        active = torch.full((b, q), min(self.top_k, -(-(len(self.store) - 1) // self.block)), dtype=torch.long)
        return decode_or_invalid(self.codebook, out, torch.ones(b, q, dtype=torch.bool)), active

    def answer_reference(self, queries: torch.Tensor) -> torch.Tensor:
        """Plain-loop path: materialised attention inside the selected blocks -> [B, Q] ids."""
        keys, vals, ok = self._gather(queries.long())
        q_vecs = self.codebook.embed(queries.long())
        out = torch.cat([attend_reference(self.codebook, keys[:, j], vals[:, j], q_vecs[:, j : j + 1], ok[:, j])
                         for j in range(queries.shape[1])], dim=1)
        return self.codebook.decode(out)
