"""The layering of CONTRIBUTING.md, read from the source with ``ast``: core -> modeling -> training,
and nothing installed imports the research code in experiments/.

Relative imports are resolved, and ``importlib.import_module("...")`` with a literal name counts as
an import, so a lazy import cannot hide a dependency. The CLI reaches a bench module by name from a
table (``memadapter.cli._BENCHES``, ``_COMMANDS``) and ``memadapter`` re-exports the Hugging Face classes
lazily (``memadapter._EXPORTS``); those tables are checked on their own below.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
# source folder -> the package name it is installed as (pyproject's package-dir), so a new folder is walked
INSTALLED = {"memadapter": "memadapter", **{folder: pkg for pkg, folder in SETUPTOOLS["package-dir"].items()}}


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name ``source`` (the module ``module``) imports, relative imports made absolute.
    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            names.add(stem)
            names.update(f"{stem}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def modules(folder: str) -> list[tuple[str, Path]]:
    """(installed module name, path) of every .py file under an installed source folder."""
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = path.relative_to(ROOT / folder).with_suffix("").parts
        out.append((".".join((INSTALLED[folder],) + parts), path))
    return out


def imports_of(folder: str) -> dict[str, set[str]]:
    return {name: imported_names(path.read_text(), name.removesuffix(".__init__"), path.name == "__init__.py")
            for name, path in modules(folder)}


def offending(imports: dict[str, set[str]], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {name: sorted(n for n in names if n in forbidden or n.startswith(tuple(f + "." for f in forbidden)))
           for name, names in imports.items()}
    return {name: hits for name, hits in bad.items() if hits}


def test_the_walker_sees_absolute_relative_and_lazy_imports():
    src = ("from ..modeling import tiny\nfrom memadapter import training\nimport experiments.phase13\n"
           "def f():\n    import importlib\n    return importlib.import_module('memadapter.training.train')\n")
    names = imported_names(src, "memadapter.bench.x", is_package=False)
    assert offending({"x": names}, ("memadapter.modeling", "memadapter.training", "experiments")) == {
        "x": ["experiments.phase13", "memadapter.modeling", "memadapter.modeling.tiny", "memadapter.training",
              "memadapter.training.train"]}
    assert "memadapter.bench.stats" in imported_names("from .stats import f\n", "memadapter.bench.x", False)
    assert "memadapter.bench.stats" in imported_names("from .stats import f\n", "memadapter.bench", True)


def test_every_installed_folder_is_walked():
    assert all(p.split(".")[0] == "memadapter" for p in SETUPTOOLS["packages"])  # experiments/ is never installed
    assert {"modeling", "training", "hub_cards"} <= set(INSTALLED)
    walked = {name for folder in INSTALLED for name, _ in modules(folder)}
    assert {"memadapter.cli", "memadapter.bench.stress", "memadapter.modeling.modeling_memadapter",
            "memadapter.training.train", "memadapter.hub_cards.__init__"} <= walked


# The layers above the core, lowest first: each may import the ones before it, never one after it.
ABOVE_CORE = ("memadapter.hub_cards", "memadapter.modeling", "memadapter.training", "memadapter.evaluation",
              "memadapter.demo", "experiments")
# `accelerate launch -m memadapter.eval` is the command issue 25 names: that one thin entry of the
# core reaches the evaluation layer, inside functions, when asked to run.
ENTRY_SHIMS = {"memadapter.eval"}


def test_the_core_never_imports_a_layer_above_it():
    bad = offending(imports_of("memadapter"), ABOVE_CORE)
    assert set(bad) <= ENTRY_SHIMS, bad
    assert all(n.startswith("memadapter.evaluation.cli") for names in bad.values() for n in names), bad


@pytest.mark.parametrize("folder, layer", [("hub_cards", "memadapter.hub_cards"), ("modeling", "memadapter.modeling"),
                                           ("training", "memadapter.training"),
                                           ("evaluation", "memadapter.evaluation")])
def test_a_layer_never_imports_one_above_it(folder, layer):
    above = ABOVE_CORE[ABOVE_CORE.index(layer) + 1:]
    assert offending(imports_of(folder), above) == {}


@pytest.mark.parametrize("folder", sorted(set(INSTALLED) - {"memadapter", "modeling"}))
def test_no_installed_module_imports_experiments(folder):
    assert offending(imports_of(folder), ("experiments",)) == {}


def test_the_cli_dispatches_to_installed_benches_and_imports_only_the_one_it_runs():
    from memadapter.cli import _BENCHES

    assert all(m.startswith(("memadapter.bench.", "memadapter.modeling.")) for m, _ in _BENCHES.values())
    # A fresh interpreter: this test process has long imported modeling.
    code = ("import sys; from memadapter.cli import build_parser; build_parser('evidence'); "
            "print(sorted(m for m in sys.modules if m.startswith(('memadapter.modeling', 'memadapter.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_core_reaches_upper_layers_only_through_its_named_entry_tables():
    """The two tables that name upper-layer modules as strings: ``memadapter``'s lazy exports (the
    Hugging Face classes) and the CLI's commands. Neither imports anything until used."""
    import memadapter
    from memadapter.cli import _COMMANDS

    upper = {name: module for name, module in memadapter._EXPORTS.items() if module.startswith(ABOVE_CORE)}
    assert upper == {"MemAdapterConfig": "memadapter.modeling", "MemAdapterForCausalLM": "memadapter.modeling"}
    assert {m for m, _, _ in _COMMANDS.values()} == {"memadapter.demo.demo_command", "memadapter.demo.ask_command",
                                                     "memadapter.training.train", "memadapter.eval",
                                                     "memadapter.modeling.card_command"}
    code = ("import sys, memadapter; from memadapter.cli import build_parser; build_parser(''); "
            "print(sorted(m for m in sys.modules if m.startswith(('memadapter.modeling', 'memadapter.training', "
            "'memadapter.demo', 'memadapter.evaluation'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
