"""MemAdapterConfig: everything an adapter needs to be rebuilt and to refuse the wrong backbone.

transformers 5.x turns every ``PreTrainedConfig`` subclass into a keyword-only dataclass, so the
fields are class annotations and validation lives in ``__post_init__``; it runs on construction
and on every load (``from_pretrained`` / ``from_dict`` go through ``__init__``).

Naming: the base checkpoint's revision is ``base_model_revision``, not ``revision``, because
``from_pretrained(..., revision=...)`` already means "which revision of *this* adapter repo".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import field
from typing import Any, Optional

from transformers import PreTrainedConfig

from memadapter._validate import MAX_SIZES
from memadapter.errors import AdapterMismatchError, ConfigError, UnsupportedBackboneError

from .backbones import get_family
from .injectors import get_injector

LEXICAL_TEXTS = ("key", "sentence")
CHUNK_BOUNDARIES = ("tokens", "sentence")
NAMED_EVENTS = ("best", "any")
READ_RULES = ("route", "joint")
# Settings that may change on a trained adapter without retraining it (generation_eval --set):
# those read only when a question selects from memory, and those that shape what ingest writes.
READ_TIME_SETTINGS = frozenset({
    "lexical_weight", "router_match_threshold", "router_confidence_threshold", "ground_fallback", "top_k",
    "withdrawn_text", "lexical_text", "lexical_content_words", "fallback_chunks", "version_margin",
    "version_key_cosine", "named_events", "read_rule", "name_fragments", "foreign_names", "withdrawn_margin",
    "withdrawn_cover", "restore_by_sentence", "answer_type_margin", "restore_by_attribute", "name_chunks",
    "version_events", "inserted_names",
})
INGEST_TIME_SETTINGS = frozenset({
    "slot_match_threshold", "slot_update_match_threshold", "slot_update_name_weight", "retract_tombstones",
    "value_tokens", "snap_spans", "pair_in_sentence", "chunk_boundary",
})


class MemAdapterConfig(PreTrainedConfig):
    """Configuration of a memadapter adapter on a frozen causal LM.

    Example:
        >>> cfg = MemAdapterConfig(backbone_model_type="llama", hidden_size=64, backbone_num_layers=2,
        ...                        read_layer=1, injection="cross_attn", cross_attn_layers=[1])
        >>> cfg.model_type, cfg.top_k <= cfg.num_slots
        ('memadapter', True)
        >>> MemAdapterConfig(num_slots=0)
        Traceback (most recent call last):
        ...
        memadapter.errors.ConfigError: num_slots: must be an int > 0, got 0
    """

    model_type = "memadapter"

    # --- the frozen backbone this adapter belongs to (a loader refuses any other) ---
    base_model_name_or_path: Optional[str] = None
    base_model_revision: Optional[str] = None
    backbone_model_type: Optional[str] = None  # registry key, e.g. "llama"
    hidden_size: Optional[int] = None  # the backbone's hidden size (H)
    backbone_num_layers: Optional[int] = None  # lets read_layer / cross_attn_layers be checked
    # --- ingest ---
    read_layer: int = -1  # index into hidden_states (0 = embeddings, -1 = last); see read_hidden_states
    chunk_tokens: int = 512
    # Where ingest cuts the stream: "tokens" (every chunk_tokens tokens) or "sentence" (after the
    # last sentence end in a chunk's second half; needs a tokenizer). Each chunk is read on its own,
    # so a fixed cut inside a fact leaves its key in one chunk and its value in the next.
    chunk_boundary: str = "tokens"
    # --- slot memory ---
    num_slots: int = 64
    slot_match_threshold: float = 0.8  # key cosine from which a candidate is the same fact (overwrite)
    # Updates and retractions claim an earlier version exists: the bar they match a slot from
    # (None: slot_match_threshold). A retraction then leaves a withdrawn record when
    # retract_tombstones is on (else it frees the slot), so a question learns "no longer known".
    slot_update_match_threshold: Optional[float] = None
    retract_tombstones: bool = False
    # Updates and retractions add this weight times the word overlap of their key text with each
    # slot's key text to the key cosine when they look for the slot they revise (SlotMemory's
    # update_name_weight): learned keys of look-alike names ("Priya", "Priyam") sit close. 0 = keys alone.
    slot_update_name_weight: float = 0.0
    top_k: int = 4
    key_dim: int = 64
    value_dim: int = 64
    # --- grounding / writer heads ---
    grounding_hidden_size: int = 128
    # Channels of the GroundingHead's two-sided context convolution (0 = tag each token alone).
    grounding_context_size: int = 0
    num_event_types: int = 4  # new fact, newer version, retraction, irrelevant
    # Widen the tagger's key and value spans to whole words (by the tokenizer's text) before they
    # are pooled and written: a span cut inside a word ("Mer" of "Meridian", "Daniel" of
    # "Daniela", "2" of "210") names or says something else.
    snap_spans: bool = False
    # Pair a key only with a value in its own sentence: a retraction has no value, and the next
    # value tagged after it (in the following sentence or filler) is not its value.
    pair_in_sentence: bool = False
    # Read a candidate's event type up to the end of its relation region (RELATION_WINDOW tokens
    # after a key without value): a retraction's "... is no longer known" follows its key. The
    # event layer must be fit to it: ``python -m memadapter.training.refit_events``.
    type_reads_relation: bool = False
    # A second event layer types the memory operation (new / update / tombstone) while the trained
    # event layer keeps feeding the WriteController: refit_events --lifecycle fits it, so a better
    # retraction typing does not move the writes the controller learned on the old probabilities.
    lifecycle_typing: bool = False
    # --- router ---
    router_match_threshold: float = 0.5  # slot score above which the memory branch answers
    router_confidence_threshold: float = 0.5  # slot confidence below which it is ignored
    # Weight of the question's lexical agreement with each key text (BM25 over the candidates,
    # scaled to [0, 1]) added to the learned key cosine when choosing a slot or a fallback event:
    # exact evidence for names the learned keys never saw. 0 = learned keys alone.
    lexical_weight: float = 0.0
    # What the question's words are matched against: "key" (the key span: names) or "sentence"
    # (the event's whole sentence, re-read from the chunk: relation words such as "deadline" or
    # "phone" then tell apart two facts about one entity).
    lexical_text: str = "key"
    # Only the question's content words count for lexical agreement, not "now", "where" or "does":
    # a "now" in another attribute's update ("Louise now lives in Utrecht") otherwise outscores the
    # asked fact ("Louise Moreau is employed by Harbor Health") for "Where does Louise work now?".
    lexical_content_words: bool = False
    # Fallback: re-read the retrieved chunks at query time and inject the proposed event whose key
    # best matches the question (an unwritten fact becomes a slot-like entry); else chunk summaries.
    ground_fallback: bool = False  # on for trained adapters (the training configs); an untrained head would guess
    # Chunks the fallback retrieves (None: top_k). With ground_fallback the one best event among
    # them is injected, so more chunks widen the search without lengthening the prompt.
    fallback_chunks: Optional[int] = None
    # Chunks read beside the fallback_chunks (joint read, named events): up to this many more that
    # the question's names (capitalised words, numbers) alone rank first by BM25. A fact stated in
    # other words than the question's ("is employed by" for "work for") loses the hybrid search to
    # filler that shares the common words; its entity's name is rare in the filler.
    name_chunks: int = 0
    # A grounded event whose key text names more of the question's words than the selected slot's
    # (a look-alike the question asks about, "the Lumen Mini printer", beside the slot of "the Lumen
    # printer") replaces the slot: "best" when it is the best-scoring event, "any" when it is the best
    # of the events that name more.
    named_events: str = "best"
    # Versions of one fact match a question about equally well; the stream says which is current.
    # With a margin, the best slot (or grounded event) gives way to its latest *version*: a slot
    # written later (an event later in the stream and typed as an update) that scores within the
    # margin of it and whose key has cosine >= version_key_cosine with its key; a grounded update
    # later than the selected slot's own event replaces the slot on the same terms (an update the
    # write path missed). None = the best score alone.
    version_margin: Optional[float] = None
    version_key_cosine: float = 0.7
    # How a question's entry is chosen. "route": the router picks the slots or the fallback, then the
    # rules above act within that branch. "joint" (needs ground_fallback): the usable slots and the
    # events grounded in the retrieved chunks compete on one score, entries that name fewer of the
    # question's words than another drop out, and the best gives way to its latest version.
    read_rule: str = "route"
    # "joint": a key word of 4+ letters that begins or ends a question word names it (a key span
    # cut inside a name, "Toumuch" for "Toumuchol", does not then drop out as naming less).
    name_fragments: bool = False
    # "joint": an entry whose key carries a name the question does not ("Paul Brandt" for Martin
    # Brandt) drops out when another names as many of the question's words without one.
    foreign_names: bool = False
    # "joint": a withdrawn slot (a tombstone) later than the picked entry, whose key has cosine >=
    # version_key_cosine with the pick's, replaces it when it scores within this margin of it (None:
    # only within version_margin, like any version). A retraction's sentence ("Please forget X's
    # price") matches a question about the fact more weakly than the fact's own sentences do.
    withdrawn_margin: Optional[float] = None
    # "joint": a withdrawn slot later than the picked entry replaces it when its sentence ("Please
    # forget the Terra printer's colour") names every question word that the pick's sentence names
    # and either names more of them or has key cosine >= this with the pick's key (None: off). The
    # words tell the withdrawal of the asked fact from that of another attribute of the entity;
    # sentences, not key texts, since a retraction's key span is often the bare name ("Atlas").
    withdrawn_cover: Optional[float] = None
    # "joint": an entry whose key text names fewer of the question's words than another's (and so
    # drops out) is put back when its sentence names every question word that each remaining
    # entry's sentence names: a key span cut short ("Pripis" for "Gustao Pripis") is no look-alike.
    restore_by_sentence: bool = False
    # "joint": an entry that drops out by its key text is put back when its sentence names a word
    # of the asked entity that a remaining entry's sentence names and a content word of the question
    # that none of theirs names (the attribute): "Trudegreisa's phone number is ..." beside
    # sentences about Trudegreisa Katum's city and employer. An entry with a foreign name (see
    # foreign_names, when on) stays out.
    restore_by_attribute: bool = False
    # "joint": which grounded events may be read as a newer version of the best entry: "update"
    # (typed so by the GroundingHead) or "any" (every event but a rumour, typed "irrelevant"). A
    # correction ("Correction: X's phone number changed to ...") is often typed "new".
    version_events: str = "update"
    # "joint": an entry whose key puts a name of its own inside the question's name ("the Mifaim
    # Mini printer", "The Kiker II project" for the Mifaim printer, Project Kiker) drops out when
    # another names as many of the question's words without one; applied after the restore rules.
    inserted_names: bool = False
    # "joint": an entry of another fact (key cosine < version_key_cosine with the pick's, a value of
    # its own) that scores within this margin of the pick replaces it when the frozen backbone finds
    # its value the likelier answer to the question: the higher pointwise mutual information,
    # log p(value | question) - log p(value | "What is it?") (None: off). Two attributes of one entity
    # ("What does the Vega bicycle sell for?": its price, its colour) can score alike; the answer's
    # type ("45 dollars", not "coral") is what the backbone knows.
    answer_type_margin: Optional[float] = None
    # --- injection ---
    injection: str = "prefix"
    prefix_tokens_per_slot: int = 1
    # Tokens of each selected slot's value text injected as the backbone's own token embeddings
    # (after the slot's virtual tokens, or as extra cross-attention memory); 0 = pooled vector only.
    value_tokens: int = 0
    # What a selected slot without value text (a withdrawn fact, or a fact read without a value
    # span) copies as its value tokens, e.g. "unknown"; None = none, its pooled vector alone.
    # Training copies the same tokens for such gold events, so set it before training.
    withdrawn_text: Optional[str] = None
    cross_attn_layers: list[int] = field(default_factory=list)
    cross_attn_heads: int = 4
    cross_attn_gate_init: float = 0.0  # tanh gate; 0 = adapter starts as the identity

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.validate_fields()

    # Kept separate from __post_init__ so callers can re-check after editing attributes.
    def validate_fields(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        for name in ("chunk_tokens", "num_slots", "top_k", "key_dim", "value_dim", "grounding_hidden_size",
                     "num_event_types", "prefix_tokens_per_slot", "cross_attn_heads"):
            _positive_int(name, getattr(self, name))
        for name in ("grounding_context_size", "value_tokens"):
            _positive_int(name, getattr(self, name), allow_zero=True)
        for name in ("hidden_size", "backbone_num_layers"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.top_k > self.num_slots:
            raise ConfigError(f"top_k: must be <= num_slots ({self.num_slots}), got {self.top_k}")
        self._validate_backbone()
        self._validate_layers()
        self._validate_router_and_injection()

    def _validate_backbone(self) -> None:
        for name in ("base_model_name_or_path", "base_model_revision", "backbone_model_type"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name}: expected a non-empty str or None, got {value!r}")
        if self.backbone_model_type is not None:
            try:
                get_family(self.backbone_model_type)
            except UnsupportedBackboneError as err:
                raise ConfigError(f"backbone_model_type: {err}") from None

    def _validate_layers(self) -> None:
        if isinstance(self.read_layer, bool) or not isinstance(self.read_layer, int):
            raise ConfigError(f"read_layer: expected an int, got {self.read_layer!r}")
        n = self.backbone_num_layers
        if n is not None and not -(n + 1) <= self.read_layer <= n:
            raise ConfigError(f"read_layer: must index the {n + 1} hidden states (-{n + 1}..{n}), got {self.read_layer}")
        layers = self.cross_attn_layers
        if not isinstance(layers, (list, tuple)):
            raise ConfigError(f"cross_attn_layers: expected a list of ints, got {type(layers).__name__}")
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int) or i < 0 or (n is not None and i >= n):
                bound = f"0..{n - 1}" if n is not None else ">= 0"
                raise ConfigError(f"cross_attn_layers: each index must be an int in {bound}, got {i!r}")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"cross_attn_layers: indices must be unique, got {list(layers)}")
        self.cross_attn_layers = sorted(layers)  # JSON round trip gives a list; keep one canonical order

    def _validate_router_and_injection(self) -> None:
        # The choices and each injector's own requirements come from the registry (modeling/injectors).
        get_injector(self.injection).check_config(self)
        for name, kind in type(self).__annotations__.items():  # every switch this config declares
            if kind in ("bool", bool) and not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        _finite("router_match_threshold", self.router_match_threshold)
        for name in ("slot_match_threshold", "slot_update_match_threshold", "version_key_cosine"):
            value = getattr(self, name)
            if value is None and name == "slot_update_match_threshold":
                continue
            _finite(name, value)
            if not -1.0 <= value <= 1.0:
                raise ConfigError(f"{name}: must be a cosine in [-1, 1], got {value}")
        for name in ("lexical_weight", "slot_update_name_weight"):
            _finite(name, getattr(self, name))
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.withdrawn_text is not None and (not isinstance(self.withdrawn_text, str) or not self.withdrawn_text.strip()):
            raise ConfigError(f"withdrawn_text: expected None or a non-empty string, got {self.withdrawn_text!r}")
        _positive_int("name_chunks", self.name_chunks, allow_zero=True)
        if self.fallback_chunks is not None:
            _positive_int("fallback_chunks", self.fallback_chunks)
        if self.version_margin is not None:
            _finite("version_margin", self.version_margin)
            if self.version_margin < 0:
                raise ConfigError(f"version_margin: must be None or >= 0, got {self.version_margin}")
        if self.withdrawn_margin is not None:
            _finite("withdrawn_margin", self.withdrawn_margin)
            if self.withdrawn_margin < 0:
                raise ConfigError(f"withdrawn_margin: must be None or >= 0, got {self.withdrawn_margin}")
        if self.answer_type_margin is not None:
            _finite("answer_type_margin", self.answer_type_margin)
            if self.answer_type_margin < 0:
                raise ConfigError(f"answer_type_margin: must be None or a margin >= 0, got {self.answer_type_margin}")
        if self.withdrawn_cover is not None:
            _finite("withdrawn_cover", self.withdrawn_cover)
            if not -1.0 <= self.withdrawn_cover <= 1.0:
                raise ConfigError(f"withdrawn_cover: must be None or a cosine in [-1, 1], got {self.withdrawn_cover}")
        if self.version_events not in ("update", "any"):
            raise ConfigError(f"version_events: must be 'update' or 'any', got {self.version_events!r}")
        if self.named_events not in NAMED_EVENTS:
            raise ConfigError(f"named_events: must be one of {', '.join(NAMED_EVENTS)}, got {self.named_events!r}")
        if self.read_rule not in READ_RULES:
            raise ConfigError(f"read_rule: must be one of {', '.join(READ_RULES)}, got {self.read_rule!r}")
        if self.read_rule == "joint" and not self.ground_fallback:
            raise ConfigError("read_rule: 'joint' grounds the retrieved chunks; it needs ground_fallback=True")
        if self.chunk_boundary not in CHUNK_BOUNDARIES:
            raise ConfigError(f"chunk_boundary: must be one of {', '.join(CHUNK_BOUNDARIES)}, got {self.chunk_boundary!r}")
        if self.lexical_text not in LEXICAL_TEXTS:
            raise ConfigError(f"lexical_text: must be one of {', '.join(LEXICAL_TEXTS)}, got {self.lexical_text!r}")
        _finite("router_confidence_threshold", self.router_confidence_threshold)
        if not 0.0 <= self.router_confidence_threshold <= 1.0:
            raise ConfigError(f"router_confidence_threshold: must be in [0, 1], got {self.router_confidence_threshold}")
        _finite("cross_attn_gate_init", self.cross_attn_gate_init)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "MemAdapterConfig":
        """Like transformers' ``from_dict``, but a key that is no field of this config is refused
        (:func:`check_config_keys`) instead of being set as an attribute."""
        check_config_keys(config_dict)
        return super().from_dict(config_dict, **kwargs)

    @property
    def num_fallback_chunks(self) -> int:
        """How many chunks the fallback (and the named-event check) retrieve."""
        return self.fallback_chunks or self.top_k

    def check_backbone(self, backbone_config: Any) -> None:
        """Raise AdapterMismatchError unless ``backbone_config`` is the family/size this adapter was built for."""
        mt = getattr(backbone_config, "model_type", None)
        hs = getattr(backbone_config, "hidden_size", None)
        nl = getattr(backbone_config, "num_hidden_layers", None)
        for field_name, want, got in (
            ("backbone_model_type", self.backbone_model_type, mt),
            ("hidden_size", self.hidden_size, hs),
            ("backbone_num_layers", self.backbone_num_layers, nl),
        ):
            if want is not None and want != got:
                raise AdapterMismatchError(
                    f"{field_name}: adapter was built for {want!r}, but the backbone has {got!r} "
                    f"(backbone model_type {mt!r}, hidden_size {hs!r})"
                )


# Keys transformers itself writes into a config file besides the fields (to_dict / to_diff_dict),
# and the old spelling of dtype that its from_dict still maps.
_TRANSFORMERS_KEYS = frozenset({"transformers_version", "model_type", "_name_or_path", "output_attentions", "torch_dtype"})


@functools.lru_cache(maxsize=1)
def config_keys() -> frozenset[str]:
    """Every key a saved MemAdapterConfig may hold: its fields (this class's and PreTrainedConfig's)
    and the bookkeeping keys transformers writes."""
    fields = {f.name for f in dataclasses.fields(MemAdapterConfig)}
    return frozenset(fields | set(MemAdapterConfig().to_dict()) | _TRANSFORMERS_KEYS)


def check_config_keys(config_dict: Any) -> None:
    """Refuse a loaded config dict with keys that are no field: transformers would set each one as
    an attribute, so a typo would pass unnoticed and a key named like a method
    (``validate_fields``) would replace it. ConfigError names every unknown key."""
    if not isinstance(config_dict, dict):
        raise ConfigError(f"config_dict: expected a JSON object, got {type(config_dict).__name__}")
    unknown = sorted(str(k) for k in config_dict if k not in config_keys())
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise ConfigError(f"config_dict: unknown key(s) {shown}; a MemAdapterConfig has no such field")


def _positive_int(name: str, value: object, *, allow_zero: bool = False) -> None:
    """An int > 0 (>= 0 with allow_zero) and at most MAX_SIZES[name]: a typo such as num_slots=1e8
    must fail when the config loads, not when new_memory() asks the allocator for gigabytes."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}: must be an int {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    if value > MAX_SIZES[name]:
        raise ConfigError(f"{name}: {value} exceeds the maximum {MAX_SIZES[name]} (memadapter._validate.MAX_SIZES)")


def _finite(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
