"""Open-text lifecycle streams: the lifecycle schema with breadth (issue 24, section 1).

Same questions and labels as ``lifecycle_data`` (schema :func:`lifecycle_data.stream_features`,
kinds overwrite|version|distractor|uniform|retraction|recall, a retraction answers
``lifecycle_data.UNKNOWN``), but the words come from ``open_vocab``: hundreds of attribute types
with value formats, eleven named template families (copula, value-first, passive, relative
clause, key-value lines, table rows, dialogue, first-person chat, ...), explicit and implicit
(later date) update signals, look-alikes that edit any part of a name, and filler from several
real corpora (Paul Graham essays, SQuAD and HotpotQA contexts).

Real filler keeps its own "was replaced" / "no longer" sentences, all tagged O: the tagger must
learn not to write them. ``hard_negatives`` generated sentences ("The bridge toll was replaced
last spring.") are planted as plain filler too (no event, tag O): they read like updates of
nothing the stream tracks.

Splits: ``train``; ``validation`` (train pools, fresh seeds) for checkpoints; and held-out pairs
whose val and test halves share nothing: ``*_unseen_templates`` (template families),
``*_unseen_attributes`` (attribute head nouns and made-up attributes), ``*_unseen_corpus``
(HotpotQA filler, documents split in halves; train never reads HotpotQA). Every held-out split
names entities from a made-up word space that training never draws from.

Example:
    >>> import random
    >>> s = generate_open_stream(random.Random(0), filler_tokens=0, filler_source="none")
    >>> e = s["events"][0]
    >>> s["text"][e["key_start"]:e["key_end"]] == e["key_text"]
    True
"""

from __future__ import annotations

import datetime as _dt
import random
from dataclasses import dataclass, field
from typing import Any, Optional

import datasets

from memadapter._validate import check_positive_int
from memadapter.errors import CapacityError, ConfigError, EmptyInputError

from . import open_vocab as V
from .corpora import corpus_documents, filler_documents, stable_half
from .filler import approx_tokens, sentence_pool
from .lifecycle_data import QUESTION_KINDS, UNKNOWN, _order, _render, question_kind, stale_values, stream_features

__all__ = ["SPLITS", "SPLIT_DEFAULTS", "OpenSplitStyle", "open_split_style", "generate_open_stream",
           "build_open_dataset", "corpus_documents", "stable_half", "QUESTION_KINDS", "UNKNOWN"]

SPLITS: tuple[str, ...] = ("train", "validation", "val_unseen_templates", "test_unseen_templates",
                           "val_unseen_attributes", "test_unseen_attributes", "val_unseen_corpus", "test_unseen_corpus")
SPLIT_DEFAULTS: dict[str, Any] = dict(num_entities=4, num_updates=3, num_distractors=4, num_uniform=2,
                                      filler_tokens=256)
KINDS = ("person", "project", "product", "org", "place")


@dataclass(frozen=True)
class OpenSplitStyle:
    """Pools of a split: template families, attribute types ("train"|"val"|"test"), the name space
    ("train"|"heldout") and the filler corpora (``(corpus, half)`` pairs; half None = all)."""

    families: str
    attributes: str
    names: str
    filler: tuple[tuple[str, Optional[int]], ...]


_TRAIN_FILLER = (("essays", None), ("squad", 0))  # SQuAD half 1 is counterfactual's held-out titles


def open_split_style(split: str) -> OpenSplitStyle:
    """The pools of ``split``; raises ConfigError for an unknown split."""
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {SPLITS}, got {split!r}")
    if split in ("train", "validation"):
        return OpenSplitStyle("train", "train", "train", _TRAIN_FILLER)
    half, what = split.split("_unseen_")
    return OpenSplitStyle(half if what == "templates" else "train", half if what == "attributes" else "train",
                          "heldout", (("hotpotqa", 0 if half == "val" else 1),) if what == "corpus" else _TRAIN_FILLER)


# ----------------------------------------------------------------------------- filler

def _filler(rng: random.Random, tokens: int, style: OpenSplitStyle, source: str, banned: list[str]) -> list[str]:
    """Consecutive sentences of random documents of the split's corpora, ``tokens`` approx tokens in all."""
    if tokens == 0 or source == "none":
        return []
    docs = (sentence_pool("embedded"),) if source == "embedded" else filler_documents(style.filler)
    out, total = [], 0
    for _ in range(10000):
        if total >= tokens:
            return out
        doc = docs[rng.randrange(len(docs))]
        for s in doc[rng.randrange(len(doc)):]:
            if total >= tokens:
                break
            if not any(b in s for b in banned):
                out.append(s)
                total += approx_tokens(s)
    raise EmptyInputError("filler_tokens: the filler pool is too small or every sentence names an entity")


# ----------------------------------------------------------------------------- entities


@dataclass
class _Entity:
    kind: str
    name: str
    parts: tuple[str, ...]  # what look-alikes edit


def _new_entity(rng: random.Random, kind: str, space: str) -> _Entity:
    w = lambda pool: V._word(rng, space, pool)  # noqa: E731
    if kind == "person":
        name = V.person_name(rng, space)
    elif kind == "project":
        name = f"{rng.choice(V.PROJECT_HEADS)} {w(V.ORG_WORDS)}"
    elif kind == "product":
        name = f"{w(V.ORG_WORDS)} {rng.choice(V.PRODUCT_TYPES).capitalize()} {rng.choice('KXZ')}{rng.randint(1, 9)}"
    elif kind == "org":
        name = V.org_name(rng, space)
    else:
        name = V.place_name(rng, space)
    return _Entity(kind, name, tuple(name.split(" ")))


def _lookalike(rng: random.Random, ent: _Entity, space: str) -> _Entity:
    """Edit one part of the name: a word replaced, a letter added, a word ("Mini", "II") inserted."""
    parts = list(ent.parts)
    i = rng.randrange(len(parts))
    edit = rng.randrange(3)
    if edit == 0:
        parts[i] = V.made_up_word(rng, space) if ent.kind != "person" or i else V._word(rng, space, V.FIRST_NAMES)
    elif edit == 1:
        parts[i] = parts[i] + rng.choice("soa")
    else:
        parts.insert(rng.randint(1, len(parts)), rng.choice(("Mini", "II", "North", "Group", "Jr.")))
    name = " ".join(parts)
    return _lookalike(rng, ent, space) if name == ent.name else _Entity(ent.kind, name, tuple(parts))


# ----------------------------------------------------------------------------- planning


@dataclass
class _Plan:
    role: str  # main | lookalike | uniform | noise
    event_type: str
    entity: _Entity
    attr: V.OpenAttribute
    value: Optional[str]
    signal: bool
    version: int = 0
    revert: bool = False  # chat "scratch that, I kept the old one": an update back to an older value
    extra: dict = field(default_factory=dict)


def _fresh(rng: random.Random, attr: V.OpenAttribute, space: str, taken: set) -> str:
    for _ in range(100):
        v = attr.value(rng, space)
        if not any(t and (v in t or t in v) for t in taken):
            return v
    raise CapacityError(f"num_updates: attribute {attr.name!r} gave no unused value in 100 draws")


def _plan_main(rng, style, n, updates, retract, p_chat, attrs) -> list[list[_Plan]]:
    chains, taken = [], set()
    for c in range(n):
        if c == 0 and style.families == "train" and rng.random() < p_chat:
            ent = _Entity("user", V.CHAT_USER, ("the", "user"))
        else:
            ent = _new_entity(rng, rng.choice(KINDS), style.names)
        attr = rng.choice(attrs)
        taken.add((ent.name, attr.name))
        chains.append([_Plan("main", "new", ent, attr, _fresh(rng, attr, style.names, set()), True, 1)])
    for _ in range(updates):
        chain = rng.choice(chains)
        p = chain[0]
        olds = [q.value for q in chain]
        if p.entity.kind == "user" and len(olds) >= 2 and rng.random() < 0.4:
            chain.append(_Plan("main", "update", p.entity, p.attr, olds[-2], True, len(chain) + 1, revert=True))
            continue
        chain.append(_Plan("main", "update", p.entity, p.attr, _fresh(rng, p.attr, style.names, set(olds)), True,
                           len(chain) + 1))
    if retract:
        chain = rng.choice(chains)
        chain.append(_Plan("main", "retract", chain[0].entity, chain[0].attr, None, True, len(chain) + 1))
    return chains


def _plan_uniform(rng, style, chains, n, attrs) -> None:
    """Unsignalled facts: a new attribute of a non-user main entity, or a new entity."""
    mains = [ch[0].entity for ch in chains if ch[0].entity.kind != "user"]
    taken = {(ch[0].entity.name, ch[0].attr.name) for ch in chains}
    for _ in range(n):
        ent = rng.choice(mains) if mains and rng.random() < 0.5 else _new_entity(rng, rng.choice(KINDS), style.names)
        attr = rng.choice([a for a in attrs if (ent.name, a.name) not in taken])
        taken.add((ent.name, attr.name))
        chains.append([_Plan("uniform", "new", ent, attr, _fresh(rng, attr, style.names, set()), False, 1)])


def _plan_distractors(rng, style, chains, n_main, n) -> list[tuple[int, _Plan]]:
    """Look-alike entities with their own value, and rumours naming the real entity with a wrong value."""
    extras, lookalikes = [], {}
    for _ in range(n):
        c = rng.randrange(n_main)
        head = chains[c][0]
        value = _fresh(rng, head.attr, style.names, {q.value for q in chains[c]} | {p.value for _, p in extras})
        if c not in lookalikes and head.entity.kind != "user" and rng.random() < 0.6:
            lookalikes[c] = _lookalike(rng, head.entity, style.names)
            extras.append((c, _Plan("lookalike", "new", lookalikes[c], head.attr, value, rng.random() < 0.5, 1)))
        else:
            extras.append((c, _Plan("noise", "irrelevant", head.entity, head.attr, value, False, 0)))
    return extras


# ----------------------------------------------------------------------------- sentences

def _family(rng: random.Random, plan_entity: _Entity, style: OpenSplitStyle) -> V.TemplateFamily:
    if plan_entity.kind == "user":
        return V.FAMILIES["chat"]
    return V.FAMILIES[rng.choice([f for f in V.FAMILY_SPLITS[style.families] if f != "chat"])]


def _pick_template(rng: random.Random, plan: _Plan, fam: V.TemplateFamily) -> tuple[str, bool]:
    """(template, implicit): an update is either explicit wording or a plain fact behind a later date."""
    if plan.revert:
        return rng.choice(V.CHAT_REVERT), False
    special = V.CHAT_SPECIAL.get(plan.attr.name) if fam.name == "chat" else None
    if special and plan.event_type in ("new", "update") and rng.random() < 0.4:
        return special[0], False
    if plan.event_type == "update" and rng.random() < 0.4:
        return rng.choice(fam.new), True
    pool = {"new": fam.new, "update": fam.update, "retract": fam.retract, "irrelevant": fam.noise}
    return rng.choice(pool[plan.event_type]), False


def _prefix(rng: random.Random, plan: _Plan, fam: V.TemplateFamily, implicit: bool, clock: list) -> str:
    if not plan.signal:
        return ""
    clock[0] += _dt.timedelta(days=rng.randint(1, 40), minutes=rng.randint(0, 600))
    now = clock[0]
    if implicit:
        options = ("As of {date},", "Since {date},", "From {date},")
        options = tuple(f"User: {o[0].lower()}{o[1:]}" for o in options) if fam.name == "chat" else options
    elif fam.name == "chat":
        options = ("User:",) if plan.revert else V.CHAT_PREFIXES[plan.event_type]
    elif plan.event_type == "update" and rng.random() < 0.5:
        return ""  # the template's own change words ("now", "changed to") are the signal
    else:
        options = V.SIGNAL_PREFIXES[plan.event_type]
    return rng.choice(options).format(date=f"{now.day} {now:%B %Y}", timestamp=f"{now:%Y-%m-%d %H:%M}",
                                      version=plan.version) + " "


def _recase(body: str, spans: dict, prefix: str) -> str:
    """Sentence-start case, never touching the first letter of a value (codes, e-mails keep theirs)."""
    v0 = spans.get("value", (-1, -1))[0]
    if v0 == 0 or not body:
        return body
    if not prefix or prefix.rstrip()[-1] in ":]":
        return body[0].upper() + body[1:]
    return body if body[0].isupper() and v0 != 0 and any(s[0] == 0 for s in spans.values()) else \
        body[0].lower() + body[1:]


def _sentence(rng: random.Random, plan: _Plan, style: OpenSplitStyle, clock: list) -> tuple[str, dict]:
    """One event sentence and its label spans (relative to the sentence)."""
    fam = _family(rng, plan.entity, style)
    template, implicit = _pick_template(rng, plan, fam)
    prefix = _prefix(rng, plan, fam, implicit, clock)
    body, spans = _render(template, {"key": plan.entity.name, "attr": plan.attr.name, "value": plan.value or "",
                                     "my": "my", "I": "I"})
    body = _recase(body, spans, prefix)
    key = min((spans[k] for k in ("key", "my", "I") if k in spans), key=lambda s: s[0])
    off = len(prefix)
    value = spans.get("value") if plan.event_type != "retract" else None
    return prefix + body, {"key": (key[0] + off, key[1] + off),
                           "value": (value[0] + off, value[1] + off) if value else None,
                           "template": f"{fam.name}|{template}"}


def _question(rng: random.Random, plan: _Plan, style: OpenSplitStyle) -> tuple[str, str, str]:
    fam = _family(rng, plan.entity, style)
    special = V.CHAT_SPECIAL.get(plan.attr.name) if fam.name == "chat" else None
    template = special[1] if special and rng.random() < 0.5 else rng.choice(fam.questions)
    text, spans = _render(template, {"key": plan.entity.name, "attr": plan.attr.name, "my": "my", "I": "I"})
    key = min((spans[k] for k in ("key", "my", "I") if k in spans), key=lambda s: s[0])
    return text[0].upper() + text[1:], text[key[0]:key[1]], f"{fam.name}|{template}"


# ----------------------------------------------------------------------------- assembly

def _event_row(plan: _Plan, start: int, sentence: str, label: dict) -> dict:
    ks, ke = label["key"]
    vs, ve = (start + label["value"][0], start + label["value"][1]) if label["value"] else (-1, -1)
    return {"start": start, "end": start + len(sentence), "key_start": start + ks, "key_end": start + ke,
            "value_start": vs, "value_end": ve, "event_type": plan.event_type, "entity": plan.entity.name,
            "attribute": plan.attr.name, "value": plan.value, "version": plan.version, "signal": plan.signal,
            "key_text": sentence[ks:ke], "template": label["template"], "role": plan.role}


def _assemble(rng: random.Random, order: list[_Plan], style: OpenSplitStyle,
              filler: list[str]) -> tuple[str, list[dict], dict]:
    """Event sentences in order with filler (kept in order) scattered between them; char spans recorded."""
    clock = [_dt.datetime(rng.randint(2019, 2024), rng.randint(1, 12), rng.randint(1, 28), 9, 0)]
    gaps = sorted(rng.randint(0, len(order)) for _ in filler)
    pieces, events, index_of, pos, f = [], [], {}, 0, 0
    for g, plan in enumerate(order + [None]):
        while f < len(filler) and gaps[f] == g:
            pos += (1 if pieces else 0) + len(filler[f])
            pieces.append(filler[f])
            f += 1
        if plan is None:
            break
        sentence, label = _sentence(rng, plan, style, clock)
        start = pos + (1 if pieces else 0)
        pieces.append(sentence)
        pos = start + len(sentence)
        index_of[id(plan)] = len(events)
        events.append(_event_row(plan, start, sentence, label))
    return " ".join(pieces), events, index_of


def _questions(rng: random.Random, chains: list, extras: list, style: OpenSplitStyle, index_of: dict) -> list[dict]:
    """One question per tracked fact, answered by its latest version ("unknown" after a retraction);
    ``stale`` lists the fact's earlier values, never a look-alike's or a rumour's."""
    targets, out = {c for c, _ in extras}, []

    def ask(chain: list, kind: str) -> None:
        last = chain[-1]
        text, key, template = _question(rng, last, style)
        answer = UNKNOWN if last.event_type == "retract" else last.value
        out.append({"question": text, "answer": answer, "kind": kind, "entity": last.entity.name,
                    "attribute": last.attr.name, "answer_event": index_of[id(last)], "key_text": key,
                    "template": template, "stale": stale_values(chain, answer)})

    for c, chain in enumerate(chains):
        ask(chain, question_kind(chain, c in targets))
    for _, plan in extras:
        if plan.role == "lookalike" and rng.random() < 0.5:
            ask([plan], "distractor")
    rng.shuffle(out)
    return out


def _check_args(rng: Any, num_entities: int, counts: dict, filler_source: str, p_chat: float) -> None:
    if not isinstance(rng, random.Random):
        raise ConfigError(f"rng: expected a random.Random, got {type(rng).__name__}")
    check_positive_int("num_entities", num_entities)
    for name, value in counts.items():
        check_positive_int(name, value, allow_zero=True)
    if filler_source not in ("corpora", "embedded", "none"):
        raise ConfigError(f"filler_source: expected corpora|embedded|none, got {filler_source!r}")
    if isinstance(p_chat, bool) or not isinstance(p_chat, (int, float)) or not 0 <= p_chat <= 1:
        raise ConfigError(f"p_chat: expected a share in [0, 1], got {p_chat!r}")


def generate_open_stream(rng: random.Random, *, split: str = "train", num_entities: int = 4, num_updates: int = 3,
                         num_distractors: int = 4, num_uniform: int = 2, filler_tokens: int = 0,
                         hard_negatives: int = 2, retractions: bool = True, filler_source: str = "corpora",
                         p_chat: float = 0.3) -> dict:
    """One open-text stream of ``split`` in the lifecycle schema; deterministic given ``rng``'s state.

    ``filler_tokens``: approximate tokens of real filler from the split's corpora
    (``filler_source`` "corpora"; "embedded" uses the short built-in text, "none" none).
    ``hard_negatives``: generated update-looking sentences planted as plain filler (tag O).
    ``p_chat``: chance that the first main entity is the chat user (splits with the chat family).

    Example:
        >>> s = generate_open_stream(random.Random(1), filler_source="none")
        >>> sorted({q["kind"] for q in s["questions"]}) <= sorted(QUESTION_KINDS)
        True
    """
    style = open_split_style(split)
    counts = dict(num_updates=num_updates, num_distractors=num_distractors, num_uniform=num_uniform,
                  filler_tokens=filler_tokens, hard_negatives=hard_negatives)
    _check_args(rng, num_entities, counts, filler_source, p_chat)
    attrs = V.attribute_pool(style.attributes)
    chains = _plan_main(rng, style, num_entities, num_updates, bool(retractions) and num_entities >= 2, p_chat, attrs)
    _plan_uniform(rng, style, chains, num_uniform, attrs)
    extras = _plan_distractors(rng, style, chains, num_entities, num_distractors)
    order = _order(rng, chains, extras)
    entities = list({p.entity.name: p.entity for p in order}.values())
    banned = [e.name for e in entities if e.kind != "user"] + [p.value for p in order if p.value]
    filler = _filler(rng, filler_tokens, style, filler_source, banned)
    for _ in range(hard_negatives):
        filler.insert(rng.randint(0, len(filler)), V.hard_negative(rng))
    text, events, index_of = _assemble(rng, order, style, filler)
    return {"id": f"open-{split}-{rng.getrandbits(48):012x}", "split": split, "text": text, "events": events,
            "questions": _questions(rng, chains, extras, style, index_of),
            "entities": [{"name": e.name, "kind": e.kind, "aliases": [e.name]} for e in entities]}


def build_open_dataset(split: str, num_streams: int, seed: int, **stream_kwargs: Any) -> datasets.Dataset:
    """``num_streams`` open streams of ``split`` (defaults ``SPLIT_DEFAULTS``); same arguments, same rows.

    Example:
        >>> ds = build_open_dataset("val_unseen_templates", 2, seed=0, filler_source="none")  # doctest: +SKIP
    """
    open_split_style(split)
    check_positive_int("num_streams", num_streams)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an int, got {type(seed).__name__}")
    rng = random.Random(f"memadapter-open:{seed}:{split}")
    kw = {**SPLIT_DEFAULTS, **stream_kwargs}
    rows = [generate_open_stream(rng, split=split, **kw) for _ in range(num_streams)]
    return datasets.Dataset.from_list(rows, features=stream_features())
