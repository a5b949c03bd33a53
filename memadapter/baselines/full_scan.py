"""Full scan: softmax attention of the query over every (token, next token) pair of the stream.

Content-only attention (no positional bias), exact: logits come from the codebook (see
``base.attend_ids``), so only the token ids are stored (int32, 8 MB per 2M-token stream). The
active set is the whole stream, T tokens, which is what bounded activation rules out.
"""

from __future__ import annotations

import torch

from .base import Method, TokenStore, attend_ids, decode_or_invalid


class FullScan(Method):
    """Attention over the entire stream; active set = every stored token pair.

    Example:
        >>> from memadapter.tasks.vocab import Codebook
        >>> cb = Codebook(dim=16, num_keys=8, num_values=8, num_filler=16)
        >>> m = FullScan(cb); m.reset(1); m.observe(torch.tensor([[cb.key(0), cb.value(5)]]))
        >>> int(m.answer(torch.tensor([[cb.key(0)]]))[0][0, 0]) == cb.value(5)
        True
    """

    name = "full_scan"
    unit = "tokens"

    def _reset(self) -> None:
        self.store = TokenStore(self.batch_size)

    def _observe(self, tokens: torch.Tensor) -> None:
        self.store.append(tokens)

    def _window(self, ids: torch.Tensor) -> torch.Tensor:
        """The ids the query may attend to (subclasses narrow this)."""
        return ids

    def _answer(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self._window(self.store.ids).long()  # [B, N]
        b, q = queries.shape
        n = max(ids.shape[1] - 1, 0)
        if n == 0:
            return torch.full((b, q), -1, dtype=torch.long), torch.zeros(b, q, dtype=torch.long)
        out = attend_ids(self.codebook, ids[:, :-1], ids[:, 1:], self.codebook.embed(queries))  # [B, Q, d]
        ok = torch.ones(b, q, dtype=torch.bool)
        return decode_or_invalid(self.codebook, out, ok), torch.full((b, q), n, dtype=torch.long)
