"""Phase 13's controlled samples: vocabulary, templates per split, and the sample generator.

Names, surnames and sentence templates are split three ways (train / val / test), so that
calibration and evaluation see entities and sentence structures never seen in training. Integer
key ids, targets and write labels are generator metadata: the oracle protocol reads key ids (paper
section 2.4), the learned protocol reads them only as training targets.

Example:
    >>> import random
    >>> s = make_sample("versioning", 16, random.Random(0), split="train")
    >>> len(s.events), s.write_labels[s.target], s.key_ids[s.target] == s.query_key_id
    (16, 1, True)
"""

from __future__ import annotations

import random
from dataclasses import astuple, dataclass
from typing import Optional, Sequence

from memadapter.errors import ConfigError

# ----------------------------------------------------------------------------- vocabulary
# Names are split three ways so that calibration (val) and evaluation (test) see unseen entities.
_NAMES = {
    "train": ("abel bria cato dara eno fia gus hana ivo jana kip lora milo nia oren pia quin rhea "
              "saul tia ugo vera wes xia").split(),
    "val": "bex cyra dov elke fenn gia hux ines jory kaia lev mina".split(),
    "test": "ansel bodil corin delia emrys faye gideon hollis idris jessa kenji lysa".split(),
}
_SURNAMES = {
    "train": ("ashby brook colt drake ellis frost grove hale irwin jett knox lane moss nash oakes "
              "pike reed stone").split(),
    "val": "aldo birch cove dunn eames fisk garth holt".split(),
    "test": "ardent bramble cask dorsey ember fallow gable hearth".split(),
}
VALUES = {
    "city": "paris london rome berlin oslo madrid vienna prague lisbon dublin cairo tokyo".split(),
    "color": "red blue green amber violet teal ochre pink ivory coral".split(),
    "code": "alpha bravo delta echo foxtrot golf hotel kilo lima sierra".split(),
}
ATTRIBUTES = tuple(VALUES)
KINDS = ("fact", "update", "rumor", "plain")  # fact/update are write-signalled, rumor/plain are not
WRITE_KINDS = ("fact", "update")
# Templates: the signal word (note/update/rumor) is shared by every split because a random tiny
# backbone carries no meaning; what is held out is the sentence structure and filler words.
_T = {
    "train": {
        "city": ("note : {e} lives in {v} .", "update : {e} moved to {v} .",
                 "rumor : {e} lives in {v} .", "{e} lives in {v} ."),
        "color": ("note : {e} likes the color {v} .", "update : {e} now likes the color {v} .",
                  "rumor : {e} likes the color {v} .", "{e} likes the color {v} ."),
        "code": ("note : the code of {e} is {v} .", "update : the code of {e} was changed to {v} .",
                 "rumor : the code of {e} is {v} .", "the code of {e} is {v} ."),
    },
    "val": {
        "city": ("note , {e} lives in {v} today .", "update , {e} has moved to {v} .",
                 "rumor , {e} lives in {v} today .", "today {e} lives in {v} ."),
        "color": ("note , the color {e} likes is {v} .", "update , the color {e} likes is now {v} .",
                  "rumor , the color {e} likes is {v} .", "the color {e} likes is {v} ."),
        "code": ("note , {e} has the code {v} .", "update , {e} has the new code {v} .",
                 "rumor , {e} has the code {v} .", "{e} has the code {v} ."),
    },
    "test": {
        "city": ("note : in {v} lives {e} .", "update : to {v} moved {e} .",
                 "rumor : in {v} lives {e} .", "in {v} lives {e} ."),
        "color": ("note : {v} is the color {e} likes .", "update : {v} is now the color {e} likes .",
                  "rumor : {v} is the color {e} likes .", "{v} is the color {e} likes ."),
        "code": ("note : {v} is the code of {e} .", "update : {v} is now the code of {e} .",
                 "rumor : {v} is the code of {e} .", "{v} is the code of {e} ."),
    },
}
_Q = {
    "train": {"city": "where does {e} live ?", "color": "what color does {e} like ?",
              "code": "what is the code of {e} ?"},
    "val": {"city": "in which city does {e} live ?", "color": "which color does {e} like ?",
            "code": "which code does {e} have ?"},
    "test": {"city": "tell me where {e} lives ?", "color": "tell me the color {e} likes ?",
             "code": "tell me the code of {e} ?"},
}
# Extra train-split paraphrases (``augment=True``): other words and word orders for the same facts
# and questions, so the learned key has to ignore sentence structure. The val and test templates
# stay unseen; tests check that none of these equals one of theirs.
_T_EXTRA = {
    "city": (("note : the home city of {e} is {v} .", "update : the home city of {e} became {v} .",
              "rumor : the home city of {e} is {v} .", "the home city of {e} is {v} ."),
             ("note : {v} is home to {e} .", "update : {v} became home to {e} .",
              "rumor : {v} is home to {e} .", "{v} is home to {e} .")),
    "color": (("note : the favourite color of {e} is {v} .", "update : the favourite color of {e} became {v} .",
               "rumor : the favourite color of {e} is {v} .", "the favourite color of {e} is {v} ."),
              ("note : {v} suits {e} best .", "update : {v} suits {e} best from now on .",
               "rumor : {v} suits {e} best .", "{v} suits {e} best .")),
    "code": (("note : {e} uses the code {v} .", "update : {e} switched to the code {v} .",
              "rumor : {e} uses the code {v} .", "{e} uses the code {v} ."),
             ("note : {v} opens the safe of {e} .", "update : {v} opens the safe of {e} from now on .",
              "rumor : {v} opens the safe of {e} .", "{v} opens the safe of {e} .")),
}
_Q_EXTRA = {
    "city": ("what is the home city of {e} ?", "which city is home to {e} ?"),
    "color": ("what is the favourite color of {e} ?", "which color suits {e} best ?"),
    "code": ("which code does {e} use ?", "what opens the safe of {e} ?"),
}
# Extra val-split paraphrases (``augment=True`` on val): value-first word orders, which the base
# val templates lack and the test templates have; a causal backbone then reads the name after the
# value, so the name's states carry the value. Appositives, a structure of no train or test
# template (tests check it), built from words the train split has ("home", "color", "code"), as the
# test templates are, so a random tiny backbone can still tell the attribute. Questions may be
# imperative ("say which ..."), a form no train question has.
_T_VAL_EXTRA = {
    "city": (("note , {v} , home of {e} .", "update , {v} , new home of {e} .",
              "rumor , {v} , home of {e} .", "{v} , home of {e} ."),),
    "color": (("note , {v} , the favourite color of {e} .", "update , {v} , the new favourite color of {e} .",
               "rumor , {v} , the favourite color of {e} .", "{v} , the favourite color of {e} ."),),
    "code": (("note , {v} , the code of {e} .", "update , {v} , the new code of {e} .",
              "rumor , {v} , the code of {e} .", "{v} , the code of {e} ."),),
}
_Q_VAL_EXTRA = {  # imperative questions: every base val (and train) question begins with a wh-word
    "city": ("say which city {e} lives in ?",),
    "color": ("say which color {e} likes ?",),
    "code": ("say which code {e} has ?",),
}
_EXTRAS = {"train": (_T_EXTRA, _Q_EXTRA), "val": (_T_VAL_EXTRA, _Q_VAL_EXTRA)}
# Separators after the signal word for train sentences (``separators=True``): every train template
# writes "note :", so a writer can learn the ":" instead of the word before it, and an unseen
# separator (the val split's ",") then hides every signal. Val's "," is not among them.
_SEPARATORS = (":", "-", ";", "!", "|")
# Lead-in words before a train plain statement (``lead_ins=True``): no train statement begins with a
# word the writer has not seen in that place, so an unseen first word (val's "today") can look like a
# signal to it. None of these is a val or test word.
_LEAD_INS = ("also", "meanwhile", "indeed", "besides", "anyway", "again")
# Lead words before a train question (``question_leads=True``): every train question begins with a
# wh-word, so the query key can lean on its first token and an unseen opening ("say which ...")
# moves it. None of these is a val or test word.
_QUESTION_LEADS = ("please", "now", "kindly", "quickly", "okay", "so")
SPLITS = tuple(_T)
SETTINGS = ("recall", "versioning", "distractor", "uniform", "hardneg", "streaming")
# Ten evaluation settings up to 2,048 events (the paper's count and longest length).
EVAL_SETTINGS = (("recall_64", "recall", 64), ("versioning_64", "versioning", 64),
                 ("distractor_64", "distractor", 64), ("uniform_64", "uniform", 64),
                 ("hardneg_64", "hardneg", 64), ("streaming_128", "streaming", 128),
                 ("streaming_256", "streaming", 256), ("streaming_512", "streaming", 512),
                 ("streaming_1024", "streaming", 1024), ("streaming_2048", "streaming", 2048))
MAX_KEYS = 256  # canonical key ids are per sample, below this bound



def vocabulary() -> list[str]:
    """Every word the generator can emit, plus canonical-key words, sorted (for a word-level tokenizer)."""
    words = {"entity", *map(str, range(MAX_KEYS))}
    for pool in (_NAMES, _SURNAMES):
        for names in pool.values():
            words.update(names)
    for vals in VALUES.values():
        words.update(vals)
    for table in (_T, _Q):
        for split in table.values():
            for tpl in split.values():
                words.update(_template_words(tpl if isinstance(tpl, tuple) else (tpl,)))
    # New words go after the sorted base, block by block in the order they were added, so every
    # earlier word keeps its id.
    def words_of(t_extra, q_extra):
        return set(_template_words(t for rows in t_extra.values() for row in rows for t in row)) | \
            set(_template_words(t for qs in q_extra.values() for t in qs))

    out = sorted(words)
    for block in (words_of(_T_EXTRA, _Q_EXTRA), _SEPARATORS, _LEAD_INS, words_of(_T_VAL_EXTRA, _Q_VAL_EXTRA),
                  _QUESTION_LEADS):
        out += sorted(set(block) - set(out))
    return out


def _template_words(templates) -> list[str]:
    return [w for t in templates for w in t.split() if not w.startswith("{")]


# ----------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One controlled sample. key_ids/value_ids/target/write_labels are generator metadata: the
    oracle protocol reads key_ids (section 2.4), the learned protocol reads them only as targets."""

    events: list[str]
    query: str
    key_ids: list[int]  # per event: per-sample integer id of (entity, attribute)
    value_ids: list[int]  # per event: index into VALUES[attribute]
    target: int  # index of the event that answers the query
    write_labels: list[int]  # per event: 1 for signalled facts and updates
    setting: str
    split: str = "train"

    @property
    def query_key_id(self) -> int:
        """The oracle query key: selected from metadata via the target event index (paper 2.4)."""
        return self.key_ids[self.target]


Entity = tuple[str, str]
Event = tuple[str, Entity, str, int]  # (kind, entity, attribute, value index)


@dataclass(frozen=True)
class Wording:
    """Train-only variations of how sentences begin, so that neither the writer nor the query key
    can lean on one token in one place: ``separators`` draws the separator after a signal word from
    ``_SEPARATORS``; ``lead_ins`` puts a word of ``_LEAD_INS`` before 30% of plain statements;
    ``question_leads`` one of ``_QUESTION_LEADS`` before half the questions.

    Example:
        >>> import random
        >>> s = make_sample("recall", 16, random.Random(0), wording=Wording(separators=True))
        >>> sorted({e.split()[1] for e in s.events if e.split()[0] == "note"})
        ['!', '-', ':', ';', '|']
    """

    separators: bool = False
    lead_ins: bool = False
    question_leads: bool = False


class _Gen:
    """Places labelled events at random positions and fills the rest with background facts."""

    def __init__(self, rng: random.Random, split: str, n: int, augment: bool = False,
                 wording: Optional[Wording] = None) -> None:
        if split not in SPLITS:
            raise ConfigError(f"split: unknown {split!r}; choose from {list(SPLITS)}")
        if augment and split not in _EXTRAS:
            raise ConfigError(f"augment: paraphrased templates exist for the train and val splits only, "
                              f"got split {split!r}")
        wording = wording or Wording()
        if any(astuple(wording)) and split != "train":
            raise ConfigError(f"wording: {wording} varies sentence starts, for the train split only, got split {split!r}")
        self.rng, self.split, self.n, self.augment, self.wording = rng, split, n, augment, wording
        self.entities = [(a, b) for a in _NAMES[split] for b in _SURNAMES[split]]
        self.placed: dict[int, Event] = {}
        self.reserved: set[Entity] = set()

    def entity(self) -> Entity:
        ent = self.rng.choice([e for e in self.entities if e not in self.reserved])
        self.reserved.add(ent)
        return ent

    def lookalike(self, ent: Entity) -> Entity:
        """Same first name, other surname: shares a token with ``ent``."""
        pool = [e for e in self.entities if e[0] == ent[0] and e not in self.reserved]
        out = self.rng.choice(pool)
        self.reserved.add(out)
        return out

    def positions(self, count: int, lo: float = 0.0, hi: float = 1.0) -> list[int]:
        cells = [p for p in range(int(lo * self.n), int(hi * self.n)) if p not in self.placed]
        if len(cells) < count:
            raise ConfigError(f"n_events: {self.n} events cannot hold {count} placed events in [{lo}, {hi})")
        return sorted(self.rng.sample(cells, count))

    def place(self, pos: int, ev: Event) -> None:
        self.placed[pos] = ev

    def value(self, attr: str, avoid: Sequence[int] = ()) -> int:
        return self.rng.choice([v for v in range(len(VALUES[attr])) if v not in avoid])

    def background(self) -> list[Event]:
        """Ordinary (unsignalled) facts and a few rumours about entities the query never asks."""
        pool = [e for e in self.entities if e not in self.reserved]
        pool = self.rng.sample(pool, min(40, len(pool)))
        out = []
        for _ in range(self.n):
            kind = "rumor" if self.rng.random() < 0.1 else "plain"
            attr = self.rng.choice(ATTRIBUTES)
            out.append((kind, self.rng.choice(pool), attr, self.value(attr)))
        return out

    def pick(self, options: tuple):
        """One of ``options``; a single option takes no random draw, so unaugmented samples are unchanged."""
        return options[self.rng.randrange(len(options))] if len(options) > 1 else options[0]

    def render(self, ev: Event) -> str:
        kind, ent, attr, val = ev
        row = self.pick((_T[self.split][attr],) + (_EXTRAS[self.split][0][attr] if self.augment else ()))
        text = row[KINDS.index(kind)].format(e=" ".join(ent), v=VALUES[attr][val])
        if self.wording.separators and kind != "plain":  # "note : ..." -> "note - ..."
            signal, _, rest = text.split(" ", 2)
            text = f"{signal} {self.rng.choice(_SEPARATORS)} {rest}"
        if self.wording.lead_ins and kind == "plain" and self.rng.random() < 0.3:
            text = f"{self.rng.choice(_LEAD_INS)} {text}"
        return text

    def question(self, ent: Entity, attr: str) -> str:
        q = self.pick((_Q[self.split][attr],) + (_EXTRAS[self.split][1][attr] if self.augment else ()))
        q = q.format(e=" ".join(ent))
        if self.wording.question_leads and self.rng.random() < 0.5:
            q = f"{self.rng.choice(_QUESTION_LEADS)} {q}"
        return q

    def build(self, setting: str, query: tuple[Entity, str], target_pos: int) -> Sample:
        back = self.background()
        events = [self.placed.get(p, back[p]) for p in range(self.n)]
        ids: dict[tuple[Entity, str], int] = {}
        key_ids = [ids.setdefault((e[1], e[2]), len(ids)) for e in events]
        if len(ids) > MAX_KEYS:  # pragma: no cover - 40 background entities x 3 attributes + targets
            raise ConfigError(f"n_events: {len(ids)} distinct keys exceed MAX_KEYS {MAX_KEYS}")
        text = self.question(*query)
        return Sample([self.render(e) for e in events], text, key_ids, [e[3] for e in events], target_pos,
                      [int(e[0] in WRITE_KINDS) for e in events], setting, self.split)


def _uniform(g: _Gen, setting: str) -> Sample:
    keys = [(e, a) for e in g.entities for a in ATTRIBUTES]
    if g.n > len(keys):
        raise ConfigError(f"n_events: uniform recall uses distinct keys, at most {len(keys)}, got {g.n}")
    for pos, (ent, attr) in enumerate(g.rng.sample(keys, g.n)):
        g.reserved.add(ent)
        g.place(pos, ("plain", ent, attr, g.value(attr)))
    q = g.rng.randrange(g.n)
    return g.build(setting, (g.placed[q][1], g.placed[q][2]), q)


def _chain(g: _Gen, ent: Entity, attr: str, positions: Sequence[int]) -> int:
    """fact then updates with fresh values at ``positions`` (sorted); returns the latest position."""
    used: list[int] = []
    for i, pos in enumerate(positions):
        used.append(g.value(attr, used))
        g.place(pos, ("fact" if i == 0 else "update", ent, attr, used[-1]))
    return positions[-1]


def make_sample(setting: str, n_events: int, rng: random.Random, split: str = "train",
                augment: bool = False, wording: Optional[Wording] = None) -> Sample:
    """One seeded controlled sample of ``setting`` with ``n_events`` events from ``split``'s names/templates.

    ``augment`` (train and val splits): each sentence and the question take one of several
    paraphrased templates instead of the split's single one. ``wording`` (train split only): how
    sentences and questions may begin (:class:`Wording`)."""
    if setting not in SETTINGS:
        raise ConfigError(f"setting: unknown {setting!r}; choose from {list(SETTINGS)}")
    g = _Gen(rng, split, n_events, augment, wording)
    if setting == "uniform":
        return _uniform(g, setting)
    if setting == "recall":
        keys = [(g.entity(), rng.choice(ATTRIBUTES)) for _ in range(8)]
        for pos, (ent, attr) in zip(g.positions(8), keys):
            g.place(pos, ("fact", ent, attr, g.value(attr)))
        q = rng.randrange(8)
        pos = sorted(g.placed)[q]
        return g.build(setting, (g.placed[pos][1], g.placed[pos][2]), pos)
    if setting == "versioning":
        keys = [(g.entity(), rng.choice(ATTRIBUTES)) for _ in range(4)]
        order = [i for i in range(4) for _ in range(3)]
        rng.shuffle(order)
        slots = g.positions(12)
        latest = [_chain(g, *keys[i], [p for p, j in zip(slots, order) if j == i]) for i in range(4)]
        q = rng.randrange(4)
        return g.build(setting, keys[q], latest[q])
    if setting == "distractor":
        keys = [(g.entity(), rng.choice(ATTRIBUTES)) for _ in range(4)]
        facts = [(p, (ent, attr)) for p, (ent, attr) in zip(g.positions(4, 0.0, 0.2), keys)]
        for p, (ent, attr) in facts:
            g.place(p, ("fact", ent, attr, g.value(attr)))
        noise: list[Event] = []
        for p, (ent, attr) in facts:  # rumours of the same key, a look-alike, the same entity's other attribute
            noise += [("rumor", ent, attr, g.value(attr, [g.placed[p][3]])) for _ in range(2)]
            noise.append(("fact", g.lookalike(ent), attr, g.value(attr)))
            other = rng.choice([a for a in ATTRIBUTES if a != attr])
            noise.append(("fact", ent, other, g.value(other)))
        rng.shuffle(noise)
        for pos, ev in zip(g.positions(len(noise), 0.2, 1.0), noise):
            g.place(pos, ev)
        q = rng.randrange(4)
        return g.build(setting, facts[q][1], facts[q][0])
    if setting == "hardneg":
        ent, attr = g.entity(), rng.choice(ATTRIBUTES)
        other = rng.choice([a for a in ATTRIBUTES if a != attr])
        last = _chain(g, ent, attr, g.positions(2, 0.0, 0.8))
        _chain(g, g.lookalike(ent), attr, g.positions(2, 0.0, 1.0))
        _chain(g, ent, other, g.positions(2, 0.0, 1.0))
        g.place(g.positions(1, 0.8, 1.0)[0], ("rumor", ent, attr, g.value(attr, [g.placed[last][3]])))
        return g.build(setting, (ent, attr), last)
    ent, attr = g.entity(), rng.choice(ATTRIBUTES)  # streaming
    g.place(g.positions(1, 0.0, 0.1)[0], ("fact", ent, attr, g.value(attr)))
    upd = g.positions(1, 0.5, 0.9)[0]
    g.place(upd, ("update", ent, attr, g.value(attr)))
    for pos in g.positions(2, 0.9, 1.0):
        g.place(pos, ("rumor", ent, attr, g.value(attr, [g.placed[upd][3]])))
    return g.build(setting, (ent, attr), upd)


def make_samples(split: str, count: int, seed: int, settings: Sequence[tuple[str, str, int]],
                 augment: bool = False) -> dict[str, list[Sample]]:
    """``count`` samples spread over ``settings`` (name, setting, events), seeded; -> name -> samples."""
    rng = random.Random(f"{split}:{seed}")
    per = [count // len(settings) + (i < count % len(settings)) for i in range(len(settings))]
    return {name: [make_sample(s, n, rng, split, augment) for _ in range(k)] for (name, s, n), k in zip(settings, per)}
