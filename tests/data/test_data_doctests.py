"""Run the usage examples in the data modules' docstrings (they are part of the API contract)."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["records", "sbu", "fpha", "synth", "transforms", "images", "graphs"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"prunekit.data.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
