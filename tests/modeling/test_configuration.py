"""MemAdapterConfig: defaults, JSON round trip, one ConfigError per bad field, backbone checks."""

import json

import pytest

from memadapter.errors import AdapterMismatchError, ConfigError
from memadapter.modeling.backbones import supported_model_types
from memadapter.modeling.configuration_memadapter import INGEST_TIME_SETTINGS, READ_TIME_SETTINGS, MemAdapterConfig




def _full(**kw):
    base = dict(
        base_model_name_or_path="org/base", base_model_revision="abc123", backbone_model_type="qwen2",
        hidden_size=64, backbone_num_layers=2, read_layer=1, injection="cross_attn", cross_attn_layers=[1, 0],
    )
    return MemAdapterConfig(**{**base, **kw})


def test_defaults_are_valid_and_model_type_is_memadapter():
    cfg = MemAdapterConfig()
    assert cfg.model_type == "memadapter"
    assert cfg.injection == "prefix" and cfg.top_k <= cfg.num_slots and cfg.cross_attn_gate_init == 0.0


def test_round_trip_through_save_pretrained(tmp_path):
    cfg = _full(num_slots=8, top_k=2, key_dim=32, value_dim=48, grounding_hidden_size=96, router_match_threshold=0.25)
    cfg.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["model_type"] == "memadapter" and on_disk["backbone_model_type"] == "qwen2"
    assert on_disk["cross_attn_layers"] == [0, 1]  # canonical sorted order
    loaded = MemAdapterConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == cfg.to_dict()
    assert (loaded.value_dim, loaded.base_model_revision, loaded.router_match_threshold) == (48, "abc123", 0.25)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_slots", 0), ("top_k", -1), ("top_k", 100), ("chunk_tokens", 1.5), ("key_dim", True),
        ("value_dim", None), ("grounding_hidden_size", 0), ("num_event_types", 0), ("prefix_tokens_per_slot", 0),
        ("cross_attn_heads", 3), ("hidden_size", -64), ("backbone_num_layers", 0), ("read_layer", 3),
        ("read_layer", -4), ("read_layer", "last"), ("injection", "kv_cache"), ("cross_attn_layers", [2]),
        ("cross_attn_layers", [0, 0]), ("cross_attn_layers", []), ("cross_attn_layers", "0"),
        ("router_match_threshold", float("nan")), ("router_confidence_threshold", 1.5), ("slot_match_threshold", 1.5),
        ("slot_update_match_threshold", -1.5), ("retract_tombstones", 1),
        ("cross_attn_gate_init", float("inf")), ("backbone_model_type", "gpt2"), ("base_model_name_or_path", ""),
        ("chunk_boundary", "words"), ("lexical_content_words", 1),
    ],
)
def test_bad_field_raises_config_error_naming_it(field, value):
    with pytest.raises(ConfigError, match=field):
        _full(**{field: value})


def test_unknown_backbone_message_lists_supported_types():
    with pytest.raises(ConfigError) as err:
        MemAdapterConfig(backbone_model_type="gpt2")
    for mt in supported_model_types():
        assert mt in str(err.value)


def test_loading_an_invalid_config_file_is_refused(tmp_path):
    _full().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["top_k"] = 1000
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="top_k"):
        MemAdapterConfig.from_pretrained(tmp_path)


def test_check_backbone_accepts_match_and_refuses_mismatch(build_tiny):
    tiny_backbone = build_tiny
    cfg = _full()
    cfg.check_backbone(tiny_backbone("qwen2").config)
    with pytest.raises(AdapterMismatchError, match="backbone_model_type"):
        cfg.check_backbone(tiny_backbone("llama").config)
    with pytest.raises(AdapterMismatchError, match="hidden_size"):
        cfg.check_backbone(tiny_backbone("qwen2", hidden_size=32, head_dim=8).config)
    MemAdapterConfig().check_backbone(tiny_backbone("gemma").config)  # nothing recorded: nothing to refuse


def test_validate_fields_rechecks_after_edit():
    cfg = _full()
    cfg.top_k = cfg.num_slots + 1
    with pytest.raises(ConfigError, match="top_k"):
        cfg.validate_fields()


def test_settable_fields_are_config_fields_read_at_one_time_only():
    fields = MemAdapterConfig().to_dict()
    assert not READ_TIME_SETTINGS & INGEST_TIME_SETTINGS
    assert (READ_TIME_SETTINGS | INGEST_TIME_SETTINGS) <= set(fields)
