"""Hostile MemAdapterConfig fields: every size bounded (MAX_SIZES), every threshold a finite number
in range, every choice one of its values; the error names the field and nothing else changes."""

from __future__ import annotations

import dataclasses

import pytest
from hostile_helpers import expect_rejected
from hypothesis import given, settings
from hypothesis import strategies as st

from memadapter._validate import MAX_SIZES
from memadapter.errors import ConfigError
from memadapter.modeling import MemAdapterConfig
from memadapter.modeling.configuration_settings import RETIRED_READ_SETTINGS, SECTION_OF, SECTIONS, nest_flat_settings

NAN, INF = float("nan"), float("inf")
SIZE_FIELDS = ("chunk_tokens", "num_slots", "top_k", "key_dim", "value_dim", "grounding_hidden_size",
               "num_event_types", "prefix_tokens_per_slot", "cross_attn_heads", "grounding_context_size",
               "value_tokens", "hidden_size", "backbone_num_layers", "name_chunks", "fallback_chunks",
               "answer_sentences")
ZERO_ALLOWED = {"grounding_context_size", "value_tokens", "name_chunks", "answer_sentences"}


def _config(**kwargs) -> MemAdapterConfig:
    """A config from flat names: read / ingest settings go into their sub-config."""
    return MemAdapterConfig(**nest_flat_settings(kwargs))


def _named(field: str) -> str:
    """How an error names ``field``: ``read.name_chunks`` inside a sub-config."""
    return f"{SECTION_OF[field]}.{field}" if field in SECTION_OF else field

CASES = [  # (field overrides, the field the error must name)
    (dict(num_slots=0), "num_slots"),
    (dict(num_slots=-1), "num_slots"),
    (dict(num_slots=1e8), "num_slots"),
    (dict(num_slots=10**8), "num_slots"),
    (dict(num_slots=10**12), "num_slots"),
    (dict(num_slots=True), "num_slots"),
    (dict(num_slots="64"), "num_slots"),
    (dict(num_slots=None), "num_slots"),
    (dict(key_dim=0), "key_dim"),
    (dict(key_dim=10**6), "key_dim"),
    (dict(key_dim=2.0), "key_dim"),
    (dict(value_dim=-5), "value_dim"),
    (dict(value_dim=10**9), "value_dim"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=100, num_slots=64), "top_k"),
    (dict(top_k=10**10), "top_k"),
    (dict(chunk_tokens=0), "chunk_tokens"),
    (dict(chunk_tokens=10**9), "chunk_tokens"),
    (dict(grounding_hidden_size=10**9), "grounding_hidden_size"),
    (dict(grounding_context_size=-1), "grounding_context_size"),
    (dict(grounding_context_size=10**9), "grounding_context_size"),
    (dict(num_event_types=0), "num_event_types"),
    (dict(num_event_types=1000), "num_event_types"),
    (dict(prefix_tokens_per_slot=0), "prefix_tokens_per_slot"),
    (dict(prefix_tokens_per_slot=10**5), "prefix_tokens_per_slot"),
    (dict(value_tokens=-1), "value_tokens"),
    (dict(value_tokens=10**5), "value_tokens"),
    (dict(value_tokens=1.5), "value_tokens"),
    (dict(cross_attn_heads=0), "cross_attn_heads"),
    (dict(cross_attn_heads=10**5), "cross_attn_heads"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(hidden_size=10**7), "hidden_size"),
    (dict(backbone_num_layers=-2), "backbone_num_layers"),
    (dict(backbone_num_layers=10**5), "backbone_num_layers"),
    (dict(name_chunks=-1), "name_chunks"),
    (dict(name_chunks=10**9), "name_chunks"),
    (dict(fallback_chunks=0), "fallback_chunks"),
    (dict(fallback_chunks=10**9), "fallback_chunks"),
    (dict(read_layer=1.5), "read_layer"),
    (dict(read_layer=True), "read_layer"),
    (dict(read_layer=5, backbone_num_layers=2), "read_layer"),
    (dict(slot_match_threshold=NAN), "slot_match_threshold"),
    (dict(slot_match_threshold=2.0), "slot_match_threshold"),
    (dict(slot_match_threshold="high"), "slot_match_threshold"),
    (dict(slot_update_match_threshold=-3.0), "slot_update_match_threshold"),
    (dict(router_confidence_threshold=INF), "router_confidence_threshold"),
    (dict(router_confidence_threshold=1.5), "router_confidence_threshold"),
    (dict(router_confidence_threshold=-0.1), "router_confidence_threshold"),
    (dict(slot_update_name_weight=NAN), "slot_update_name_weight"),
    (dict(slot_update_name_weight=-1.0), "slot_update_name_weight"),
    (dict(cross_attn_gate_init=NAN), "cross_attn_gate_init"),
    (dict(injection="soup"), "injection"),
    (dict(injection="cross_attn"), "cross_attn_layers"),
    (dict(cross_attn_layers="1"), "cross_attn_layers"),
    (dict(cross_attn_layers=[1, 1]), "cross_attn_layers"),
    (dict(cross_attn_layers=[-1]), "cross_attn_layers"),
    (dict(cross_attn_layers=[3], backbone_num_layers=2), "cross_attn_layers"),
    (dict(injection="cross_attn", cross_attn_layers=[0], hidden_size=64, cross_attn_heads=5), "cross_attn_heads"),
    (dict(chunk_boundary="paragraph"), "chunk_boundary"),
    (dict(snap_spans=1), "snap_spans"),
    (dict(retract_tombstones="yes"), "retract_tombstones"),
    (dict(withdrawn_text=""), "withdrawn_text"),
    (dict(withdrawn_text="  "), "withdrawn_text"),
    (dict(withdrawn_text=5), "withdrawn_text"),
    (dict(backbone_model_type="gpt99"), "backbone_model_type"),
    (dict(base_model_name_or_path=""), "base_model_name_or_path"),
    (dict(base_model_revision=3), "base_model_revision"),
]


@pytest.fixture(scope="module")
def reference():
    """A valid config that no rejected construction may touch."""
    return MemAdapterConfig(num_slots=16, top_k=2, key_dim=32)


@pytest.mark.parametrize("kwargs,field", CASES, ids=[f"{k}={str(v)[:14]}" for kw, _ in CASES for k, v in [next(iter(kw.items()))]])
def test_config_rejects(reference, kwargs, field):
    expect_rejected(lambda: _config(**kwargs), ConfigError, _named(field), reference)


@pytest.mark.parametrize("field", SIZE_FIELDS)
def test_an_edited_config_is_checked_again(reference, field):
    """validate_fields() re-checks a config edited after construction (and leaves other configs be)."""
    config = MemAdapterConfig()
    setattr(getattr(config, SECTION_OF[field]) if field in SECTION_OF else config, field, MAX_SIZES[field] + 1)
    expect_rejected(config.validate_fields, ConfigError, _named(field), reference)


def test_every_integer_field_has_a_bound():
    # the config's own annotations, as written (strings: the module postpones evaluation)
    annotations = {**MemAdapterConfig.__annotations__, **{f.name: f.type for cls in SECTIONS.values()
                                                          for f in dataclasses.fields(cls)}}
    ints = {name for name, kind in annotations.items()
            if kind in ("int", "Optional[int]") and name != "read_layer"}  # read_layer is an index, checked
    assert ints == set(SIZE_FIELDS) and ints <= set(MAX_SIZES)


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from(SIZE_FIELDS), data=st.data())
def test_config_sizes_out_of_bounds_are_rejected(reference, field, data):
    low = 0 if field in ZERO_ALLOWED else 1
    value = data.draw(st.one_of(st.integers(MAX_SIZES[field] + 1, 2**70), st.integers(-(2**70), low - 1),
                                st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)))
    expect_rejected(lambda: _config(**{field: value}), ConfigError, _named(field), reference)


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from(["slot_match_threshold", "slot_update_match_threshold", "router_confidence_threshold"]),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not -1 <= x <= 1),
                       st.sampled_from([NAN, INF, -INF, "0.5", [0.5]])))
def test_config_thresholds_out_of_range_are_rejected(reference, field, value):
    expect_rejected(lambda: _config(**{field: value}), ConfigError, _named(field), reference)


@pytest.mark.parametrize("field", RETIRED_READ_SETTINGS)
def test_a_retired_read_rule_is_refused_in_new_code(reference, field):
    """The 18 read rules the learned ReadScorer replaced: a saved config drops them (with a warning);
    new code that sets one, flat or inside ``read``, is told so instead of setting an attribute nothing reads."""
    expect_rejected(lambda: _config(**{field: 0.5}), ConfigError, field, reference)
    expect_rejected(lambda: MemAdapterConfig(read={field: 0.5}), ConfigError, f"read.{field}", reference)


def test_the_retired_ingest_switch_is_refused_in_new_code_and_dropped_from_saved_configs(reference):
    expect_rejected(lambda: _config(pair_in_sentence=True), ConfigError, "pair_in_sentence", reference)
    expect_rejected(lambda: MemAdapterConfig(ingest={"pair_in_sentence": True}), ConfigError, "pair_in_sentence", reference)
    saved = MemAdapterConfig.from_dict({"ingest": {"pair_in_sentence": True, "snap_spans": True}})
    assert saved.ingest.snap_spans and "pair_in_sentence" not in saved.to_dict()["ingest"]
