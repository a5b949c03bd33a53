"""The read path of MemAdapterForCausalLM: a batch of questions -> one :class:`Selection`.

Three stages, each in its own module:

1. candidates (:mod:`.read_candidates`): per question, the usable slots of its memory row, the
   events grounded in the chunks retrieved for it and, when the adapter has an answer pointer,
   its answers in their best sentences (:mod:`.read_answers`);
2. scoring (:mod:`.read_scorer`): the learned :class:`~memadapter.modeling.read_scorer.ReadScorer`
   scores every entry of the batch in one call and the best one is picked; versions are resolved
   here, from the features that say whether a later or an earlier entry has a matching key (an
   explicit stage that moved the pick to its newest version, as the write path would have
   overwritten it, lost on three of six validation halves and was removed: docs/RESULTS.md);
3. injection (:mod:`.read_injection`): a slot (with up to ``top_k - 1`` more), one grounded event,
   or, for an empty pool, the retrieved chunks' summaries.
"""

from __future__ import annotations

import torch

from memadapter.request_memory import RequestMemory

from .read_answers import AnswersMixin
from .read_candidates import CandidatesMixin, QuestionPool
from .read_injection import WITHDRAWN, InjectionMixin
from .read_scorer import score_pools
from .selection import Selection, stack_selection

__all__ = ["MemoryReaderMixin", "QuestionPool", "WITHDRAWN"]


class MemoryReaderMixin(CandidatesMixin, AnswersMixin, InjectionMixin):
    """``select`` and its stages, mixed into :class:`MemAdapterForCausalLM`; it uses the model's
    config, query_head, grounding, read_scorer, tokenizer and hidden-state helpers (``_hidden``,
    ``_mean``, ``_decode``, ``_tok``, ``_right_pad``).

    Example:
        >>> from memadapter.modeling import MemAdapterForCausalLM
        >>> issubclass(MemAdapterForCausalLM, MemoryReaderMixin)
        True
    """

    @torch.no_grad()
    def select(self, memory: RequestMemory, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Selection:
        """Build each question's pool, score every entry of the batch in one scorer call and
        gather what each row injects."""
        pools = self.read_pools(memory, input_ids, attention_mask)
        scores, valid = self.score_pools(pools)  # [B, N] each
        rows = []
        for b, qp in enumerate(pools):
            if not len(qp.pool):
                rows.append(self._chunk_row(memory, b, qp.chunks))
                continue
            pick = int(scores[b].masked_fill(~valid[b], float("-inf")).argmax())
            if pick >= len(qp.slots):
                rows.append(self._event_row(qp.events[pick - len(qp.slots)]))
                continue
            rest = sorted(range(len(qp.slots)), key=lambda i: -float(scores[b, i]))
            idx = [qp.slots[pick]] + [qp.slots[i] for i in rest if i != pick][:self.config.top_k - 1]
            self._credit_usage(memory, b, idx)
            rows.append(self._slot_row(memory, b, idx))
        return stack_selection(rows, self.config.value_dim, self.config.value_tokens)

    def score_pools(self, pools: list[QuestionPool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every entry of every pool scored by the model's scorer in one call: (scores [B, N], valid [B, N])."""
        return score_pools(self.read_scorer, [(qp.question, qp.pool) for qp in pools])
