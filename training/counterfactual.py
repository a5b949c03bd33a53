"""Counterfactual real-text streams from SQuAD v2 dev and HotpotQA (issue 24, section 1).

For a real question, the stream holds the real answer-bearing sentence (event ``new``, version 1)
and later a correction: the same sentence with the answer replaced by another real answer of the
same type (number, year, date, person, place, other proper name, other) behind an update signal ("Correction:",
"As of 2025,", ...; event ``update``, version 2). The question is asked as written and its gold
answer is the NEW value, so the backbone's own knowledge of the world cannot answer it; the
original is stale (the question's ``stale`` list). Sometimes a look-alike copy (one word of the
key edited, yet another answer; role ``lookalike``) is a distractor. Other paragraphs of the same corpus fill the gaps.

Key span heuristic: the question's content words (lowercased, minus stop words) are matched
against the sentence's words outside the answer; the key is the contiguous stretch from the first
to the last matching word on the side of the answer with more matches (before it on a tie). No match: the up to four words just before (else after) the answer. The key
never overlaps the answer.

Splits: ``train`` (SQuAD titles of half 0), ``val_squad`` / ``test_squad`` (the other titles,
split in halves), ``val_hotpotqa`` / ``test_hotpotqa`` (HotpotQA, never in train; halves by the
supporting paragraph's title, filler paragraphs by title too, so val and test share no document).

Example:
    >>> ds = build_counterfactual_dataset("val_squad", 1, seed=0, filler_tokens=50)  # doctest: +SKIP
    >>> q = ds[0]["questions"][0]; q["answer"] in ds[0]["text"]                      # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import datasets

from memadapter._validate import check_positive_int
from memadapter.errors import ConfigError, EmptyInputError

from .filler import approx_tokens, split_sentences
from .lifecycle_data import _order, stale_values, stream_features
from .corpora import data_dir, stable_half

__all__ = ["SPLITS", "Fact", "answer_type", "key_span", "split_facts", "generate_counterfactual_stream",
           "build_counterfactual_dataset"]

SPLITS: tuple[str, ...] = ("train", "val_squad", "test_squad", "val_hotpotqa", "test_hotpotqa")
SIGNALS = ("Correction:", "Update:", "As of 2025,", "It has since changed:", "Revised:", "According to a later report,",
           "Erratum:", "Since the last edition,")
_STOP = frozenset("a an the of in on at to for by with from and or is was were are be been what which who whom whose "
                  "when where why how did does do that this these those it its as into than many much name".split())
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_WORD = re.compile(r"[A-Za-z0-9][\w'-]*")


@dataclass(frozen=True)
class Fact:
    """One real question with its answer-bearing sentence (answer at ``sentence[a0:a1]``)."""

    question: str
    answer: str
    sentence: str
    a0: int
    a1: int
    doc: str  # the paragraph it came from (never used as filler in the same stream)
    kind: str  # answer type


def answer_type(answer: str, question: str = "", before: str = "") -> str:
    """A coarse type so a replacement is plausible: year|date|number|person|place|name|other.

    ``before`` is the sentence text before the answer ("... headquarters in" marks a place).
    Example: ``answer_type("1066")`` -> "year"; ``answer_type("Mei Tanaka", "Who ...?")`` -> "person".
    """
    a, q = answer.strip(), question.lower()
    prep = re.search(r"\b(?:in|at|from|near|to)\s*$", before)
    if re.fullmatch(r"1\d{3}|20\d{2}", a):
        return "year"
    if re.search(_MONTH, a) and re.search(r"\d", a):
        return "date"
    if re.fullmatch(r"[$€£]?[\d.,]+%?(?: [a-z]+){0,2}", a):
        return "number"
    caps = re.fullmatch(r"(?:[A-Z][\w.'-]*)(?: (?:[A-Z][\w.'-]*|de|van|von|of))*", a)
    if caps and q.startswith("who"):
        return "person"
    if caps and (q.startswith("where") or prep or re.search(r"\b(?:country|city|state|region|town|located)\b", q)):
        return "place"
    return "name" if caps else "other"


def key_span(sentence: str, a0: int, a1: int, question: str) -> Optional[tuple[int, int]]:
    """The key's char span in ``sentence`` (see the module docstring), or None when it has no words."""
    norm = lambda w: re.sub(r"'s?$", "", w.lower())  # noqa: E731  "bank's" matches "bank"
    qwords = {norm(w) for w in _WORD.findall(question)} - _STOP
    words = [(m.start(), m.end()) for m in _WORD.finditer(sentence)]
    before = [w for w in words if w[1] <= a0]
    after = [w for w in words if w[0] >= a1]
    hits = [[w for w in side if norm(sentence[w[0]:w[1]]) in qwords] for side in (before, after)]
    best = max(hits, key=len)  # the side sharing most words with the question; before on a tie
    if best:
        return best[0][0], best[-1][1]
    side = before[-4:] or after[:4]
    return (side[0][0], side[-1][1]) if side else None


def _sentence_of(context: str, start: int, answer: str) -> Optional[tuple[str, int]]:
    """The sentence of ``context`` holding the answer at ``start``, and the answer's offset in it."""
    pos = 0
    for s in split_sentences(context):
        at = context.find(s, pos)
        if at < 0:
            return None
        pos = at + len(s)
        if at <= start and start + len(answer) <= at + len(s):
            return s, start - at
    return None


def _fact(question: str, answer: str, sentence: str, a0: int, doc: str) -> Optional[Fact]:
    if not answer.strip() or len(sentence) > 400 or sentence[a0:a0 + len(answer)] != answer:
        return None
    return Fact(question, answer, sentence, a0, a0 + len(answer), doc, answer_type(answer, question, sentence[:a0]))


@lru_cache(maxsize=None)
def _squad_facts() -> tuple[tuple[str, Fact], ...]:
    with open(data_dir() / "squad.json", encoding="utf-8") as fh:
        data = json.load(fh)["data"]
    out = []
    for d in data:
        for p in d["paragraphs"]:
            for q in p["qas"]:
                if q["is_impossible"] or not q["answers"]:
                    continue
                a = q["answers"][0]
                found = _sentence_of(p["context"], a["answer_start"], a["text"])
                f = found and _fact(q["question"], a["text"], found[0], found[1], p["context"])
                if f:
                    out.append((d["title"], f))
    return tuple(out)


@lru_cache(maxsize=None)
def _hotpot_facts() -> tuple[tuple[str, Fact], ...]:
    with open(data_dir() / "hotpotqa.json", encoding="utf-8") as fh:
        data = json.load(fh)
    out = []
    for d in data:
        paras = {t: p for t, p in d["context"]}
        for title, i in d["supporting_facts"]:
            sents = paras.get(title, [])
            s = sents[i].strip() if i < len(sents) else ""
            at = s.find(d["answer"]) if d["answer"] not in ("yes", "no") else -1
            f = at >= 0 and _fact(d["question"], d["answer"], s, at, "".join(sents).strip())
            if f:
                out.append((title, f))
                break
    return tuple(out)


def split_facts(split: str) -> tuple[list[Fact], list[str]]:
    """The facts of ``split`` and its filler documents (paragraphs of the same title group)."""
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {SPLITS}, got {split!r}")
    hotpot = split.endswith("hotpotqa")
    rows = _hotpot_facts() if hotpot else _squad_facts()
    if split == "train":
        keep = lambda t: stable_half(t) == 0  # noqa: E731
    elif hotpot:
        keep = lambda t: stable_half(t) == (0 if split.startswith("val") else 1)  # noqa: E731
    else:
        keep = lambda t: stable_half(t) == 1 and stable_half(t + "#half") == (0 if split.startswith("val") else 1)  # noqa: E731
    facts = [f for t, f in rows if keep(t)]
    docs = sorted({f.doc for f in facts})
    if not facts:
        raise EmptyInputError(f"split: {split!r} has no usable questions")
    return facts, docs


# ----------------------------------------------------------------------------- streams


@dataclass
class _Ev:
    """A planned sentence: the fact's original, its correction, or a look-alike copy."""

    fact: Fact
    role: str  # main | lookalike
    event_type: str  # new | update
    value: str
    version: int
    prefix: str = ""
    edit: Optional[tuple[int, int, str]] = None  # key word (start, end) replaced by this text


def _replacement(rng: random.Random, fact: Fact, pool: dict[str, list[str]], avoid: set) -> Optional[str]:
    n = len(fact.answer.split())
    cands = [v for v in pool.get(fact.kind, []) if abs(len(v.split()) - n) <= 1] or pool.get(fact.kind, [])
    for _ in range(50):
        v = cands[rng.randrange(len(cands))] if cands else ""
        low = v.lower()
        if v and low not in avoid and low not in fact.sentence.lower() and \
                not any(low in a or a in low for a in avoid):
            return v
    return None


def _edit_key(rng: random.Random, sentence: str, key: tuple[int, int]) -> tuple[int, int, str]:
    """Look-alike subject: one word of the key gets a letter added or a word ("North", "II") next to it."""
    words = [(m.start() + key[0], m.end() + key[0]) for m in _WORD.finditer(sentence[key[0]:key[1]])]
    s, e = rng.choice([w for w in words if sentence[w[0]].isupper()] or words)  # a name word when there is one
    w = sentence[s:e]
    new = w + rng.choice("soa") if rng.random() < 0.5 else f"{w} {rng.choice(('North', 'II', 'New', 'Old'))}"
    return s, e, new


def _render(ev: _Ev, key: tuple[int, int]) -> tuple[str, dict]:
    """The sentence of ``ev`` with its key and value spans (the value replaced, the key maybe edited)."""
    f = ev.fact
    pieces = [(0, min(key[0], f.a0)), (max(key[1], f.a1), len(f.sentence))]
    mid = (key[1], f.a0) if key[0] < f.a0 else (f.a1, key[0])
    key_text = f.sentence[key[0]:key[1]]
    if ev.edit:
        s, e, new = ev.edit
        key_text = f.sentence[key[0]:s] + new + f.sentence[e:key[1]]
    segs = [("", f.sentence[pieces[0][0]:pieces[0][1]])]
    order = [("key", key_text), ("", f.sentence[mid[0]:mid[1]]), ("value", ev.value)] if key[0] < f.a0 else \
        [("value", ev.value), ("", f.sentence[mid[0]:mid[1]]), ("key", key_text)]
    segs += order + [("", f.sentence[pieces[1][0]:pieces[1][1]])]
    out, spans, pos = ev.prefix, {}, len(ev.prefix)
    for name, text in segs:
        if name:
            spans[name] = (pos, pos + len(text))
        out += text
        pos += len(text)
    return out, spans


def _plan_fact(rng: random.Random, fact: Fact, c: int, pool: dict, p_lookalike: float) -> Optional[tuple]:
    key = key_span(fact.sentence, fact.a0, fact.a1, fact.question)
    new = key and _replacement(rng, fact, pool, {fact.answer.lower()})
    if not new:
        return None
    chain = [_Ev(fact, "main", "new", fact.answer, 1),
             _Ev(fact, "main", "update", new, 2, prefix=rng.choice(SIGNALS) + " ")]
    extras = []
    other = rng.random() < p_lookalike and _replacement(rng, fact, pool, {fact.answer.lower(), new.lower()})
    if other:
        extras.append((c, _Ev(fact, "lookalike", "new", other, 1, edit=_edit_key(rng, fact.sentence, key))))
    return key, chain, extras


def _filler(rng: random.Random, docs: list[str], tokens: int, avoid: list[str]) -> list[str]:
    out, total = [], 0
    for _ in range(1000):
        if total >= tokens:
            return out
        doc = docs[rng.randrange(len(docs))]
        for s in split_sentences(" ".join(doc.split())):
            if total >= tokens:
                break
            if len(s) >= 20 and not any(a in s for a in avoid):
                out.append(s)
                total += approx_tokens(s)
    return out


def _pool_by_type(facts: list[Fact]) -> dict[str, list[str]]:
    pool: dict[str, list[str]] = {}
    for f in facts:
        pool.setdefault(f.kind, []).append(f.answer)
    return {k: sorted(set(v)) for k, v in pool.items()}


def _assemble(rng: random.Random, order: list[_Ev], keys: dict, filler: list[str]) -> tuple[str, list, dict]:
    gaps = sorted(rng.randint(0, len(order)) for _ in filler)
    pieces, events, index_of, pos, f = [], [], {}, 0, 0
    for g, ev in enumerate(order + [None]):
        while f < len(filler) and gaps[f] == g:
            pos += (1 if pieces else 0) + len(filler[f])
            pieces.append(filler[f])
            f += 1
        if ev is None:
            break
        sentence, spans = _render(ev, keys[id(ev.fact)])
        start = pos + (1 if pieces else 0)
        pieces.append(sentence)
        pos = start + len(sentence)
        (ks, ke), (vs, ve) = spans["key"], spans["value"]
        index_of[id(ev)] = len(events)
        events.append({"start": start, "end": pos, "key_start": start + ks, "key_end": start + ke,
                       "value_start": start + vs, "value_end": start + ve, "event_type": ev.event_type,
                       "entity": sentence[ks:ke], "attribute": ev.fact.question, "value": ev.value,
                       "version": ev.version, "signal": True, "key_text": sentence[ks:ke],
                       "template": "counterfactual" if ev.role == "main" else "counterfactual-lookalike",
                       "role": ev.role})
    return " ".join(pieces), events, index_of


def generate_counterfactual_stream(rng: random.Random, *, split: str = "train", num_facts: int = 4,
                                   filler_tokens: int = 256, p_lookalike: float = 0.4) -> dict:
    """One counterfactual stream of ``split`` in the lifecycle schema (see the module docstring).

    ``num_facts`` real questions, each with its original sentence and a later correction;
    ``p_lookalike``: chance of a look-alike copy per fact. Deterministic given ``rng``'s state.
    """
    if not isinstance(rng, random.Random):
        raise ConfigError(f"rng: expected a random.Random, got {type(rng).__name__}")
    check_positive_int("num_facts", num_facts)
    check_positive_int("filler_tokens", filler_tokens, allow_zero=True)
    if isinstance(p_lookalike, bool) or not isinstance(p_lookalike, (int, float)) or not 0 <= p_lookalike <= 1:
        raise ConfigError(f"p_lookalike: expected a share in [0, 1], got {p_lookalike!r}")
    facts, docs = split_facts(split)
    pool = _pool_by_type(facts)
    chains, extras, keys, used = [], [], {}, set()
    for _ in range(50 * num_facts):
        if len(chains) == num_facts:
            break
        fact = facts[rng.randrange(len(facts))]
        if fact.sentence in used or any(fact.answer in s or s in fact.sentence for s in used):
            continue
        planned = _plan_fact(rng, fact, len(chains), pool, p_lookalike)
        if planned:
            used.add(fact.sentence)
            keys[id(fact)], chain, more = planned
            chains.append(chain)
            extras += more
    if not chains:
        raise EmptyInputError(f"split: no question of {split!r} could be made counterfactual")
    order = _order(rng, chains, extras)
    avoid = [ev.value for ev in order] + [ev.fact.sentence[:40] for ev in order]
    own = {ev.fact.doc for ev in order}
    filler = _filler(rng, [d for d in docs if d not in own] or docs, filler_tokens, avoid) if filler_tokens else []
    text, events, index_of = _assemble(rng, order, keys, filler)
    questions = [{"question": ch[0].fact.question, "answer": ch[1].value,
                  "kind": "distractor" if any(c == i for c, _ in extras) else "overwrite",
                  "entity": events[index_of[id(ch[1])]]["entity"], "attribute": ch[0].fact.question,
                  "answer_event": index_of[id(ch[1])], "key_text": events[index_of[id(ch[1])]]["key_text"],
                  "template": "counterfactual", "stale": stale_values(ch, ch[1].value)} for i, ch in enumerate(chains)]
    rng.shuffle(questions)
    names = {e["entity"] for e in events}
    return {"id": f"cf-{split}-{rng.getrandbits(48):012x}", "split": split, "text": text, "events": events,
            "questions": questions, "entities": [{"name": n, "kind": "other", "aliases": [n]} for n in sorted(names)]}


def build_counterfactual_dataset(split: str, num_streams: int, seed: int, **stream_kwargs: Any) -> datasets.Dataset:
    """``num_streams`` counterfactual streams of ``split``; the same arguments always give the same rows.

    Example:
        >>> ds = build_counterfactual_dataset("train", 2, seed=0, filler_tokens=0)  # doctest: +SKIP
        >>> {q["kind"] for q in ds[0]["questions"]} <= {"overwrite", "distractor"}  # doctest: +SKIP
        True
    """
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {SPLITS}, got {split!r}")
    check_positive_int("num_streams", num_streams)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an int, got {type(seed).__name__}")
    rng = random.Random(f"memadapter-counterfactual:{seed}:{split}")
    rows = [generate_counterfactual_stream(rng, split=split, **stream_kwargs) for _ in range(num_streams)]
    return datasets.Dataset.from_list(rows, features=stream_features())
