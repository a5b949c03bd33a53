"""Every docstring example in experiments/ runs and prints what it says (the package's own doctest
test walks only what is installed)."""

import doctest
import importlib
import pkgutil

import pytest

import experiments

MODULES = sorted(m.name for m in pkgutil.walk_packages(experiments.__path__, "experiments."))


def test_every_research_module_is_walked():
    assert {"experiments.phase12", "experiments.phase13_data", "experiments.generation_read_sweep"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), report=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
