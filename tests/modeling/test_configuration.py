"""MemAdapterConfig: defaults, JSON round trip, one ConfigError per bad field, backbone checks; the
nested read / ingest sub-configs, legacy flat configs, and the flat names --set takes."""

import dataclasses
import json

import pytest

from memadapter.errors import AdapterMismatchError, ConfigError
from memadapter.modeling.backbones import supported_model_types
from memadapter.modeling.configuration_memadapter import RETUNABLE, SETTABLE, MemAdapterConfig, check_config_keys
from memadapter.modeling.configuration_settings import SECTION_OF, IngestConfig, ReadConfig, nest_flat_settings


def _full(**kw):
    """A full config; read / ingest settings may be given by their flat names."""
    base = dict(
        base_model_name_or_path="org/base", base_model_revision="abc123", backbone_model_type="qwen2",
        hidden_size=64, backbone_num_layers=2, read_layer=1, injection="cross_attn", cross_attn_layers=[1, 0],
    )
    return MemAdapterConfig(**nest_flat_settings({**base, **kw}))


def test_defaults_are_valid_and_model_type_is_memadapter():
    cfg = MemAdapterConfig()
    assert cfg.model_type == "memadapter"
    assert cfg.injection == "prefix" and cfg.top_k <= cfg.num_slots and cfg.cross_attn_gate_init == 0.0


def test_round_trip_through_save_pretrained(tmp_path):
    cfg = _full(num_slots=8, top_k=2, key_dim=32, value_dim=48, grounding_hidden_size=96, router_confidence_threshold=0.25)
    cfg.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["model_type"] == "memadapter" and on_disk["backbone_model_type"] == "qwen2"
    assert on_disk["cross_attn_layers"] == [0, 1]  # canonical sorted order
    loaded = MemAdapterConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == cfg.to_dict()
    assert (loaded.value_dim, loaded.base_model_revision, loaded.read.router_confidence_threshold) == (48, "abc123", 0.25)
    assert on_disk["read"]["router_confidence_threshold"] == 0.25 and "router_confidence_threshold" not in on_disk


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_slots", 0), ("top_k", -1), ("top_k", 100), ("chunk_tokens", 1.5), ("key_dim", True),
        ("value_dim", None), ("grounding_hidden_size", 0), ("num_event_types", 0), ("prefix_tokens_per_slot", 0),
        ("cross_attn_heads", 3), ("hidden_size", -64), ("backbone_num_layers", 0), ("read_layer", 3),
        ("read_layer", -4), ("read_layer", "last"), ("injection", "kv_cache"), ("cross_attn_layers", [2]),
        ("cross_attn_layers", [0, 0]), ("cross_attn_layers", []), ("cross_attn_layers", "0"),
        ("router_confidence_threshold", float("nan")), ("router_confidence_threshold", 1.5), ("slot_match_threshold", 1.5),
        ("slot_update_match_threshold", -1.5), ("retract_tombstones", 1),
        ("cross_attn_gate_init", float("inf")), ("backbone_model_type", "gpt2"), ("base_model_name_or_path", ""),
        ("chunk_boundary", "words"), ("snap_spans", 1),
        ("name_chunks", -1), ("fallback_chunks", 0), ("withdrawn_text", " "),
    ],
)
def test_bad_field_raises_config_error_naming_it(field, value):
    named = f"{SECTION_OF[field]}.{field}" if field in SECTION_OF else field  # read.name_chunks
    with pytest.raises(ConfigError, match=f"^{named}:"):
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


def test_settable_names_are_the_sub_configs_fields_and_the_retunable_top_level_ones():
    read, ingest = set(ReadConfig.names()), set(IngestConfig.names())
    assert not read & ingest and set(SETTABLE) == read | ingest | set(RETUNABLE)
    assert set(RETUNABLE) <= set(MemAdapterConfig.__annotations__) and not read & set(MemAdapterConfig.__annotations__)


def test_the_top_level_is_structural_and_small():
    own = set(MemAdapterConfig.__annotations__)  # this class's fields, not PreTrainedConfig's
    assert len(own) <= 25 and {"ingest", "read", "hidden_size", "injection", "top_k"} <= own


@pytest.mark.parametrize("cls", [IngestConfig, ReadConfig])
def test_every_setting_says_why_it_exists(cls):
    for f in dataclasses.fields(cls):
        assert len(f.metadata.get("help", "").split()) >= 5, f"{cls.section}.{f.name} has no help text"


def test_sub_configs_are_given_as_dicts_or_instances_and_copied():
    read = ReadConfig(name_chunks=3, fallback_chunks=5, withdrawn_text="unknown")
    a, b = MemAdapterConfig(read=read), MemAdapterConfig(read={"name_chunks": 3, "fallback_chunks": 5,
                                                              "withdrawn_text": "unknown"}, ingest=IngestConfig(snap_spans=True))
    assert a.read == b.read == read and a.read is not read and b.ingest.snap_spans
    a.read.name_chunks = 5
    assert read.name_chunks == 3  # two configs never share one sub-config
    assert MemAdapterConfig(read=None).read == ReadConfig()
    with pytest.raises(ConfigError, match="^read: expected a dict or a ReadConfig, got list"):
        MemAdapterConfig(read=[])
    with pytest.raises(ConfigError, match="^ingest: expected a dict or a IngestConfig, got ReadConfig"):
        MemAdapterConfig(ingest=read)


def test_nested_json_round_trips():
    cfg = _full(read={"name_chunks": 3, "withdrawn_text": "unknown"}, ingest={"chunk_boundary": "sentence"})
    for written in (cfg.to_dict(), json.loads(cfg.to_json_string()), json.loads(cfg.to_json_string(use_diff=False))):
        assert written["read"]["name_chunks"] == 3 and written["ingest"]["chunk_boundary"] == "sentence"
        assert MemAdapterConfig.from_dict(written).to_dict() == cfg.to_dict()


def test_a_flat_setting_says_where_it_lives():
    with pytest.raises(ConfigError, match=r"^name_chunks: is a read setting: use read=\{'name_chunks': 3\}"):
        MemAdapterConfig(name_chunks=3)
    with pytest.raises(ConfigError, match="^snap_spans: is an ingest setting"):
        MemAdapterConfig(snap_spans=True)
    cfg = MemAdapterConfig()
    with pytest.raises(ConfigError, match=r"set config\.read\.name_chunks"):
        cfg.name_chunks = 3  # would be an attribute nothing reads
    with pytest.raises(AttributeError, match=r"read config\.read\.name_chunks"):
        cfg.name_chunks
    assert not hasattr(cfg, "no_such_field")


def test_an_unknown_key_inside_a_sub_config_is_refused_naming_it():
    with pytest.raises(ConfigError, match="^read.name_chunk: unknown setting"):
        MemAdapterConfig(read={"name_chunk": 3})
    saved = MemAdapterConfig().to_dict()
    saved["ingest"]["snap_span"] = True
    with pytest.raises(ConfigError, match="unknown key\\(s\\) 'ingest.snap_span'"):
        MemAdapterConfig.from_dict(saved)
    with pytest.raises(ConfigError, match="'ingest.snap_span'"):
        check_config_keys(saved)


def test_nest_flat_settings_moves_only_the_settings():
    flat = {"num_slots": 8, "name_chunks": 3, "chunk_boundary": "sentence", "read": {"fallback_chunks": 5}}
    assert nest_flat_settings(flat) == {"num_slots": 8, "read": {"fallback_chunks": 5, "name_chunks": 3},
                                        "ingest": {"chunk_boundary": "sentence"}}
    assert flat["name_chunks"] == 3  # the input is left as it was
    assert nest_flat_settings({"num_slots": 8}) == {"num_slots": 8}
    with pytest.raises(ConfigError, match="^read.name_chunks: given both"):
        nest_flat_settings({"name_chunks": 3, "read": {"name_chunks": 2}})


def test_a_legacy_flat_config_file_loads_into_the_sub_configs(tmp_path):
    # saved flat, and before the learned reader: its retired read rules are dropped
    legacy = {"model_type": "memadapter", "num_slots": 8, "top_k": 2, "name_chunks": 3, "lexical_weight": 0.3,
              "read_rule": "joint", "retract_tombstones": True, "snap_spans": True, "transformers_version": "5.24.0"}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    for cfg in (MemAdapterConfig.from_dict(dict(legacy)), MemAdapterConfig.from_pretrained(tmp_path)):
        assert (cfg.num_slots, cfg.read.name_chunks) == (8, 3) and cfg.ingest.retract_tombstones and cfg.ingest.snap_spans
        saved = cfg.to_dict()
        assert "name_chunks" not in saved and "lexical_weight" not in saved and "read_rule" not in saved["read"]
    with pytest.raises(ConfigError, match="unknown key\\(s\\) 'name_chunk'"):
        MemAdapterConfig.from_dict({**legacy, "name_chunk": 3})


def test_apply_settings_routes_flat_names_all_or_nothing():
    cfg = MemAdapterConfig(num_slots=8, top_k=2)
    cfg.apply_settings({"name_chunks": 3, "snap_spans": True, "top_k": 1})
    assert (cfg.read.name_chunks, cfg.ingest.snap_spans, cfg.top_k) == (3, True, 1)
    before = cfg.to_dict()
    for bad, named in (({"name_chunks": 5, "top_k": 9}, "^top_k"), ({"top_k": 2, "name_chunks": -1}, "^read.name_chunks"),
                       ({"lexical_weight": 0.3}, "^lexical_weight: not a setting"),  # retired: no longer settable
                       ({"snap_spans": False, "num_slots": 4}, "^num_slots: not a setting")):
        with pytest.raises(ConfigError, match=named):
            cfg.apply_settings(bad)
        assert cfg.to_dict() == before


def test_from_pretrained_takes_nested_settings(build_tiny):
    from memadapter.modeling import MemAdapterForCausalLM

    model = MemAdapterForCausalLM.from_pretrained(build_tiny("llama"), key_dim=8, value_dim=8, num_slots=4, top_k=2,
                                                  read={"name_chunks": 3}, ingest={"snap_spans": True})
    assert model.config.read.name_chunks == 3 and model.config.ingest.snap_spans
    with pytest.raises(ConfigError, match="use read="):
        MemAdapterForCausalLM.from_pretrained(build_tiny("llama"), name_chunks=3)


def test_parse_settings_reads_json_values_and_names_a_bad_item():
    from memadapter.modeling.configuration_memadapter import parse_settings

    assert parse_settings(["name_chunks=3", "fallback_chunks=null", "top_k=2"]) == \
        {"name_chunks": 3, "fallback_chunks": None, "top_k": 2}
    with pytest.raises(ConfigError, match="--set: expected FIELD=VALUE"):
        parse_settings(["no_such_setting=1"])
    with pytest.raises(ConfigError, match="--set: expected FIELD=VALUE"):
        parse_settings(["lexical_weight=0.3"])  # a retired read rule
    with pytest.raises(ConfigError, match="--set: expected FIELD=VALUE"):
        parse_settings(["name_chunks"])
    with pytest.raises(ConfigError, match="--set top_k"):
        parse_settings(["top_k=[1"])
