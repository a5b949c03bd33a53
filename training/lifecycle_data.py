"""Natural-language lifecycle streams: facts, updates, retractions, look-alikes, questions.

A stream is plain English that a small model can read: entities (people, projects, products)
get attribute values ("Alice Moreau lives in Lyon."), newer versions ("Update: Alice Moreau moved
to Porto."), retractions, look-alike distractors ("Alicia Moreau lives in Graz."), rumours that
must not be written, and unsignalled facts that are only asked about later. Long streams are
padded with real essay text (``training/filler.py``). Each stream carries character-level
labels (sentence, key and value spans, event type, version, write signal) that exist only as
training targets; inference sees ``text`` and a question and nothing else.

Splits hold out what a model must generalise over: entity names (``test_unseen_entities``),
sentence and question templates (``test_unseen_templates``), attribute types
(``test_unseen_attributes``) and length (``test_long``).

Example:
    >>> import random
    >>> s = generate_stream(random.Random(0), num_entities=2, num_updates=1, num_distractors=1,
    ...                     num_uniform=1)
    >>> e = s["events"][0]
    >>> s["text"][e["key_start"]:e["key_end"]] == e["key_text"]
    True
"""

from __future__ import annotations

import datetime as _dt
import random
import re
from dataclasses import dataclass
from typing import Any, Optional

import datasets

from memadapter._validate import check_positive_int
from memadapter.errors import CapacityError, ConfigError

from .filler import filler_sentences
from .lifecycle_entities import Entity, assign_aliases, lookalike, new_entity, surface
from .lifecycle_vocab import ATTRIBUTES, NOISE_TEMPLATES, RETRACT_TEMPLATES, SIGNAL_PREFIXES, AttributeSpec

__all__ = [
    "ATTRIBUTES", "AttributeSpec", "SPLITS", "SPLIT_DEFAULTS", "DEFAULT_SIZES", "UNKNOWN",
    "generate_stream", "build_dataset", "build_splits", "stream_features", "split_style", "stale_values",
]

SPLITS: tuple[str, ...] = ("train", "validation", "test_unseen_entities", "test_unseen_templates",
                           "test_unseen_attributes", "test_long")
UNKNOWN = "unknown"
KINDS = ("person", "project", "product")
QUESTION_KINDS = ("overwrite", "version", "distractor", "uniform", "retraction", "recall")

# Per-split stream shape used by build_splits; test_long is the "longer streams" held-out split.
_BASE_SHAPE = dict(num_entities=4, num_updates=3, num_distractors=4, num_uniform=2, filler_tokens=256)
SPLIT_DEFAULTS: dict[str, dict[str, int]] = {s: dict(_BASE_SHAPE) for s in SPLITS}
SPLIT_DEFAULTS["test_long"] = dict(num_entities=8, num_updates=8, num_distractors=8, num_uniform=4,
                                   filler_tokens=4096)
DEFAULT_SIZES: dict[str, int] = {"train": 2000, "validation": 200, "test_unseen_entities": 200,
                                 "test_unseen_templates": 200, "test_unseen_attributes": 200, "test_long": 100}


@dataclass(frozen=True)
class SplitStyle:
    """Which pools a split draws from: entity names, templates, attribute types (each 'train'|'heldout'),
    and the share of entities that get a made-up name instead (training splits only)."""

    entities: str
    templates: str
    attributes: str
    synthetic_names: float = 0.0


def split_style(split: str) -> SplitStyle:
    """The pools of ``split``; raises ConfigError for an unknown split."""
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {SPLITS}, got {split!r}")
    return SplitStyle(
        entities="heldout" if split == "test_unseen_entities" else "train",
        templates="heldout" if split == "test_unseen_templates" else "train",
        attributes="heldout" if split == "test_unseen_attributes" else "train",
    )


# ----------------------------------------------------------------------------- sentences

@dataclass
class _Plan:
    """One planned event; rendered into a sentence once the order is fixed."""

    role: str  # main | lookalike | uniform | noise
    event_type: str
    entity: Entity
    attribute: str
    value: Optional[str]
    signal: bool
    version: int = 0
    chain: int = -1  # index of the (entity, attribute) fact this event belongs to


def _render(template: str, fields: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """Fill ``{name}`` fields, returning the text and each field's character span in it."""
    out, spans, pos = [], {}, 0
    for piece in re.split(r"(\{\w+\})", template):
        m = re.fullmatch(r"\{(\w+)\}", piece)
        text = fields[m.group(1)] if m else piece
        if m:
            spans[m.group(1)] = (pos, pos + len(text))
        out.append(text)
        pos += len(text)
    return "".join(out), spans


def _template(rng: random.Random, spec: AttributeSpec, event_type: str, style: SplitStyle) -> str:
    held = style.templates == "heldout"
    if event_type == "retract":
        return rng.choice(RETRACT_TEMPLATES[held])
    if event_type == "irrelevant":
        return rng.choice(NOISE_TEMPLATES[held])
    pool = {"new": (spec.new, spec.heldout_new), "update": (spec.update, spec.heldout_update)}[event_type]
    return rng.choice(pool[held])


def _sentence(rng: random.Random, plan: _Plan, style: SplitStyle, clock: list) -> tuple[str, dict]:
    """Render one event sentence; returns (sentence, label dict with spans relative to it)."""
    spec = ATTRIBUTES[plan.attribute]
    template = _template(rng, spec, plan.event_type, style)
    prefix = ""
    if plan.signal:
        clock[0] += _dt.timedelta(days=rng.randint(1, 20), minutes=rng.randint(0, 600))
        now = clock[0]
        prefix = rng.choice(SIGNAL_PREFIXES[plan.event_type]).format(
            date=f"{now.day} {now:%B %Y}", timestamp=f"{now:%Y-%m-%d %H:%M}", version=plan.version) + " "
    key = surface(rng, plan.entity, 0.3)
    body, spans = _render(template, {"key": key, "value": plan.value or "", "noun": spec.noun})
    # Capitalise after a sentence start ("Update: The Orion kettle ..."), not after "On 3 May 2024,".
    if not prefix or prefix.rstrip()[-1] in ":]":
        body = body[0].upper() + body[1:]
    elif not template.startswith("{key}"):  # "On 3 May 2024, the code for ..." (names keep their capital)
        body = body[0].lower() + body[1:]
    off = len(prefix)
    label = {"key": (spans["key"][0] + off, spans["key"][1] + off),
             "value": (spans["value"][0] + off, spans["value"][1] + off) if "value" in spans else None,
             "template": template}
    return prefix + body, label


def _question(rng: random.Random, plan: _Plan, style: SplitStyle) -> tuple[str, str, str]:
    spec = ATTRIBUTES[plan.attribute]
    template = rng.choice(spec.heldout_questions if style.templates == "heldout" else spec.questions)
    key = surface(rng, plan.entity, 0.5)
    text, _ = _render(template, {"key": key})
    return text[0].upper() + text[1:], key, template


# ----------------------------------------------------------------------------- planning

def _check_counts(num_entities: int, num_updates: int, num_distractors: int, num_uniform: int,
                  filler_tokens: int) -> None:
    check_positive_int("num_entities", num_entities)
    for name, value in (("num_updates", num_updates), ("num_distractors", num_distractors),
                        ("num_uniform", num_uniform), ("filler_tokens", filler_tokens)):
        check_positive_int(name, value, allow_zero=True)


def _attrs_by_kind(style: SplitStyle) -> dict[str, list[str]]:
    held = style.attributes == "heldout"
    return {k: [a.name for a in ATTRIBUTES.values() if k in a.kinds and a.heldout == held] for k in KINDS}


def _fresh_value(rng: random.Random, attribute: str, taken: set) -> str:
    free = [v for v in ATTRIBUTES[attribute].values if v not in taken]
    if not free:
        raise CapacityError(f"num_updates: attribute {attribute!r} has no unused value left ({len(taken)} taken)")
    return rng.choice(free)


def _plan_main(rng: random.Random, style: SplitStyle, n: int, updates: int, retract: bool,
               used: set, by_kind: dict) -> list[list[_Plan]]:
    """Signalled facts of ``n`` main entities, ``updates`` newer versions spread over them, one retraction."""
    chains = []
    for c in range(n):
        kind = rng.choice(KINDS)
        ent, attr = new_entity(rng, kind, style, used), rng.choice(by_kind[kind])
        chains.append([_Plan("main", "new", ent, attr, _fresh_value(rng, attr, set()), True, 1, c)])
    for _ in range(updates):
        chain = rng.choice(chains)
        p = chain[0]
        value = _fresh_value(rng, p.attribute, {q.value for q in chain})
        chain.append(_Plan("main", "update", p.entity, p.attribute, value, True, len(chain) + 1, p.chain))
    if retract:
        chain = rng.choice(chains)
        p = chain[0]
        chain.append(_Plan("main", "retract", p.entity, p.attribute, None, True, len(chain) + 1, p.chain))
    return chains


def _plan_uniform(rng: random.Random, style: SplitStyle, chains: list, n: int, used: set, by_kind: dict) -> None:
    """No-write-signal facts: an unused attribute of a main entity (a hard negative) or a new entity."""
    taken = {(ch[0].entity.name, ch[0].attribute) for ch in chains}
    mains = [ch[0].entity for ch in chains if ch[0].role == "main"]
    for _ in range(n):
        free = [(e, a) for e in mains for a in by_kind[e.kind] if (e.name, a) not in taken]
        if free and rng.random() < 0.5:
            ent, attr = rng.choice(free)
        else:
            kind = rng.choice(KINDS)
            ent, attr = new_entity(rng, kind, style, used), rng.choice(by_kind[kind])
        taken.add((ent.name, attr))
        chains.append([_Plan("uniform", "new", ent, attr, _fresh_value(rng, attr, set()), False, 1, len(chains))])


def _plan_distractors(rng: random.Random, chains: list, n_main: int, n: int) -> list[tuple[int, _Plan]]:
    """Look-alike entities with their own value, and rumours that name the real entity with a wrong value."""
    extras: list[tuple[int, _Plan]] = []
    lookalikes: dict[int, Entity] = {}
    for _ in range(n):
        c = rng.randrange(n_main)
        head = chains[c][0]
        value = _fresh_value(rng, head.attribute, {q.value for q in chains[c]})
        if c not in lookalikes and rng.random() < 0.6:
            lookalikes[c] = lookalike(rng, head.entity)
            extras.append((c, _Plan("lookalike", "new", lookalikes[c], head.attribute, value,
                                    rng.random() < 0.5, 1, len(chains) + len(extras))))
        else:
            extras.append((c, _Plan("noise", "irrelevant", head.entity, head.attribute, value, False, 0, -1)))
    return extras


def _order(rng: random.Random, chains: list[list[_Plan]], extras: list[tuple[int, _Plan]]) -> list[_Plan]:
    """A uniformly random interleaving that keeps each chain in order; distractors after their target's first fact."""
    draws = [c for c, chain in enumerate(chains) for _ in chain]
    rng.shuffle(draws)
    nxt = [0] * len(chains)
    order: list[_Plan] = []
    for c in draws:
        order.append(chains[c][nxt[c]])
        nxt[c] += 1
    for c, plan in extras:
        first = next(i for i, p in enumerate(order) if p is chains[c][0])
        order.insert(rng.randint(first + 1, len(order)), plan)
    return order


# ----------------------------------------------------------------------------- assembly

def _assemble(rng: random.Random, order: list[_Plan], style: SplitStyle,
              filler: list[str]) -> tuple[str, list[dict], dict]:
    """Render sentences in order, scatter filler between them (keeping its order), record char spans."""
    clock = [_dt.datetime(rng.randint(2019, 2024), rng.randint(1, 12), rng.randint(1, 28), 9, 0)]
    gaps = sorted(rng.randint(0, len(order)) for _ in filler)  # gap g = before event g
    pieces: list[str] = []
    events: list[dict] = []
    index_of: dict[int, int] = {}  # id(plan) -> event index
    pos, f = 0, 0

    def emit(piece: str) -> int:
        nonlocal pos
        start = pos + (1 if pieces else 0)  # one space between pieces
        pieces.append(piece)
        pos = start + len(piece)
        return start

    for g, plan in enumerate(order + [None]):
        while f < len(filler) and gaps[f] == g:
            emit(filler[f])
            f += 1
        if plan is None:
            break
        sentence, label = _sentence(rng, plan, style, clock)
        start = emit(sentence)
        ks, ke = label["key"]
        vs, ve = (start + label["value"][0], start + label["value"][1]) if label["value"] else (-1, -1)
        index_of[id(plan)] = len(events)
        events.append({
            "start": start, "end": start + len(sentence), "key_start": start + ks, "key_end": start + ke,
            "value_start": vs, "value_end": ve, "event_type": plan.event_type,
            "entity": plan.entity.name, "attribute": plan.attribute, "value": plan.value,
            "version": plan.version, "signal": plan.signal, "key_text": sentence[ks:ke],
            "template": label["template"], "role": plan.role,
        })
    return " ".join(pieces), events, index_of


def question_kind(chain: list, has_distractor: bool) -> str:
    """The kind of the question about a fact's ``chain`` of events (plans with ``role`` and
    ``event_type``); ``has_distractor``: a look-alike or rumour of it is in the stream. Shared by
    the open-text generator, whose plans carry the same two fields."""
    last, updates = chain[-1], sum(p.event_type == "update" for p in chain)
    if chain[0].role == "uniform":
        return "uniform"
    if last.event_type == "retract":
        return "retraction"
    if has_distractor and updates == 0:
        return "distractor"
    return "version" if updates >= 2 else "overwrite" if updates == 1 else "recall"


def stale_values(chain: list, answer: str) -> list[str]:
    """The values a fact held before its final state, oldest first: the earlier versions in its
    ``chain`` (plans of one entity + attribute, with ``value``), without the gold ``answer`` (a
    chat revert returns to an old value) and without repeats. A look-alike's or a rumour's value is
    never in a chain, so it is never stale. Shared by the open-text and counterfactual generators.

    >>> from types import SimpleNamespace as P
    >>> stale_values([P(value="Lyon"), P(value="Porto"), P(value=None)], "unknown")
    ['Lyon', 'Porto']
    """
    out: list[str] = []
    for plan in chain[:-1]:
        if plan.value is not None and plan.value != answer and plan.value not in out:
            out.append(plan.value)
    return out


def _questions(rng: random.Random, chains: list[list[_Plan]], extras: list[tuple[int, _Plan]],
               style: SplitStyle, index_of: dict[int, int]) -> list[dict]:
    """One question per tracked fact; the answer is its latest version ("unknown" after a retraction),
    ``stale`` lists the fact's earlier values (:func:`stale_values`)."""
    targets = {c for c, p in extras}
    out = []

    def ask(chain: list[_Plan], kind: str) -> None:
        last = chain[-1]
        text, key, template = _question(rng, last, style)
        answer = UNKNOWN if last.event_type == "retract" else last.value
        out.append({"question": text, "answer": answer, "kind": kind, "entity": last.entity.name,
                    "attribute": last.attribute, "answer_event": index_of[id(last)], "key_text": key,
                    "template": template, "stale": stale_values(chain, answer)})

    for c, chain in enumerate(chains):
        ask(chain, question_kind(chain, c in targets))
    for _, plan in extras:
        if plan.role == "lookalike" and rng.random() < 0.5:
            ask([plan], "distractor")  # the look-alike has its own value; asking for it checks both directions
    rng.shuffle(out)
    return out


def generate_stream(rng: random.Random, *, split: str = "train", num_entities: int = 4, num_updates: int = 3,
                    num_distractors: int = 4, num_uniform: int = 2, filler_tokens: int = 0,
                    retractions: bool = True, filler_source: str = "auto", synthetic_names: float = 0.0) -> dict:
    """One lifecycle stream with its training labels and questions (see the module docstring).

    Deterministic given the state of ``rng``. ``filler_tokens`` of real essay text (approximate
    tokens) are scattered between the event sentences. One main fact is retracted when
    ``retractions`` and there are at least two main entities. ``synthetic_names``: the share of
    entities named by :func:`~memadapter.training.lifecycle_entities.synthetic_word` instead of the
    split's pools (splits with training names only; never a held-out name).
    """
    if not isinstance(rng, random.Random):
        raise ConfigError(f"rng: expected a random.Random, got {type(rng).__name__}")
    style = split_style(split)
    if isinstance(synthetic_names, bool) or not isinstance(synthetic_names, (int, float)) \
            or not 0.0 <= synthetic_names <= 1.0:
        raise ConfigError(f"synthetic_names: expected a share in [0, 1], got {synthetic_names!r}")
    if synthetic_names > 0 and style.entities != "train":
        raise ConfigError(f"synthetic_names: split {split!r} tests unseen names; made-up names are for training splits")
    style = SplitStyle(style.entities, style.templates, style.attributes, float(synthetic_names))
    _check_counts(num_entities, num_updates, num_distractors, num_uniform, filler_tokens)
    used: set = set()
    by_kind = _attrs_by_kind(style)
    chains = _plan_main(rng, style, num_entities, num_updates, bool(retractions) and num_entities >= 2, used, by_kind)
    _plan_uniform(rng, style, chains, num_uniform, used, by_kind)
    extras = _plan_distractors(rng, chains, num_entities, num_distractors)
    entities = list({id(p.entity): p.entity for ch in chains for p in ch}.values())
    entities += [p.entity for _, p in extras if p.role == "lookalike"]
    assign_aliases(entities)
    order = _order(rng, chains, extras)
    banned = [s for e in entities for s in (e.name, *e.alias_candidates)]
    filler = filler_sentences(filler_tokens, rng, source=filler_source, exclude=banned) if filler_tokens else []
    text, events, index_of = _assemble(rng, order, style, filler)
    return {
        "id": f"{split}-{rng.getrandbits(48):012x}", "split": split, "text": text, "events": events,
        "questions": _questions(rng, chains, extras, style, index_of),
        "entities": [{"name": e.name, "kind": e.kind, "aliases": list(e.aliases)} for e in entities],
    }


# ----------------------------------------------------------------------------- datasets

def stream_features() -> datasets.Features:
    """The explicit schema of a stream row (absent value spans are -1, an absent value is None)."""
    v = datasets.Value
    event = {"start": v("int32"), "end": v("int32"), "key_start": v("int32"), "key_end": v("int32"),
             "value_start": v("int32"), "value_end": v("int32"), "event_type": v("string"), "entity": v("string"),
             "attribute": v("string"), "value": v("string"), "version": v("int32"), "signal": v("bool"),
             "key_text": v("string"), "template": v("string"), "role": v("string")}
    question = {"question": v("string"), "answer": v("string"), "kind": v("string"), "entity": v("string"),
                "attribute": v("string"), "answer_event": v("int32"), "key_text": v("string"), "template": v("string"),
                "stale": datasets.List(v("string"))}
    entity = {"name": v("string"), "kind": v("string"), "aliases": datasets.List(v("string"))}
    return datasets.Features({
        "id": v("string"), "split": v("string"), "text": v("string"), "events": datasets.List(event),
        "questions": datasets.List(question), "entities": datasets.List(entity),
    })


def build_dataset(split: str, num_streams: int, seed: int, **stream_kwargs: Any) -> datasets.Dataset:
    """``num_streams`` streams of ``split``; the same (split, seed, kwargs) always gives the same rows."""
    split_style(split)
    check_positive_int("num_streams", num_streams)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an int, got {type(seed).__name__}")
    rng = random.Random(f"memadapter-lifecycle:{seed}:{split}")  # str seeds hash stably across runs
    rows = [generate_stream(rng, split=split, **stream_kwargs) for _ in range(num_streams)]
    return datasets.Dataset.from_list(rows, features=stream_features())


def build_splits(seed: int = 0, sizes: Optional[dict[str, int]] = None,
                 shapes: Optional[dict[str, dict[str, Any]]] = None, **kw: Any) -> datasets.DatasetDict:
    """All six splits with ``SPLIT_DEFAULTS`` shapes; ``kw`` overrides every split's stream kwargs.

    ``sizes`` maps split -> number of streams (missing splits use ``DEFAULT_SIZES``; 0 skips a split);
    ``shapes`` maps split -> stream kwargs for that split only (e.g. ``{"test_long": {"filler_tokens": 30000}}``).
    """
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    shapes = shapes or {}
    for name, given in (("sizes", sizes), ("shapes", shapes)):
        unknown = set(given) - set(SPLITS)
        if unknown:
            raise ConfigError(f"{name}: unknown split(s) {sorted(unknown)}; expected names from {SPLITS}")
    out = {}
    for split in SPLITS:
        if sizes[split]:
            out[split] = build_dataset(split, sizes[split], seed,
                                       **{**SPLIT_DEFAULTS[split], **kw, **shapes.get(split, {})})
    return datasets.DatasetDict(out)
