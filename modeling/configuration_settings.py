"""The settings a trained adapter may change, nested in ``MemAdapterConfig`` as ``config.ingest`` and
``config.read``: what ingest writes (:class:`IngestConfig`) and how a question selects from memory
(:class:`ReadConfig`). Neither changes a module or a shape, so neither is part of the adapter's
fingerprint; their field names are the names ``generation_eval --set`` accepts.

Every field carries its reason in ``metadata["help"]`` (as peft's ``LoraConfig`` does), and each
class validates itself on construction; errors name the field as ``read.<field>`` / ``ingest.<field>``.

Example:
    >>> ReadConfig.coerce({"lexical_weight": 0.3}) == ReadConfig(lexical_weight=0.3)
    True
    >>> ReadConfig.coerce({"lexical_wieght": 0.3})
    Traceback (most recent call last):
    ...
    memadapter.errors.ConfigError: read.lexical_wieght: unknown setting; a ReadConfig has no such field
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from memadapter._validate import MAX_SIZES
from memadapter.errors import ConfigError

LEXICAL_TEXTS = ("key", "sentence")
CHUNK_BOUNDARIES = ("tokens", "sentence")
NAMED_EVENTS = ("best", "any")
READ_RULES = ("route", "joint")
VERSION_EVENTS = ("update", "any")


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": " ".join(text.split())})


class _Settings:
    """What both sub-configs share: construction from a dict or an instance, dict output, and the
    type checks of their bool and choice fields."""

    section: ClassVar[str]

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """An instance (copied, so two configs never share one), a dict of its fields (an unknown
        key is a ConfigError naming ``<section>.<key>``), or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return dataclasses.replace(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{cls.section}: expected a dict or a {cls.__name__}, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in cls.names())
        if unknown:
            raise ConfigError(f"{cls.section}.{unknown[0]}: unknown setting; a {cls.__name__} has no such field"
                              + (f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""))
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in dataclasses.fields(self):  # every switch is validated by its annotation
            if f.type in ("bool", bool) and not isinstance(getattr(self, f.name), bool):
                raise ConfigError(f"{self._name(f.name)}: expected a bool, got {getattr(self, f.name)!r}")

    def _name(self, name: str) -> str:
        return f"{self.section}.{name}"

    def _choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ConfigError(f"{self._name(name)}: must be one of {', '.join(choices)}, got {getattr(self, name)!r}")

    def _number(self, name: str, low: Optional[float] = None, high: Optional[float] = None,
                optional: bool = False) -> None:
        """A finite number within [low, high] (None allowed with ``optional``)."""
        value = getattr(self, name)
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{self._name(name)}: must be a finite number{' or None' if optional else ''}, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ConfigError(f"{self._name(name)}: must be {'None or ' if optional else ''}{bounds}, got {value}")

    def _count(self, name: str, allow_zero: bool = False, optional: bool = False) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        check_count(self._name(name), value, allow_zero=allow_zero, limit=name)


@dataclass
class IngestConfig(_Settings):
    """What ingest writes into the slot memory; changing one needs a new ingest, not new weights.

    Example:
        >>> IngestConfig(chunk_boundary="sentence", retract_tombstones=True).slot_match_threshold
        0.8
    """

    section: ClassVar[str] = "ingest"

    chunk_boundary: str = _help("tokens", """Where ingest cuts the stream: "tokens" (every chunk_tokens tokens)
        or "sentence" (after the last sentence end in a chunk's second half; needs a tokenizer). Each chunk is
        read on its own, so a fixed cut inside a fact leaves its key in one chunk and its value in the next.""")
    slot_match_threshold: float = _help(0.8, "Key cosine from which a candidate is the same fact (overwrite).")
    slot_update_match_threshold: Optional[float] = _help(None, """Updates and retractions claim an earlier
        version exists: the key cosine from which they match a slot (None: slot_match_threshold).""")
    retract_tombstones: bool = _help(False, """A retraction leaves a withdrawn record (else it frees the slot),
        so a question learns "no longer known" instead of reading an older fact.""")
    slot_update_name_weight: float = _help(0.0, """Updates and retractions add this weight times the word overlap
        of their key text with each slot's key text to the key cosine when they look for the slot they revise
        (SlotMemory's update_name_weight): learned keys of look-alike names ("Priya", "Priyam") sit close.
        0 = keys alone.""")
    snap_spans: bool = _help(False, """Widen the tagger's key and value spans to whole words (by the tokenizer's
        text) before they are pooled and written: a span cut inside a word ("Mer" of "Meridian", "Daniel" of
        "Daniela", "2" of "210") names or says something else.""")
    pair_in_sentence: bool = _help(False, """Pair a key only with a value in its own sentence: a retraction has
        no value, and the next value tagged after it (in the following sentence or filler) is not its value.""")

    def validate(self) -> None:
        super().validate()
        self._choice("chunk_boundary", CHUNK_BOUNDARIES)
        self._number("slot_match_threshold", -1.0, 1.0)
        self._number("slot_update_match_threshold", -1.0, 1.0, optional=True)
        self._number("slot_update_name_weight", 0.0)


@dataclass
class ReadConfig(_Settings):
    """How a question selects what memory answers it; read only at select time, so one ingested
    memory can be read under several ReadConfigs (``experiments/generation_read_sweep.py``).

    Example:
        >>> ReadConfig(ground_fallback=True, read_rule="joint").named_events
        'best'
        >>> ReadConfig(read_rule="joint")
        Traceback (most recent call last):
        ...
        memadapter.errors.ConfigError: read.read_rule: 'joint' grounds the retrieved chunks; it needs read.ground_fallback=True
    """

    section: ClassVar[str] = "read"

    # --- router ---
    router_match_threshold: float = _help(0.5, "Slot score above which the memory branch answers.")
    router_confidence_threshold: float = _help(0.5, "Slot confidence below which a slot is ignored.")
    # --- lexical evidence ---
    lexical_weight: float = _help(0.0, """Weight of the question's lexical agreement with each key text (BM25
        over the candidates, scaled to [0, 1]) added to the learned key cosine when choosing a slot or a fallback
        event: exact evidence for names the learned keys never saw. 0 = learned keys alone.""")
    lexical_text: str = _help("key", """What the question's words are matched against: "key" (the key span:
        names) or "sentence" (the event's whole sentence, re-read from the chunk: relation words such as
        "deadline" or "phone" then tell apart two facts about one entity).""")
    lexical_content_words: bool = _help(False, """Only the question's content words count for lexical agreement,
        not "now", "where" or "does": a "now" in another attribute's update ("Louise now lives in Utrecht")
        otherwise outscores the asked fact for "Where does Louise work now?".""")
    # --- chunk fallback ---
    ground_fallback: bool = _help(False, """Fallback: re-read the retrieved chunks at query time and inject the
        proposed event whose key best matches the question (an unwritten fact becomes a slot-like entry); else
        chunk summaries. On for trained adapters; an untrained head would guess.""")
    fallback_chunks: Optional[int] = _help(None, """Chunks the fallback retrieves (None: top_k). With
        ground_fallback the one best event among them is injected, so more chunks widen the search without
        lengthening the prompt.""")
    name_chunks: int = _help(0, """Chunks read beside the fallback_chunks (joint read, named events): up to this
        many more that the question's names (capitalised words, numbers) alone rank first by BM25. A fact stated
        in other words than the question's ("is employed by" for "work for") loses the hybrid search to filler
        that shares the common words; its entity's name is rare in the filler.""")
    named_events: str = _help("best", """A grounded event whose key text names more of the question's words than
        the selected slot's (a look-alike the question asks about, "the Lumen Mini printer", beside the slot of
        "the Lumen printer") replaces the slot: "best" when it is the best-scoring event, "any" when it is the
        best of the events that name more.""")
    # --- versions ---
    version_margin: Optional[float] = _help(None, """Versions of one fact match a question about equally well;
        the stream says which is current. With a margin, the best slot (or grounded event) gives way to its
        latest version: a slot written later (an event later in the stream and typed as an update) that scores
        within the margin of it and whose key has cosine >= version_key_cosine with its key; a grounded update
        later than the selected slot's own event replaces the slot on the same terms (an update the write path
        missed). None = the best score alone.""")
    version_key_cosine: float = _help(0.7, "Key cosine from which two entries are versions of one fact.")
    # --- the joint read ---
    read_rule: str = _help("route", """How a question's entry is chosen. "route": the router picks the slots or
        the fallback, then the rules above act within that branch. "joint" (needs ground_fallback): the usable
        slots and the events grounded in the retrieved chunks compete on one score, entries that name fewer of
        the question's words than another drop out, and the best gives way to its latest version.""")
    name_fragments: bool = _help(False, """"joint": a key word of 4+ letters that begins or ends a question word
        names it (a key span cut inside a name, "Toumuch" for "Toumuchol", does not then drop out as naming
        less).""")
    foreign_names: bool = _help(False, """"joint": an entry whose key carries a name the question does not
        ("Paul Brandt" for Martin Brandt) drops out when another names as many of the question's words without
        one.""")
    withdrawn_margin: Optional[float] = _help(None, """"joint": a withdrawn slot (a tombstone) later than the
        picked entry, whose key has cosine >= version_key_cosine with the pick's, replaces it when it scores
        within this margin of it (None: only within version_margin, like any version). A retraction's sentence
        ("Please forget X's price") matches a question about the fact more weakly than the fact's own
        sentences do.""")
    withdrawn_cover: Optional[float] = _help(None, """"joint": a withdrawn slot later than the picked entry
        replaces it when its sentence names every question word that the pick's sentence names and either names
        more of them or has key cosine >= this with the pick's key (None: off). The words tell the withdrawal of
        the asked fact from that of another attribute of the entity; sentences, not key texts, since a
        retraction's key span is often the bare name ("Atlas").""")
    restore_by_sentence: bool = _help(False, """"joint": an entry whose key text names fewer of the question's
        words than another's (and so drops out) is put back when its sentence names every question word that
        each remaining entry's sentence names: a key span cut short ("Pripis" for "Gustao Pripis") is no
        look-alike.""")
    restore_by_attribute: bool = _help(False, """"joint": an entry that drops out by its key text is put back
        when its sentence names a word of the asked entity that a remaining entry's sentence names and a content
        word of the question that none of theirs names (the attribute): "Trudegreisa's phone number is ..."
        beside sentences about Trudegreisa Katum's city and employer. An entry with a foreign name (see
        foreign_names, when on) stays out.""")
    version_events: str = _help("update", """"joint": which grounded events may be read as a newer version of the
        best entry: "update" (typed so by the GroundingHead) or "any" (every event but a rumour, typed
        "irrelevant"). A correction ("Correction: X's phone number changed to ...") is often typed "new".""")
    inserted_names: bool = _help(False, """"joint": an entry whose key puts a name of its own inside the
        question's name ("the Mifaim Mini printer" for the Mifaim printer) drops out when another names as many
        of the question's words without one; applied after the restore rules.""")
    answer_type_margin: Optional[float] = _help(None, """"joint": an entry of another fact (key cosine <
        version_key_cosine with the pick's, a value of its own) that scores within this margin of the pick
        replaces it when the frozen backbone finds its value the likelier answer: the higher pointwise mutual
        information, log p(value | question) - log p(value | "What is it?") (None: off). Two attributes of one
        entity (a bicycle's price and colour) can score alike; the answer's type ("45 dollars", not "coral") is
        what the backbone knows.""")
    # --- injection of what was read ---
    withdrawn_text: Optional[str] = _help(None, """What a selected slot without value text (a withdrawn fact, or
        a fact read without a value span) copies as its value tokens, e.g. "unknown"; None = none, its pooled
        vector alone. Training copies the same tokens for such gold events, so set it before training.""")

    def validate(self) -> None:
        super().validate()
        self._number("router_match_threshold")
        self._number("router_confidence_threshold", 0.0, 1.0)
        self._number("lexical_weight", 0.0)
        self._choice("lexical_text", LEXICAL_TEXTS)
        self._count("fallback_chunks", optional=True)
        self._count("name_chunks", allow_zero=True)
        self._choice("named_events", NAMED_EVENTS)
        self._number("version_margin", 0.0, optional=True)
        self._number("version_key_cosine", -1.0, 1.0)
        self._choice("read_rule", READ_RULES)
        if self.read_rule == "joint" and not self.ground_fallback:
            raise ConfigError("read.read_rule: 'joint' grounds the retrieved chunks; it needs read.ground_fallback=True")
        self._number("withdrawn_margin", 0.0, optional=True)
        self._number("withdrawn_cover", -1.0, 1.0, optional=True)
        self._choice("version_events", VERSION_EVENTS)
        self._number("answer_type_margin", 0.0, optional=True)
        if self.withdrawn_text is not None and (not isinstance(self.withdrawn_text, str) or not self.withdrawn_text.strip()):
            raise ConfigError(f"read.withdrawn_text: expected None or a non-empty string, got {self.withdrawn_text!r}")


SECTIONS: dict[str, type] = {"ingest": IngestConfig, "read": ReadConfig}
# Every setting's flat name -> its sub-config ("ingest" / "read"); the names are unique across both.
SECTION_OF: dict[str, str] = {name: section for section, cls in SECTIONS.items() for name in cls.names()}


def nest_flat_settings(config_dict: dict[str, Any]) -> dict[str, Any]:
    """A config dict saved before the settings were nested (``"lexical_weight": 0.3`` at the top)
    -> the nested form (``"read": {"lexical_weight": 0.3}``); other keys and a dict already nested
    pass unchanged. A setting given both flat and nested is a ConfigError naming it.

    >>> nest_flat_settings({"num_slots": 8, "lexical_weight": 0.3, "snap_spans": True})
    {'num_slots': 8, 'ingest': {'snap_spans': True}, 'read': {'lexical_weight': 0.3}}
    """
    out = {k: v for k, v in config_dict.items() if k not in SECTION_OF}
    for section in SECTIONS:
        flat = {k: v for k, v in config_dict.items() if SECTION_OF.get(k) == section}
        if not flat:
            continue
        nested = out.get(section)
        nested = nested.to_dict() if isinstance(nested, _Settings) else ({} if nested is None else nested)
        if not isinstance(nested, dict):
            raise ConfigError(f"{section}: expected a dict or a {SECTIONS[section].__name__}, got {type(nested).__name__}")
        both = sorted(set(flat) & set(nested))
        if both:
            raise ConfigError(f"{section}.{both[0]}: given both at the top level and inside {section!r}; keep one")
        out[section] = {**nested, **flat}
    return out


def check_count(name: str, value: object, *, allow_zero: bool = False, limit: Optional[str] = None) -> None:
    """An int > 0 (>= 0 with allow_zero) and at most MAX_SIZES[limit or name]: a typo such as
    num_slots=1e8 must fail when the config loads, not when new_memory() asks for gigabytes."""
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ConfigError(f"{name}: must be an int {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    cap = MAX_SIZES[limit or name]
    if value > cap:
        raise ConfigError(f"{name}: {value} exceeds the maximum {cap} (memadapter._validate.MAX_SIZES)")
