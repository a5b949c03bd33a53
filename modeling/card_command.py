"""``memadapter card ADAPTER``: render the model card (README.md) of a saved adapter folder.

Arguments and entry only; the adapter files are read in :func:`run` (plain JSON and safetensors,
through ``memadapter.modeling.hub``, never a pickle).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from memadapter.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="an adapter folder (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("--results", metavar="JSON", help="a JSON file {task: {metric: value}} for the results table")
    parser.add_argument("--repo-id", help="the Hub repo id the card names in its usage example")
    parser.add_argument("--out", metavar="FILE", help="write the card here (default: print it)")


def _read_results(path: str) -> dict:
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--results: no file at {path!r}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"--results: {path!r} is not a readable JSON file ({err})") from err
    if not isinstance(results, dict):
        raise ConfigError(f"--results: {path!r} must hold a JSON object {{task: {{metric: value}}}}")
    return results


def run(args: argparse.Namespace) -> int:
    from memadapter.modeling import hub

    results = _read_results(args.results) if args.results else None
    if not Path(args.adapter).is_dir():
        raise ConfigError(f"adapter: no adapter folder at {args.adapter!r}")
    config = hub.load_adapter_config(args.adapter)
    n_params = sum(t.numel() for t in hub.load_adapter_weights(args.adapter).values())
    card = hub.adapter_card(config, n_params, results, repo_id=args.repo_id)
    if args.out:
        Path(args.out).write_text(card, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(card)
    return 0
