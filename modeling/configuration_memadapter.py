"""MemAdapterConfig: everything an adapter needs to be rebuilt and to refuse the wrong backbone.

The top-level fields are structural (backbone, sizes, layers, injection); the settings a trained
adapter may change are the nested ``ingest`` and ``read`` sub-configs (:mod:`.configuration_settings`).

transformers 5.x turns every ``PreTrainedConfig`` subclass into a keyword-only dataclass, so the
fields are class annotations and validation lives in ``__post_init__``; it runs on construction
and on every load (``from_pretrained`` / ``from_dict`` go through ``__init__``).

Naming: the base checkpoint's revision is ``base_model_revision``, not ``revision``, because
``from_pretrained(..., revision=...)`` already means "which revision of *this* adapter repo".
"""

from __future__ import annotations

import dataclasses
import json
import functools
import math
from dataclasses import field
from typing import Any, Optional, Sequence

from transformers import PreTrainedConfig

from memadapter.errors import AdapterMismatchError, ConfigError, UnsupportedBackboneError

from .backbones import get_family
from .configuration_settings import (RETIRED_INGEST_SETTINGS, RETIRED_READ_SETTINGS, SECTION_OF, SECTIONS, IngestConfig, ReadConfig,
                                     check_count, drop_retired_settings, nest_flat_settings)
from .injectors import get_injector

# Top-level fields that a trained adapter's weights do not fix: how many slots a question reads and
# how many value tokens each copies. generation_eval --set may change them beside the sub-configs.
RETUNABLE = ("top_k", "value_tokens")
# Every name generation_eval --set accepts, flat ("name_chunks", not "read.name_chunks"): the
# sub-configs' own field names (unique across both) and RETUNABLE.
SETTABLE = tuple(sorted((*SECTION_OF, *RETUNABLE)))


class MemAdapterConfig(PreTrainedConfig):
    """Configuration of a memadapter adapter on a frozen causal LM.

    The top-level fields are structural: they build the modules and fix their shapes. What ingest
    writes and how a question reads are the nested sub-configs ``ingest`` (:class:`IngestConfig`)
    and ``read`` (:class:`ReadConfig`), given as instances or dicts; a trained adapter may change
    those. A config saved with the settings at the top level loads through :meth:`from_dict`.

    Example:
        >>> cfg = MemAdapterConfig(backbone_model_type="llama", hidden_size=64, backbone_num_layers=2,
        ...                        read_layer=1, injection="cross_attn", cross_attn_layers=[1],
        ...                        read={"name_chunks": 3})
        >>> cfg.model_type, cfg.top_k <= cfg.num_slots, cfg.read.name_chunks
        ('memadapter', True, 3)
        >>> MemAdapterConfig(num_slots=0)
        Traceback (most recent call last):
        ...
        memadapter.errors.ConfigError: num_slots: must be an int > 0, got 0
        >>> MemAdapterConfig(name_chunks=3)
        Traceback (most recent call last):
        ...
        memadapter.errors.ConfigError: name_chunks: is a read setting: use read={'name_chunks': 3}
    """

    model_type = "memadapter"

    # --- the frozen backbone this adapter belongs to (a loader refuses any other) ---
    base_model_name_or_path: Optional[str] = None
    base_model_revision: Optional[str] = None
    backbone_model_type: Optional[str] = None  # registry key, e.g. "llama"
    hidden_size: Optional[int] = None  # the backbone's hidden size (H)
    backbone_num_layers: Optional[int] = None  # lets read_layer / cross_attn_layers be checked
    # --- what ingest reads ---
    read_layer: int = -1  # index into hidden_states (0 = embeddings, -1 = last); see read_hidden_states
    chunk_tokens: int = 512
    # --- slot memory ---
    num_slots: int = 64
    top_k: int = 4  # slots a question reads (and chunks the fallback retrieves unless read.fallback_chunks)
    key_dim: int = 64
    value_dim: int = 64
    # --- grounding / writer heads ---
    grounding_hidden_size: int = 128
    # Channels of the GroundingHead's two-sided context convolution (0 = tag each token alone).
    grounding_context_size: int = 0
    num_event_types: int = 4  # new fact, newer version, retraction, irrelevant
    # Backbone hidden states (indices as read_layer's) the AnswerPointer reads, concatenated; empty =
    # no pointer. It reads the retrieved chunks' best sentences at question time (read.answer_sentences).
    answer_layers: list[int] = field(default_factory=list)
    # --- injection ---
    injection: str = "prefix"
    prefix_tokens_per_slot: int = 1
    # Tokens of each selected slot's value text injected as the backbone's own token embeddings
    # (after the slot's virtual tokens, or as extra cross-attention memory); 0 = pooled vector only.
    value_tokens: int = 0
    cross_attn_layers: list[int] = field(default_factory=list)
    cross_attn_heads: int = 4
    cross_attn_gate_init: float = 0.0  # tanh gate; 0 = adapter starts as the identity
    # --- settings a trained adapter may change (configuration_settings.py; each field has a help text) ---
    ingest: IngestConfig = field(default_factory=IngestConfig)
    read: ReadConfig = field(default_factory=ReadConfig)

    def __post_init__(self, **kwargs: Any) -> None:
        for name, value in kwargs.items():  # a flat setting would be set as a stray attribute, unread
            if name in SECTION_OF:
                raise ConfigError(f"{name}: {_is_a(name)} setting: use {SECTION_OF[name]}={{{name!r}: {value!r}}}")
            if name in RETIRED_READ_SETTINGS:  # only a saved config may still hold one (dropped in from_dict)
                raise ConfigError(f"{name}: a retired read rule; the adapter's learned ReadScorer picks the entry now")
            if name in RETIRED_INGEST_SETTINGS:
                raise ConfigError(f"{name}: a retired ingest switch (not kept on validation, docs/RESULTS.md)")
        self.ingest = IngestConfig.coerce(self.ingest)  # a dict (or a JSON load) -> the dataclass, validated
        self.read = ReadConfig.coerce(self.read)
        super().__post_init__(**kwargs)
        self.validate_fields()

    def __setattr__(self, key: str, value: Any) -> None:
        # ``config.name_chunks = 3`` would set an attribute nothing reads: say where it lives.
        if key in SECTION_OF:
            raise ConfigError(f"{key}: {_is_a(key)} setting: set config.{SECTION_OF[key]}.{key}")
        super().__setattr__(key, value)

    def __getattr__(self, key: str) -> Any:  # only called when normal lookup failed
        if key in SECTION_OF:
            raise AttributeError(f"{key}: {_is_a(key)} setting: read config.{SECTION_OF[key]}.{key}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    # Kept separate from __post_init__ so callers can re-check after editing attributes.
    def validate_fields(self) -> None:
        """Raise ConfigError naming the first invalid field (``read.<field>`` inside a sub-config)."""
        for name in ("chunk_tokens", "num_slots", "top_k", "key_dim", "value_dim", "grounding_hidden_size",
                     "num_event_types", "prefix_tokens_per_slot", "cross_attn_heads"):
            check_count(name, getattr(self, name))
        for name in ("grounding_context_size", "value_tokens"):
            check_count(name, getattr(self, name), allow_zero=True)
        for name in ("hidden_size", "backbone_num_layers"):
            if getattr(self, name) is not None:
                check_count(name, getattr(self, name))
        if self.top_k > self.num_slots:
            raise ConfigError(f"top_k: must be <= num_slots ({self.num_slots}), got {self.top_k}")
        for name, kind in type(self).__annotations__.items():  # every switch this config declares
            if kind in ("bool", bool) and not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        for section, cls in SECTIONS.items():  # edited in place (config.read.x = ...): re-check
            if not isinstance(getattr(self, section), cls):
                raise ConfigError(f"{section}: expected a {cls.__name__}, got {type(getattr(self, section)).__name__}")
            getattr(self, section).validate()
        self._validate_backbone()
        self._validate_layers()
        self._validate_injection()

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
        if not isinstance(self.answer_layers, (list, tuple)):
            raise ConfigError(f"answer_layers: expected a list of ints, got {type(self.answer_layers).__name__}")
        for i in self.answer_layers:
            if isinstance(i, bool) or not isinstance(i, int) or (n is not None and not -(n + 1) <= i <= n):
                raise ConfigError(f"answer_layers: each index must be an int that indexes the hidden states, got {i!r}")
        self.answer_layers = list(self.answer_layers)

    def _validate_injection(self) -> None:
        gate = self.cross_attn_gate_init
        if isinstance(gate, bool) or not isinstance(gate, (int, float)) or not math.isfinite(gate):
            raise ConfigError(f"cross_attn_gate_init: must be a finite number, got {gate!r}")
        # The choices and each injector's own requirements come from the registry (modeling/injectors).
        get_injector(self.injection).check_config(self)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "MemAdapterConfig":
        """Like transformers' ``from_dict``, but a key that is no field of this config is refused
        (:func:`check_config_keys`) instead of being set as an attribute, and a config saved with
        the settings at the top level (before ``read`` / ``ingest``) is nested first; the read rules
        that the learned reader replaced are dropped with a warning (:func:`drop_retired_settings`),
        and so are the retired research fields left off (:func:`drop_retired_fields`)."""
        if not isinstance(config_dict, dict):
            raise ConfigError(f"config_dict: expected a JSON object, got {type(config_dict).__name__}")
        config_dict = drop_retired_fields(drop_retired_settings(nest_flat_settings(drop_retired_settings(config_dict))))
        check_config_keys(config_dict)
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """transformers' ``to_dict`` with ``read`` and ``ingest`` as nested dicts (JSON objects)."""
        out = super().to_dict()
        for section in SECTIONS:
            out[section] = getattr(self, section).to_dict()
        return out

    def apply_settings(self, settings: dict[str, Any]) -> None:
        """Change settings of this config by their flat names (:data:`SETTABLE`), e.g.
        ``{"name_chunks": 3, "snap_spans": True, "top_k": 2}``: each goes to its sub-config.
        All or nothing: a ConfigError names the first bad one and leaves the config as it was."""
        unknown = sorted(set(settings) - set(SETTABLE))
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a setting a trained adapter may change; one of {', '.join(SETTABLE)}")
        new = {section: dataclasses.replace(getattr(self, section), **{k: v for k, v in settings.items()
                                                                       if SECTION_OF.get(k) == section})
               for section in SECTIONS}  # replace() validates each sub-config before anything changes
        old = {name: getattr(self, name) for name in (*SECTIONS, *RETUNABLE)}
        for name, value in {**new, **{k: v for k, v in settings.items() if k in RETUNABLE}}.items():
            setattr(self, name, value)
        try:
            self.validate_fields()
        except ConfigError:
            for name, value in old.items():
                setattr(self, name, value)
            raise

    @property
    def num_fallback_chunks(self) -> int:
        """How many chunks the fallback (and the named-event check) retrieve."""
        return self.read.fallback_chunks or self.top_k

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


def parse_settings(items: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    """``FIELD=VALUE`` items (a command line's ``--set``) -> {field: JSON value}, for
    :meth:`MemAdapterConfig.apply_settings`. ConfigError naming ``flag`` and the bad item.

        >>> parse_settings(["name_chunks=3", 'withdrawn_text="unknown"'])
        {'name_chunks': 3, 'withdrawn_text': 'unknown'}
    """
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in SETTABLE:
            raise ConfigError(f"{flag}: expected FIELD=VALUE with FIELD one of {', '.join(SETTABLE)}, got {item!r}")
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(f"{flag} {name}: {raw!r} is not a JSON value (e.g. 0.2, true, null)") from None
    return out


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
    for section, cls in SECTIONS.items():  # a typo inside "read" is as unread as one at the top
        if isinstance(config_dict.get(section), dict):
            unknown += sorted(f"{section}.{k}" for k in config_dict[section] if k not in cls.names())
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise ConfigError(f"config_dict: unknown key(s) {shown}; a MemAdapterConfig has no such field")


# Structural fields of research variants that validation did not keep (2026-12-06, issue 28): the
# event type read over the relation region and a second, lifecycle event layer, both fitted by the
# removed experiments/refit_events.py (docs/RESULTS.md, "seventh step"; last at commit fb96e11).
RETIRED_FIELDS = ("type_reads_relation", "lifecycle_typing")


def drop_retired_fields(config_dict: dict[str, Any]) -> dict[str, Any]:
    """``config_dict`` without the :data:`RETIRED_FIELDS` left at their off value; one that is on
    names an adapter this code cannot read: ConfigError.

    >>> drop_retired_fields({"num_slots": 8, "lifecycle_typing": False})
    {'num_slots': 8}
    """
    for name in RETIRED_FIELDS:
        if config_dict.get(name):
            raise ConfigError(f"{name}: a retired research variant (removed after commit fb96e11); "
                              "this adapter needs the code of that commit")
    return {k: v for k, v in config_dict.items() if k not in RETIRED_FIELDS}


def _is_a(name: str) -> str:
    """"is a read" / "is an ingest": where the flat setting ``name`` lives."""
    return f"is {'an' if SECTION_OF[name] == 'ingest' else 'a'} {SECTION_OF[name]}"
