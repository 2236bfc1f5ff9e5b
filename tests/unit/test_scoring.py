"""FlashBack.score: a given text read through the decoding loop, each token's loss under its layout.

The loop's scores must equal the evaluation code's (``training.evaluate.window_token_nll``) on the same
retrieval points and passages: one definition of the layout, kept blocks included.
"""

import math

import pytest
import torch
from helpers import ScriptedRetriever

from flashback_rag import FlashBack, FlashBackConfig
from flashback_rag.errors import ConfigError
from flashback_rag.training.evaluate import window_token_nll

PROMPT = list(range(40, 76))          # token ids, no BOS: prepend's layout then has nothing to anchor
STRIDE = 4


def _continuation(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 200, (n,), generator=g).tolist()


@pytest.mark.parametrize("pattern,echo,block_positions,keep", [
    ("append", 0, "after", True), ("append", 3, "before", True), ("append", 3, "after", False),
    ("prepend", 0, "after", True), ("none", 0, "after", True)])
def test_score_equals_window_evaluation(tiny_models, pattern, echo, block_positions, keep):
    model, tokenizer = tiny_models["llama"]
    cfg = FlashBackConfig(pattern=pattern, stride=STRIDE, query_tokens=8, doc_tokens=12, echo_tokens=echo,
                          block_positions=block_positions, keep_unchanged=keep)
    fb = FlashBack(model, tokenizer, ScriptedRetriever("AABBBA") if pattern != "none" else None, cfg)
    text = _continuation()
    scored = fb.score(PROMPT, text)
    assert scored.token_ids == text and len(scored.token_nll) == len(text)
    assert scored.perplexity == pytest.approx(math.exp(sum(scored.token_nll) / len(text)))
    if pattern == "append":
        assert [r.kept for r in scored.retrievals] == [False, keep, False, keep, keep, False]
    tokens = PROMPT + text
    points = [len(PROMPT) + STRIDE * j for j in range(len(text) // STRIDE)]
    passages = ([[fb._passage_tokens(p) for p in r.passages] for r in scored.retrievals] if pattern != "none"
                else [[] for _ in points])
    record = {"tokens": tokens, "points": [p for p in points], "passages": passages, "stride": STRIDE}
    evaluated = window_token_nll(model, tokenizer, [record], pattern, markers=True, echo=echo,
                                 block_positions=block_positions, keep_unchanged=keep)
    torch.testing.assert_close(torch.tensor(scored.token_nll), evaluated.flatten(), rtol=1e-4, atol=1e-4)
    if fb.retriever is not None:
        fb.retriever.calls.clear()                   # the script starts again for the reference run
    reference = fb.score(PROMPT, text, use_cache=False)
    torch.testing.assert_close(torch.tensor(scored.token_nll), torch.tensor(reference.token_nll),
                               rtol=1e-4, atol=1e-4)


def test_score_takes_text_and_refuses_what_it_cannot_read(tiny_models):
    model, tokenizer = tiny_models["llama"]
    fb = FlashBack(model, tokenizer, ScriptedRetriever("A"), FlashBackConfig(stride=4, doc_tokens=12))
    result = fb.score("The capital of France", " is Paris, a city on the Seine.")
    assert result.perplexity > 1 and result.stats.generated_tokens == len(result.token_nll)
    assert fb.generate("The capital of France", max_new_tokens=4).perplexity is None
    with pytest.raises(ConfigError, match="empty"):
        fb.score("The capital", "")
    with pytest.raises(ConfigError, match="marker id"):
        fb.score("The capital", [5, fb.markers.left])
    with pytest.raises(ConfigError, match="outside the tokenizer"):
        fb.score("The capital", [5, 10 ** 9])
    with pytest.raises(ConfigError, match="must be integers"):
        fb.score("The capital", [5, 2.5])
    marked = fb.score("The capital", " <MARK_L> is here")          # a marker string is text, never the marker
    assert fb.markers.left not in marked.token_ids


@pytest.mark.parametrize("keep", [True, False])
def test_text_perplexity_reads_what_the_decoding_loop_reads(tiny_models, keep):
    """eval ppl --text with room for the whole text: every chunk's context is the text before it, so its
    losses equal the decoding loop's (score) from the first retrieval point on, kept blocks included."""
    from flashback_rag.training.evaluate import text_perplexity

    model, tokenizer = tiny_models["llama"]
    text = "Paris is the capital of France. " * 3 + "Rome is in Italy, on the Tiber. " * 3
    ids = tokenizer(text, add_special_tokens=False).input_ids[:4 + STRIDE * 6]
    cfg = FlashBackConfig(stride=STRIDE, query_tokens=8, doc_tokens=12, keep_unchanged=keep)
    fb = FlashBack(model, tokenizer, ScriptedRetriever("AABBBA"), cfg)
    scored = fb.score(ids[:STRIDE], ids[STRIDE:])
    assert [r.kept for r in scored.retrievals[:6]] == [False, keep, False, keep, keep, False]
    result = text_perplexity(model, tokenizer, tokenizer.decode(ids), ScriptedRetriever("AABBBA"), "append",
                             stride=STRIDE, query_tokens=8, doc_tokens=12, top_k=1, max_positions=512,
                             keep_unchanged=keep)
    assert result["keep_unchanged"] is keep and result["tokens"] == STRIDE * 6
    chunks = [sum(scored.token_nll[j * STRIDE:(j + 1) * STRIDE]) for j in range(6)]
    torch.testing.assert_close(torch.tensor(result["chunk_nll"]), torch.tensor(chunks), rtol=1e-3, atol=1e-3)
