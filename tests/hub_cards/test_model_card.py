"""Model card rendering: valid YAML front matter, a results table, a clear "not evaluated" line."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from memadapter.errors import DTypeError, NonFiniteError
from memadapter.hub_cards.model_card import NOT_EVALUATED, render_model_card

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
CONFIG = {"base_model": BASE, "num_slots": 64, "injection": "prefix", "read_layer": 15,
          "gate_init": 0.0, "backbone_model_type": "llama", "backbone_config": {"hidden_size": 576}}
RESULTS = {
    "overwrite_facts": {"accuracy": 0.91234, "n": 200},
    "uniform_needle": 0.5,
    "_command": "memadapter bench tasks --seed 0",
    "_date": "2025-11-23",
}


def split_card(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    end = card.index("\n---\n", 4)
    return yaml.safe_load(card[4:end]), card[end + 5:]


def table_rows(body: str, header: str) -> list[list[str]]:
    lines = body.splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        # split on unescaped pipes only
        cells = [c.strip().replace("\\|", "|") for c in line.replace("\\|", "\0").strip("|").split("|")]
        rows.append([c.replace("\0", "|") for c in cells])
    return rows


def test_front_matter_parses_with_required_fields():
    front, _ = split_card(render_model_card(CONFIG, RESULTS))
    assert front["library_name"] == "memadapter"
    assert front["base_model"] == BASE
    assert front["license"] == "apache-2.0"
    assert "memadapter" in front["tags"] and "llama" in front["tags"]
    assert front["pipeline_tag"] == "text-generation"


def test_huggingface_hub_accepts_card_and_eval_results():
    card = ModelCard(render_model_card(CONFIG, RESULTS, repo_id="me/adapter"))
    assert card.data.base_model == BASE and card.data.library_name == "memadapter"
    got = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert got == {("overwrite_facts", "accuracy"): 0.91234, ("overwrite_facts", "n"): 200,
                   ("uniform_needle", "value"): 0.5}


def test_results_table_and_provenance_appear():
    _, body = split_card(render_model_card(CONFIG, RESULTS))
    rows = table_rows(body, "| Task | Metric | Value |")
    assert rows == [["overwrite_facts", "accuracy", "0.9123"], ["overwrite_facts", "n", "200"],
                    ["uniform_needle", "value", "0.5"]]
    assert "- command: memadapter bench tasks --seed 0" in body
    assert "- date: 2025-11-23" in body
    assert NOT_EVALUATED not in body


@pytest.mark.parametrize("results", [None, {}, {"_date": "2025-11-23"}])
def test_no_results_gives_not_evaluated_line(results):
    front, body = split_card(render_model_card(CONFIG, results))
    assert NOT_EVALUATED in body
    assert "| Task | Metric | Value |" not in body
    assert "model-index" not in front


def test_config_table_lists_scalars_and_skips_nested():
    _, body = split_card(render_model_card(CONFIG))
    rows = dict(table_rows(body, "| Setting | Value |"))
    assert rows["num_slots"] == "64" and rows["injection"] == "prefix" and rows["gate_init"] == "0"
    assert "backbone_config" not in rows


def test_config_table_lists_the_read_and_ingest_settings_by_dotted_name():
    config = {**CONFIG, "read": {"name_chunks": 3, "withdrawn_text": None}, "ingest": {"snap_spans": True}}
    rows = dict(table_rows(split_card(render_model_card(config))[1], "| Setting | Value |"))
    assert rows["read.name_chunks"] == "3" and rows["ingest.snap_spans"] == "true"
    assert "read.withdrawn_text" in rows and "read" not in rows and "backbone_config.hidden_size" not in rows


def test_unknown_base_model_is_omitted_not_invented():
    front, body = split_card(render_model_card({"num_slots": 8, "_name_or_path": ""}))
    assert "base_model" not in front
    assert "base model not recorded" in body


def test_base_model_falls_back_to_name_or_path():
    front, _ = split_card(render_model_card({"_name_or_path": "/models/qwen"}))
    assert front["base_model"] == "/models/qwen"


def test_hostile_strings_cannot_break_front_matter_or_table():
    evil = "x\n---\nlicense: proprietary"
    card = render_model_card({"base_model": evil, "name": "a|b"}, {"t|1": {"m": "p|q"}})
    front, body = split_card(card)
    assert front["base_model"] == evil and front["license"] == "apache-2.0"
    assert table_rows(body, "| Task | Metric | Value |") == [["t|1", "m", "p|q"]]


def test_tensor_scalars_accepted_and_config_not_mutated():
    config = copy.deepcopy(CONFIG)
    _, body = split_card(render_model_card(config, {"t": {"acc": torch.tensor(0.25)}}))
    assert table_rows(body, "| Task | Metric | Value |") == [["t", "acc", "0.25"]]
    assert config == CONFIG


def test_bad_inputs_raise_typed_errors_naming_the_argument():
    with pytest.raises(DTypeError, match="config"):
        render_model_card([("base_model", BASE)])
    with pytest.raises(DTypeError, match="results"):
        render_model_card(CONFIG, [0.5])
    with pytest.raises(NonFiniteError, match=r"results\['t'\]\['acc'\]"):
        render_model_card(CONFIG, {"t": {"acc": math.nan}})
    with pytest.raises(NonFiniteError, match=r"results\['t'\]"):
        render_model_card(CONFIG, {"t": torch.tensor(math.inf)})
    with pytest.raises(DTypeError, match=r"results\['t'\]\['acc'\]"):
        render_model_card(CONFIG, {"t": {"acc": [1, 2]}})
