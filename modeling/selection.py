"""What the reader hands the injector for a batch of questions (one ``Selection``), and the plain
text functions its pool features are made of (which key texts name the asked entity most exactly,
which carry a name of their own).

Each row holds up to K entries (slots, one grounded event, or chunk summaries when the pool is
empty); ``stack_selection`` pads the rows to one batch.

Example:
    >>> sel = stack_selection([SelectedRow(torch.ones(1, 4), ["alice city: paris"], [[7, 8]], "memory")], 4, 3)
    >>> sel.valid.tolist(), sel.value_ids.tolist(), sel.memory_text(0)
    ([[True]], [[[7, 8, -1]]], 'Memory: alice city: paris')
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from memadapter.bm25 import tokenize

_SENTENCE_END = re.compile(r"[.!?\n]")


@dataclass
class SelectedRow:
    """One question's entries: values [k, dv], their texts, their value token ids, the branch, and
    the key text of each entry that has one (slots and grounded events; not chunk summaries)."""

    values: torch.Tensor
    texts: list[str]
    value_ids: list[list[int]]
    branch: str
    key_texts: list[str] = field(default_factory=list)


@dataclass
class Selection:
    """What the router handed to the injector: values [B, K, dv], valid [B, K], texts per row,
    and (``config.value_tokens > 0``) each entry's value token ids [B, K, L], -1 where none."""

    values: torch.Tensor
    valid: torch.Tensor
    texts: list[list[str]]
    branch: list[str]
    value_ids: Optional[torch.Tensor] = None

    def memory_text(self, row: int) -> Optional[str]:
        """The row's selected texts as one prompt line ("Memory: a ; b"), None when there are none."""
        lines = [t for t in self.texts[row] if t]
        return "Memory: " + " ; ".join(lines) if lines else None


def stack_selection(rows: list[SelectedRow], value_dim: int, value_tokens: int) -> Selection:
    """Pad the rows to [B, K]; value ids to [B, K, value_tokens] when ``value_tokens > 0``."""
    K = max(1, max(r.values.shape[0] for r in rows))
    values = torch.zeros(len(rows), K, value_dim)
    valid = torch.zeros(len(rows), K, dtype=torch.bool)
    value_ids = torch.full((len(rows), K, value_tokens), -1, dtype=torch.long) if value_tokens > 0 else None
    for b, r in enumerate(rows):
        values[b, : r.values.shape[0]] = r.values.float()
        valid[b, : r.values.shape[0]] = True
        for k, ids in enumerate(r.value_ids if value_ids is not None else []):
            value_ids[b, k, : len(ids)] = torch.tensor(ids[:value_tokens], dtype=torch.long)
    return Selection(values, valid, [r.texts for r in rows], [r.branch for r in rows], value_ids)


def latest_version(scores: Sequence[float], order: Sequence[float], keys: torch.Tensor, margin: Optional[float],
                   min_cosine: float, eligible: Optional[Sequence[bool]] = None) -> int:
    """Index of the entry to read: the best score; with ``margin`` not None, the latest entry (largest
    ``order``) among the best and its *versions*: entries scoring within ``margin`` of it whose key
    [N, dk] has cosine >= ``min_cosine`` with its key (and ``eligible[i]``, when given). Equal
    orders go to the higher score.

    Versions of one fact match a question about equally well, and which of them the learned keys
    rank first is noise; the stream says which one is current. The key condition keeps another
    attribute or a look-alike entity, which can score as high, out. This is the plain reference of
    :func:`slot_versions`.

    Example:
        >>> keys = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # entry 2: another fact
        >>> [latest_version([0.9, 0.85, 0.88], [10, 30, 50], keys, m, 0.7) for m in (None, 0.1)]
        [0, 1]
    """
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    if margin is None:
        return best
    versions = [i for i in range(len(scores)) if i == best or (
        scores[i] >= scores[best] - margin and float(keys[i] @ keys[best]) >= min_cosine
        and (eligible is None or eligible[i]))]
    return max(versions, key=lambda i: (order[i], scores[i], -i))


def most_specific(question: str, key_texts: Sequence[str], fragments: bool = False,
                  foreign_names: bool = False) -> list[int]:
    """Indices of the entries whose key text names a set of the question's words that no other
    entry's key text strictly contains: the entries about the entity the question names most exactly.

    "the Lumen printer" names fewer of "What does the Lumen Mini printer cost?" than "the Lumen Mini
    printer" does, and drops out; two versions of one fact, or two attributes of one entity, name
    the same words and both stay. With ``fragments`` a key word of 4+ letters that begins or ends
    a question word names it (a key span cut inside a name: "Toumuch" or "oumuchol" for "Toumuchol").
    With ``foreign_names`` an entry whose key puts a name of its own (a capitalised word or a
    number) in place of one the question names ("Paul Brandt" for a question about Martin Brandt,
    "Daniel Berger" for Daniela Berger) then drops out when another remaining entry names as many
    of the question's words without one: it is about a look-alike. A name the key only adds
    ("Staigous Hahul" for "Who employs Staigous?") is no substitute.

    Example:
        >>> most_specific("What does the Lumen Mini printer cost?", ["the Lumen printer", "The Lumen Mini printer", "x"])
        [1]
        >>> most_specific("Where does Martin Brandt work?", ["Paul Brandt", "Brandt"], foreign_names=True)
        [1]
    """
    named = _named_words(question, key_texts, fragments)
    keep = [i for i, s in enumerate(named) if not any(s < other for other in named)]
    if not foreign_names:
        return keep
    foreign = foreign_keys(question, key_texts, fragments)
    return [i for i in keep if not (foreign[i] and any(not foreign[j] and len(named[j]) >= len(named[i]) for j in keep))]


def _names(t: str, w: str, fragments: bool) -> bool:
    """Key token ``t`` names question word ``w`` (or, with ``fragments``, is a 4+ letter piece of it)."""
    return t == w or (fragments and len(t) >= 4 and (w.startswith(t) or w.endswith(t)))


def _named_words(question: str, key_texts: Sequence[str], fragments: bool) -> list[set[str]]:
    """Per key text, the question's words it names."""
    words = set(tokenize([question])[0])
    return [{w for w in words if any(_names(t, w, fragments) for t in toks)} for toks in tokenize(list(key_texts))]


def foreign_keys(question: str, key_texts: Sequence[str], fragments: bool = False) -> list[bool]:
    """Per key text: it leaves out a name of the question (a capitalised word or a number) and
    carries a name of its own ("Paul Brandt" for a question about Martin Brandt).

    Example:
        >>> foreign_keys("Where does Martin Brandt work?", ["Paul Brandt", "Brandt", "Martin Brandt Jr"])
        [True, False, False]
    """
    words = set(tokenize([question])[0])
    asked = words & question_names(question)
    named = _named_words(question, key_texts, fragments)
    return [bool(asked - s) and any(t in _capitalised(text) and not any(_names(t, w, fragments) for w in words)
                                             for t in toks)
            for text, toks, s in zip(key_texts, tokenize(list(key_texts)), named)]


def inserted_names(question: str, key_texts: Sequence[str], fragments: bool = False) -> list[bool]:
    """Per key text: it puts a name of its own (a capitalised word or a number that names no
    question word) between two words that name question words: "The Mifaim Mini printer" or "the
    Stubral Next project" for a question about the Mifaim printer or Project Stubral. A word inside
    a name makes another entity (a look-alike); one after it completes the name ("Staigous Hahul"
    for "Who employs Staigous?").

    Example:
        >>> inserted_names("What does the Mifaim printer cost?", ["The Mifaim Mini printer", "Mifaim printer", "Mifaim Hahul"])
        [True, False, False]
    """
    words = set(tokenize([question])[0])
    out = []
    for text in key_texts:
        tokens = re.findall(r"\w+", text)
        naming = [any(_names(t.lower(), w, fragments) for w in words) for t in tokens]
        named_at = [i for i, n in enumerate(naming) if n]
        out.append(any(not naming[j] and not tokens[j][0].islower() for j in range(named_at[0] + 1, named_at[-1]))
                   if named_at else False)
    return out


def question_names(question: str) -> set[str]:
    """The lower-cased names of ``question``: its words written with a capital or a digit first,
    but its first word (capitalised anyway).

    Example:
        >>> sorted(question_names("Which company does Nina Keller work for?"))
        ['keller', 'nina']
    """
    return _capitalised((question.split(None, 1) or [""])[-1])


def _capitalised(text: str) -> set[str]:
    """The lower-cased words of ``text`` written with a capital or a digit first: its names."""
    return {w.lower() for w in re.findall(r"\w+", text) if not w[0].islower()}


def slot_versions(scores: torch.Tensor, time: torch.Tensor, keys: torch.Tensor, margin: float,
                  min_cosine: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched :func:`latest_version` over slots: (versions [B, M] bool: each row's best slot and its
    versions, newest [B]: the version written last, by ``time`` [B, M] >= 0, the request clock).
    ``scores`` [B, M] (-inf: a free slot), unit ``keys`` [B, M, dk]; a row with no slot gives
    no versions and newest -1.

    Example:
        >>> keys = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]])
        >>> scores = torch.tensor([[0.9, 0.85, 0.88, float('-inf')]])
        >>> versions, newest = slot_versions(scores, torch.tensor([[1, 2, 3, 4]]), keys, 0.1, 0.7)
        >>> versions.tolist(), newest.tolist()
        ([[True, True, False, False]], [1])
    """
    top, best = scores.max(dim=-1)  # [B]
    cos = torch.einsum("bmd,bd->bm", keys, keys[torch.arange(keys.shape[0]), best])  # [B, M]
    is_best = torch.arange(scores.shape[1])[None] == best[:, None]  # [B, M]
    versions = torch.isfinite(scores) & (scores >= top[:, None] - margin) & ((cos >= min_cosine) | is_best)
    # the latest write time first, then the higher score: the order latest_version reads them in
    latest = versions & (time == time.masked_fill(~versions, -1).amax(dim=-1, keepdim=True))  # [B, M]
    newest = scores.masked_fill(~latest, -math.inf).argmax(dim=-1)  # [B]
    return versions, newest.masked_fill(~versions.any(dim=-1), -1)


ANSWER = "answer"  # the event type of a pointer answer (memadapter.modeling.read_answers)


@dataclass(eq=False)  # compared by identity: its tensors have no single truth value
class GroundedEvent:
    """An event the GroundingHead proposed in a retrieved chunk, scored against a question: its key
    and value texts (value None: a retraction), value [dv] and key [dk] vectors, event type name,
    score (its key's match with the question), position (token offset of its key in the stream)
    and the text of its sentence (:func:`sentence_around`; None: the key text stands for it). A
    pointer answer (``memadapter.modeling.read_answers``) also has the margin of its span over
    "no answer here" and its sentence's hedge score (``AnswerPointer.hedges``). When its sentence
    restates an earlier one, an answer that is a whole run of words replaced there has
    ``restated_run``, and the pointer's best span touching such a run ``restated_span``: each the
    share of the sentence the earlier one repeats."""

    key_text: str
    value_text: Optional[str]
    value: torch.Tensor
    key: torch.Tensor
    event_type: str
    score: float
    position: int
    sentence: Optional[str] = None
    answer_margin: Optional[float] = None
    answer_hedge: Optional[float] = None
    restated_run: Optional[float] = None
    restated_span: Optional[float] = None

    @property
    def withdraws(self) -> bool:
        """A retraction the GroundingHead typed, or a pointer withdrawal (a pointer answer without a value)."""
        return self.event_type == "retract" or (self.event_type == ANSWER and self.value_text is None)


def sentence_around(decode: Callable[[Sequence[int]], str], ids: Sequence[int], start: int, end: int) -> str:
    """The text of the sentence that holds tokens ``ids[start:end]`` (an event's key..value span).

    The span alone misses relation words before the key ("The deadline for Project X is ..."),
    so the text runs from the token after the last sentence end before ``start`` to the first
    sentence end at or after ``end`` (a token is an end when its text has ".", "!", "?" or a newline).

    Example:
        >>> words = "Rain fell . The deadline for Nimbus is May 2 . Bob left .".split()
        >>> sentence_around(" ".join, words, 5, 10)
        'The deadline for Nimbus is May 2 .'
    """
    start, end = max(0, min(start, len(ids))), max(0, min(end, len(ids)))
    first = start
    while first > 0 and not _SENTENCE_END.search(decode(ids[first - 1:first])):
        first -= 1
    last = max(end, start)  # an empty span still reads on to its sentence end
    while last < len(ids) and (last == start or not _SENTENCE_END.search(decode(ids[last - 1:last]))):
        last += 1
    return decode(ids[first:last])
