"""Fixtures shared by every test folder."""

import importlib.util
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The test machine's cores are shared: one torch thread for a module, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def load_script():
    """``load_script("name")`` -> the module scripts/name.py, freshly executed (scripts/ is no package)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load
