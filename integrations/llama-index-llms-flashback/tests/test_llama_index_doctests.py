"""The docstring examples of llama_index.llms.flashback (run here: see integrations/conftest.py)."""

import doctest
import importlib

import pytest

MODULES = ["__init__", "base", "embeddings", "handoff", "retrievers"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(
        "llama_index.llms.flashback" + ("" if name == "__init__" else f".{name}"))
    outcome = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert outcome.attempted > 0
    assert outcome.failed == 0
