"""Every docstring example in the package runs and prints what it says (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import memadapter
import memadapter.demo
import memadapter.hub_cards
import memadapter.modeling
import memadapter.training

MODULES = sorted({m.name for pkg in (memadapter, memadapter.modeling, memadapter.training, memadapter.hub_cards,
                              memadapter.demo)
                 for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                 if not m.name.endswith("__main__")})  # a CLI entry point runs on import


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), report=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
