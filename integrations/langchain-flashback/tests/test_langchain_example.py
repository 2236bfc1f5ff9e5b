"""examples/langchain_chain.py runs (its --fast variant), streams and re-retrieves."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "langchain_chain.py"


@pytest.mark.integration
def test_example_runs_fast(capsys, smollm2_flashback_model):
    spec = importlib.util.spec_from_file_location("langchain_chain_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--fast"], model=smollm2_flashback_model)
    printed = capsys.readouterr().out
    assert out["answer"].strip() and out["retrievals"] == 2 and out["chunks"] > 1
    assert "passage blocks while decoding" in printed and "tokens in" in printed
    assert "echo 16" in printed          # the shipped model's own layout, not the engine defaults


VECTOR_EXAMPLE = EXAMPLE.with_name("langchain_vector_store.py")


@pytest.mark.integration
def test_vector_store_example_runs_fast_and_reports_token_usage(capsys, smollm2_flashback_model):
    spec = importlib.util.spec_from_file_location("langchain_vector_store_example", VECTOR_EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--fast"], model=smollm2_flashback_model)
    printed = capsys.readouterr().out
    result = out["result"]
    assert out["answer"].strip() and out["retrievals"] == 2
    # LangChain's usage callback and the reply agree with the engine's own counts
    assert out["usage_metadata"] == out["reply_usage"] == {
        "input_tokens": result.stats.prompt_tokens, "output_tokens": 8, "total_tokens": result.stats.prompt_tokens + 8}
    fed = [r for r in result.retrievals if not r.kept]         # a block that came back unchanged stays put
    assert out["flashback"]["passage_tokens"] == sum(r.block_tokens for r in fed) > 0
    assert out["flashback"]["echo_tokens"] == 16 * len(fed)     # the shipped model's 16-token echo
    assert "token usage (LangChain usage_metadata" in printed and "passage tokens" in printed
    assert "all-MiniLM-L6-v2, offline" in printed
