"""examples/llamaindex_query_engine.py runs (its --fast variant) and re-retrieves."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "llamaindex_query_engine.py"


@pytest.mark.integration
def test_example_runs_fast(capsys, smollm2_flashback_model):
    spec = importlib.util.spec_from_file_location("llamaindex_query_engine_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--fast"], model=smollm2_flashback_model)
    printed = capsys.readouterr().out
    assert out["answer"].strip() and out["retrievals"] == 2
    assert out["first_block"] == out["source_nodes"]          # the query engine's nodes, appended first
    assert "passage blocks while decoding" in printed and "tokens in" in printed
    assert "echo 16" in printed          # the shipped model's own layout, not the engine defaults
