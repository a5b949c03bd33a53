"""The settings a trained adapter may change, nested in ``MemAdapterConfig`` as ``config.ingest`` and
``config.read``: what ingest writes (:class:`IngestConfig`) and how a question selects from memory
(:class:`ReadConfig`). Neither changes a module or a shape, so neither is part of the adapter's
fingerprint; their field names are the names ``generation_eval --set`` accepts.

Every field carries its reason in ``metadata["help"]`` (as peft's ``LoraConfig`` does), and each
class validates itself on construction; errors name the field as ``read.<field>`` / ``ingest.<field>``.

Example:
    >>> ReadConfig.coerce({"name_chunks": 3}) == ReadConfig(name_chunks=3)
    True
    >>> ReadConfig.coerce({"name_chunk": 3})
    Traceback (most recent call last):
    ...
    memadapter.errors.ConfigError: read.name_chunk: unknown setting; a ReadConfig has no such field
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from memadapter._validate import MAX_SIZES
from memadapter.errors import ConfigError

logger = logging.getLogger(__name__)

CHUNK_BOUNDARIES = ("tokens", "sentence")


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

    def validate(self) -> None:
        super().validate()
        self._choice("chunk_boundary", CHUNK_BOUNDARIES)
        self._number("slot_match_threshold", -1.0, 1.0)
        self._number("slot_update_match_threshold", -1.0, 1.0, optional=True)
        self._number("slot_update_name_weight", 0.0)


@dataclass
class ReadConfig(_Settings):
    """What a question's candidate pool holds; read only at select time, so one ingested memory
    can be read under several ReadConfigs. Which entry of the pool is read is not a setting: the
    adapter's learned ReadScorer decides (``memadapter.modeling.read_scorer``).

    Example:
        >>> ReadConfig(name_chunks=3).fallback_chunks is None
        True
        >>> ReadConfig.coerce({"read_rule": "joint"})
        Traceback (most recent call last):
        ...
        memadapter.errors.ConfigError: read.read_rule: unknown setting; a ReadConfig has no such field
    """

    section: ClassVar[str] = "read"

    router_confidence_threshold: float = _help(0.5, "Slot confidence below which a slot stays out of the pool.")
    fallback_chunks: Optional[int] = _help(None, """Chunks retrieved per question (None: top_k) by the hybrid
        search; the events the GroundingHead proposes in them join the pool, so more chunks widen the search
        without lengthening the prompt.""")
    name_chunks: int = _help(0, """Chunks retrieved beside the fallback_chunks: up to this many more that the
        question's names (capitalised words, numbers) alone rank first by BM25. A fact stated in other words than
        the question's ("is employed by" for "work for") loses the hybrid search to filler that shares the common
        words; its entity's name is rare in the filler.""")
    answer_sentences: int = _help(0, """Sentences of the retrieved chunks the adapter's AnswerPointer reads per
        question (those sharing most words with it); each adds its answer span to the pool. 0, or an adapter
        without a pointer (answer_layers empty): none.""")
    word_spans: bool = _help(False, """The AnswerPointer's spans start and end at word boundaries: never inside a
        run of non-space characters ("28564" of "2856496", "-21" of "D-21"), though before a word's trailing
        punctuation or possessive "'s". False: any tokens, as the pointer was trained.""")
    restated_runs: float = _help(0.0, """A sentence the AnswerPointer reads that repeats at least this share of its
        words from an earlier retrieved sentence (a correction restating what it corrects) adds each run of words
        it replaced there to the pool as answers, whole and as the pointer's best span touching the run, whatever
        the pointer's own span; the ReadScorer weighs them (features restated_run, restated_span). 0: none.""")
    withdrawn_text: Optional[str] = _help(None, """What a selected entry without value text (a withdrawn fact, or
        a fact read without a value span) copies as its value tokens, e.g. "unknown"; None = none, its pooled
        vector alone. Training copies the same tokens for such gold events, so set it before training.""")

    def validate(self) -> None:
        super().validate()
        self._number("router_confidence_threshold", 0.0, 1.0)
        self._count("fallback_chunks", optional=True)
        self._count("name_chunks", allow_zero=True)
        self._count("answer_sentences", allow_zero=True)
        self._number("restated_runs", 0.0, 1.0)
        if self.withdrawn_text is not None and (not isinstance(self.withdrawn_text, str) or not self.withdrawn_text.strip()):
            raise ConfigError(f"read.withdrawn_text: expected None or a non-empty string, got {self.withdrawn_text!r}")


SECTIONS: dict[str, type] = {"ingest": IngestConfig, "read": ReadConfig}
# Every setting's flat name -> its sub-config ("ingest" / "read"); the names are unique across both.
SECTION_OF: dict[str, str] = {name: section for section, cls in SECTIONS.items() for name in cls.names()}


# The read rules the learned ReadScorer replaced (2026-12-04, issue 24). A config saved before
# then still loads: these keys are dropped (with a warning), flat or inside "read".
RETIRED_READ_SETTINGS = (
    "router_match_threshold", "lexical_weight", "lexical_text", "lexical_content_words", "ground_fallback",
    "named_events", "version_margin", "version_key_cosine", "read_rule", "name_fragments", "foreign_names",
    "withdrawn_margin", "withdrawn_cover", "restore_by_sentence", "restore_by_attribute", "version_events",
    "inserted_names", "answer_type_margin")


# The ingest switches validation did not keep: pair_in_sentence (2026-12-05: off was as good or
# better on every validation half, docs/RESULTS.md). Dropped the same way, flat or inside "ingest".
RETIRED_INGEST_SETTINGS = ("pair_in_sentence",)
RETIRED_SETTINGS = {"read": RETIRED_READ_SETTINGS, "ingest": RETIRED_INGEST_SETTINGS}


def drop_retired_settings(config_dict: dict[str, Any]) -> dict[str, Any]:
    """``config_dict`` without the :data:`RETIRED_SETTINGS` (at the top or in their section), with
    one warning naming those that were set.

    >>> drop_retired_settings({"num_slots": 8, "read": {"read_rule": "joint", "name_chunks": 3}})
    {'num_slots': 8, 'read': {'name_chunks': 3}}
    """
    retired = {k for names in RETIRED_SETTINGS.values() for k in names}
    out = {k: v for k, v in config_dict.items() if k not in retired}
    found = [k for k in config_dict if k in retired]
    for section, names in RETIRED_SETTINGS.items():
        sub = config_dict.get(section)
        if isinstance(sub, dict) and any(k in names for k in sub):
            found += [k for k in sub if k in names]
            out[section] = {k: v for k, v in sub.items() if k not in names}
    if found:
        logger.warning("config: dropped retired settings (issue 24: replaced by the learned reader or not "
                       "kept on validation): %s", ", ".join(sorted(found)))
    return out if found else config_dict


def nest_flat_settings(config_dict: dict[str, Any]) -> dict[str, Any]:
    """A config dict saved before the settings were nested (``"lexical_weight": 0.3`` at the top)
    -> the nested form (``"read": {"lexical_weight": 0.3}``); other keys and a dict already nested
    pass unchanged. A setting given both flat and nested is a ConfigError naming it.

    >>> nest_flat_settings({"num_slots": 8, "name_chunks": 3, "snap_spans": True})
    {'num_slots': 8, 'ingest': {'snap_spans': True}, 'read': {'name_chunks': 3}}
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
