"""One evaluation sample, the prompt every method builds from it, and the essay haystack that
RULER-style tasks hide their facts in, fitted to a length in the backbone's tokens.

A sample's ``length`` bounds the whole prompt: chat template, instruction, context, question,
answer prefix and the tokens to generate. Facts go between haystack sentences at depths given in
percent of the sentences (RULER: ``int(len(sentences) * depth / 100)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from memadapter.errors import ConfigError

from .text import count_tokens, fit_words, load_essays, split_sentences

__all__ = ["Sample", "user_text", "prompt_ids", "EssayHaystack", "insert_at_depths", "RULER_DEPTHS"]

# RULER's depths: 40 evenly spaced percentages 0..100 (np.linspace(0, 100, 40), rounded).
RULER_DEPTHS: tuple[int, ...] = tuple(int(round(100 * i / 39)) for i in range(40))


@dataclass
class Sample:
    """A long context, the question asked about it, and what counts as right.

    ``query`` is the question alone (what retrieval and memory read); ``question`` is the line the
    prompt prints after the context; ``stale_values`` are answers that were true once (an
    overwritten value) or belong to a look-alike key: a prediction holding one counts as stale.

    Example:
        >>> s = Sample("t/64/0", "t", 64, "The sky is blue.", "Read this.", "Question: what color is the sky?",
        ...            "what color is the sky", " Answer:", ["blue"], "string_match_part")
        >>> user_text(s, s.context)
        'Read this.\\nThe sky is blue.\\nQuestion: what color is the sky?'
    """

    id: str
    task: str
    length: int
    context: str
    instruction: str
    question: str
    query: str
    answer_prefix: str
    references: list[str]
    metric: str  # "string_match_all" | "string_match_part"
    max_new_tokens: int = 32
    stale_values: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def user_text(sample: Sample, context: Optional[str]) -> str:
    """The user turn: instruction, the (method's) context, the question."""
    return "\n".join(p for p in (sample.instruction, context, sample.question) if p)


def prompt_ids(tokenizer: Any, user: str, answer_prefix: str) -> list[int]:
    """The backbone's chat template around ``user``, the assistant turn opened with the answer prefix
    (RULER appends it after the prompt); a tokenizer without a template gets the plain text."""
    prefix = answer_prefix.strip()
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                             tokenize=False) + prefix
    else:
        text = user + ("\n" + prefix if prefix else "")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def context_budget(tokenizer: Any, length: int, instruction: str, question: str, answer_prefix: str,
                   max_new_tokens: int) -> int:
    """Tokens left for the context once the prompt around it and the answer are counted
    (+2 for the newlines that join the context to the instruction and question)."""
    frame = len(prompt_ids(tokenizer, "\n".join(p for p in (instruction, question) if p), answer_prefix))
    budget = length - frame - max_new_tokens - 2
    if budget <= 0:
        raise ConfigError(f"lengths: {length} tokens leave no room for a context (the prompt alone is {frame})")
    return budget


def insert_at_depths(sentences: Sequence[str], inserts: Sequence[str], depths: Sequence[int]) -> str:
    """Put ``inserts[i]`` before sentence ``int(len(sentences) * sorted(depths)[i] / 100)``: the
    inserts keep their order, the depths are sorted (as RULER places its shuffled needles)."""
    if len(inserts) != len(depths):
        raise ConfigError(f"depths: {len(depths)} depths for {len(inserts)} inserts")
    cuts = [int(len(sentences) * d / 100) for d in sorted(depths)]
    parts, last = [], 0
    for cut, text in zip(cuts, inserts):
        parts.extend(sentences[last:cut])
        parts.append(text)
        last = cut
    parts.extend(sentences[last:])
    return " ".join(parts)


class EssayHaystack:
    """The first ``n`` essay words, split into sentences, with ``n`` as large as a token budget allows.

    RULER uses the same haystack prefix for every sample of a length; so do we, and cache it.

    Example:
        >>> from memadapter.evaluation.samples import EssayHaystack
        >>> hay = EssayHaystack(tokenizer, words="One two. Three four.".split())    # doctest: +SKIP
        >>> hay.sentences(3)                                                           # doctest: +SKIP
        ['One two.']
    """

    def __init__(self, tokenizer: Any, words: Optional[Sequence[str]] = None):
        self.tokenizer = tokenizer
        self.words = tuple(words) if words is not None else load_essays()
        self._cache: dict[int, list[str]] = {}

    def sentences(self, budget: int) -> list[str]:
        """Sentences of the longest word prefix whose text fits in ``budget`` tokens."""
        if budget not in self._cache:
            # Joined by spaces, every word is at least one token: no more than ``budget`` words fit.
            n = fit_words(self.words, budget, lambda k: count_tokens(self.tokenizer, " ".join(self.words[:k])),
                          most=budget)
            self._cache[budget] = split_sentences(" ".join(self.words[:n]))
        return self._cache[budget]

    def context(self, budget: int, inserts: Sequence[str], depths: Sequence[int]) -> str:
        """The haystack with ``inserts`` at ``depths``, at most ``budget`` tokens: the room the inserts
        take is measured, then trailing haystack sentences go until the whole fits."""
        room = budget - count_tokens(self.tokenizer, " ".join(inserts)) - len(inserts)
        sentences = self.sentences(max(1, room))
        keep = len(sentences)
        while keep > 0:
            text = insert_at_depths(sentences[:keep], inserts, depths)
            over = count_tokens(self.tokenizer, text) - budget
            if over <= 0:
                return text
            keep -= max(1, over // 16)  # sentences run ~20+ tokens: a cut of over/16 rarely overshoots twice
        raise ConfigError(f"lengths: could not fit the haystack into {budget} tokens")
