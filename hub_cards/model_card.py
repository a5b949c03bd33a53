"""Fill the adapter model card (``adapter_card.md``) from a config dict and evaluation results.

``save_pretrained`` writes the returned text as ``README.md`` next to the adapter weights, and
``push_to_hub`` uploads it, so the Hub shows the base model, the settings the adapter was built
with, and what it scored (or a plain line saying it was not evaluated).

Example:
    >>> from memadapter.hub_cards.model_card import render_model_card
    >>> card = render_model_card({"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "num_slots": 64},
    ...                          {"overwrite_facts": {"accuracy": 0.91}})
    >>> card.startswith("---\\nlibrary_name: memadapter")
    True
"""

from __future__ import annotations

import math
from importlib import resources
from string import Template
from typing import Any, Mapping, Optional, Sequence

import yaml

from memadapter.errors import DTypeError, NonFiniteError

TEMPLATE_NAME = "adapter_card.md"
DEFAULT_TAGS = ("memadapter", "memory", "adapter", "long-context", "text-generation")
NOT_EVALUATED = "This adapter has not been evaluated yet: no results were given when this card was written."
# Config keys that may name the frozen backbone, most specific first (HF configs use _name_or_path).
BASE_MODEL_KEYS = ("base_model", "base_model_name_or_path", "backbone_name_or_path", "backbone", "_name_or_path")

Scalar = (str, int, float, bool, type(None))
# Sub-configs of MemAdapterConfig whose fields the card lists (the settings a trained adapter may change).
NESTED_SETTINGS = ("ingest", "read")


def render_model_card(
    config: Mapping[str, Any],
    results: Optional[Mapping[str, Any]] = None,
    *,
    repo_id: Optional[str] = None,
    extra_tags: Sequence[str] = (),
) -> str:
    """Return the model card text (YAML front matter + markdown) for an adapter.

    ``config`` is the adapter config as a dict (e.g. ``MemAdapterConfig.to_dict()``); the base
    model is read from the first of ``BASE_MODEL_KEYS`` present. ``results`` maps a task to a
    ``{metric: value}`` dict (or directly to a value); keys starting with ``_`` (``_command``,
    ``_machine``, ``_date``) are provenance and listed under the table. ``None`` or no task
    entries gives a clear "not evaluated" line. Raises DTypeError / NonFiniteError naming the
    offending entry.
    """
    if not isinstance(config, Mapping):
        raise DTypeError(f"config: expected a dict, got {type(config).__name__}")
    if results is not None and not isinstance(results, Mapping):
        raise DTypeError(f"results: expected a dict or None, got {type(results).__name__}")
    rows, provenance = _result_rows(results or {})
    base = _base_model(config)
    front = _front_matter(config, base, rows, extra_tags)
    title = str(config.get("name") or repo_id or (f"memadapter adapter for {base}" if base else "memadapter adapter"))
    fields = {
        "front_matter": yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip("\n"),
        "title": _one_line(title),
        "base_model_md": f"`{base}`" if base else "(base model not recorded in the config)",
        # what from_pretrained takes: the config's own name ("smollm2" loads the packaged GGUF), else the Hub id
        "base_model_py": repr(_loadable_base(config) or base or "<base model id or path>"),
        "repo_id_py": repr(repo_id or "<this adapter's repo id or path>"),
        "config_table": _config_table(config),
        "results_section": _results_section(rows, provenance),
    }
    return Template(_template_text()).substitute(fields)


def _template_text() -> str:
    return resources.files("memadapter.hub_cards").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


def _base_model(config: Mapping[str, Any]) -> Optional[str]:
    for key in BASE_MODEL_KEYS:
        value = config.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _loadable_base(config: Mapping[str, Any]) -> Optional[str]:
    value = config.get("base_model_name_or_path")
    return value.strip() if isinstance(value, str) and value.strip() else None


def _front_matter(config: Mapping[str, Any], base: Optional[str], rows: list, extra_tags: Sequence[str]) -> dict:
    tags = list(DEFAULT_TAGS)
    family = config.get("backbone_model_type")
    for tag in ([family] if isinstance(family, str) else []) + [str(t) for t in extra_tags]:
        if tag not in tags:
            tags.append(tag)
    front: dict[str, Any] = {"library_name": "memadapter"}
    if base:
        front["base_model"] = base  # omitted when unknown: the Hub rejects an empty base_model
    front["license"] = str(config.get("license") or "apache-2.0")
    front["pipeline_tag"] = "text-generation"
    front["tags"] = tags
    numeric = [(t, m, v) for t, m, v in rows if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numeric:
        front["model-index"] = _model_index(str(config.get("name") or "memadapter-adapter"), numeric)
    return front


def _model_index(name: str, rows: list) -> list:
    """The Hub's eval-results schema: one entry per task, its numeric metrics inside."""
    by_task: dict[str, list] = {}
    for task, metric, value in rows:
        by_task.setdefault(task, []).append({"type": metric, "name": metric, "value": value})
    results = [
        {"task": {"type": "text-generation"}, "dataset": {"name": task, "type": task}, "metrics": metrics}
        for task, metrics in by_task.items()
    ]
    return [{"name": name, "results": results}]


def _result_rows(results: Mapping[str, Any]) -> tuple[list, list]:
    """Flatten ``results`` to (task, metric, value) rows and (key, text) provenance lines."""
    rows, provenance = [], []
    for task, entry in results.items():
        if not isinstance(task, str):
            raise DTypeError(f"results: keys must be str, got {type(task).__name__}")
        if task.startswith("_"):
            provenance.append((task[1:], _one_line(str(entry))))
        elif isinstance(entry, Mapping):
            for metric, value in entry.items():
                rows.append((task, str(metric), _checked_value(f"results[{task!r}][{metric!r}]", value)))
        else:
            rows.append((task, "value", _checked_value(f"results[{task!r}]", entry)))
    return rows, provenance


def _checked_value(name: str, value: Any) -> Any:
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NonFiniteError(f"{name}: metric is {value}")
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars from eval loops
        return _checked_value(name, value.item())
    raise DTypeError(f"{name}: expected a number or str, got {type(value).__name__}")


def _results_section(rows: list, provenance: list) -> str:
    if not rows:
        return NOT_EVALUATED
    lines = ["| Task | Metric | Value |", "|---|---|---|"]
    lines += [f"| {_cell(t)} | {_cell(m)} | {_cell(_fmt(v))} |" for t, m, v in rows]
    if provenance:
        lines.append("")
        lines += [f"- {_one_line(k)}: {text}" for k, text in provenance]
    return "\n".join(lines)


def _config_table(config: Mapping[str, Any]) -> str:
    """Scalar settings only: nested configs and private keys would bury the ones that matter. The
    adapter's own read / ingest settings (NESTED_SETTINGS) are rows of their own: ``read.name_chunks``."""
    flat = {f"{k}.{sub}": v for k in NESTED_SETTINGS if isinstance(config.get(k), Mapping)
            for sub, v in config[k].items()}
    items = [(k, v) for k, v in sorted({**config, **flat}.items(), key=lambda kv: str(kv[0]))
             if not str(k).startswith("_") and (isinstance(v, Scalar) or _is_scalar_list(v))]
    if not items:
        return "No configuration values were recorded."
    lines = ["| Setting | Value |", "|---|---|"]
    lines += [f"| {_cell(str(k))} | {_cell(_fmt(v))} |" for k, v in items]
    return "\n".join(lines)


def _is_scalar_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) <= 16 and all(isinstance(x, Scalar) for x in value)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    # A raw '|' would split the markdown table cell; newlines would end the row.
    return _one_line(text).replace("|", "\\|")
