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


VECTOR_EXAMPLE = EXAMPLE.with_name("llamaindex_vector_index.py")


@pytest.mark.integration
def test_vector_index_example_runs_fast_and_reports_token_usage(capsys, smollm2_flashback_model):
    spec = importlib.util.spec_from_file_location("llamaindex_vector_index_example", VECTOR_EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--fast"], model=smollm2_flashback_model)
    printed = capsys.readouterr().out
    result, usage = out["result"], out["usage"]
    assert out["answer"].strip() and out["retrievals"] == 2
    assert out["first_block"] == out["source_nodes"]          # the vector index's nodes, appended first
    # LlamaIndex's handler counted with the model's tokenizer: the engine's own numbers
    assert out["counted"] == {"prompt": result.stats.prompt_tokens, "completion": 8}
    fed = [r for r in result.retrievals if not r.kept]         # a block that came back unchanged stays put
    assert usage.passage_tokens == sum(r.block_tokens for r in fed) > 0
    assert usage.echo_tokens == 16 * len(fed)                   # the shipped model's 16-token echo
    assert "token usage (LlamaIndex TokenCountingHandler" in printed and "passage tokens" in printed
    assert "all-MiniLM-L6-v2, offline" in printed
