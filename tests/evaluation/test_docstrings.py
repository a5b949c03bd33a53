"""The docstring examples of memadapter.evaluation run (tests/test_docstring_examples.py walks only
the memadapter/, modeling/ and training/ folders)."""

import doctest
import importlib
import pkgutil

import pytest

import memadapter.evaluation

MODULES = sorted(m.name for m in pkgutil.walk_packages(memadapter.evaluation.__path__, "memadapter.evaluation."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), report=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
