"""The engine's core property: cached decoding == recomputing the whole logical context every token.

For every context pattern, with and without markers, on four architectures, with passages that change
(crop + re-encode) and repeat (reuse), with several passages, and across context-window slides.
"""

import pytest
import torch
from helpers import HashRetriever, assert_same_generation

from flashback_rag import FlashBack, FlashBackConfig
from flashback_rag.retrievers.base import Passage

ARCHS = ["llama", "gpt2", "opt", "qwen2"]
PROMPT = "The capital of France is a city that"


def _both(fb, **kw):
    cached = fb.generate(PROMPT, ignore_eos=True, output_scores=True, **kw)
    reference = fb.generate(PROMPT, ignore_eos=True, output_scores=True, use_cache=False, **kw)
    return cached, reference


_assert_same = assert_same_generation


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pattern", ["append", "prepend", "none"])
@pytest.mark.parametrize("markers", [True, False])
def test_cached_equals_recomputed(tiny_models, arch, pattern, markers):
    model, tokenizer = tiny_models[arch]
    fb = FlashBack(model, tokenizer, HashRetriever(),
                   FlashBackConfig(pattern=pattern, markers=markers, stride=4, query_tokens=8, doc_tokens=24))
    cached, reference = _both(fb, max_new_tokens=24)
    _assert_same(cached, reference)
    if pattern != "none":
        assert len(cached.retrievals) == 6
        assert all(r.passages for r in cached.retrievals)
        # the passage changes along the way, so the cache really was cropped and re-fed
        assert len({tuple(r.passage_ids) for r in cached.retrievals}) > 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pattern", ["append", "prepend", "none"])
def test_parity_with_several_passages_and_window_slides(tiny_models, arch, pattern):
    model, tokenizer = tiny_models[arch]
    fb = FlashBack(model, tokenizer, HashRetriever(),
                   FlashBackConfig(pattern=pattern, stride=5, query_tokens=8, doc_tokens=16, top_k=2,
                                   max_context=96))
    cached, reference = _both(fb, max_new_tokens=70)
    _assert_same(cached, reference)
    assert cached.slides, "a 96-token window must slide during a 36+70-token generation"
    assert [s.window_start for s in cached.slides] == [s.window_start for s in reference.slides]


class ChangingRetriever(HashRetriever):
    """A different passage at every retrieval: prepend can never reuse its cache across one."""

    def retrieve(self, query, k):
        self.calls.append(query)
        n = len(self.calls)
        return [Passage(id=str(n), text=self.texts[n % len(self.texts)] + f" ({n})", title=f"T{n}")]


def test_append_keeps_the_prefix_cache(tiny_models):
    """Append re-feeds only the last stride tokens + block; prepend recomputes the prefix."""
    model, tokenizer = tiny_models["llama"]
    stats = {}
    for pattern in ("append", "prepend"):
        fb = FlashBack(model, tokenizer, ChangingRetriever(),
                       FlashBackConfig(pattern=pattern, stride=4, query_tokens=8, doc_tokens=24))
        stats[pattern] = fb.generate(PROMPT, max_new_tokens=40, ignore_eos=True).stats
    assert stats["append"].reused_tokens > 3 * stats["prepend"].reused_tokens
    assert stats["append"].prefill_tokens < stats["prepend"].prefill_tokens


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("markers", [True, False])
def test_echo_cached_equals_recomputed(tiny_models, arch, markers):
    """Echo (the last k prefix tokens repeated after the block) keeps cached == recomputed."""
    model, tokenizer = tiny_models[arch]
    fb = FlashBack(model, tokenizer, HashRetriever(),
                   FlashBackConfig(pattern="append", markers=markers, stride=4, query_tokens=8, doc_tokens=24,
                                   echo_tokens=6))
    cached, reference = _both(fb, max_new_tokens=24)
    _assert_same(cached, reference)
    assert len({tuple(r.passage_ids) for r in cached.retrievals}) > 1


@pytest.mark.parametrize("arch", ARCHS)
def test_echo_parity_across_window_slides(tiny_models, arch):
    model, tokenizer = tiny_models[arch]
    fb = FlashBack(model, tokenizer, HashRetriever(),
                   FlashBackConfig(pattern="append", stride=5, query_tokens=8, doc_tokens=16, top_k=2,
                                   echo_tokens=8, max_context=96))
    cached, reference = _both(fb, max_new_tokens=70)
    _assert_same(cached, reference)
    assert cached.slides, "a 96-token window must slide during a 36+70-token generation"


def test_echo_changes_what_the_model_reads_and_keeps_the_prefix_cache(tiny_models):
    """The echo is fed with the block (k more prefill tokens per retrieval); the prefix is never re-fed.
    (Every block re-inserted, as in the paper, so every retrieval pays for its echo.)"""
    model, tokenizer = tiny_models["llama"]
    runs = {}
    for echo in (0, 6):
        fb = FlashBack(model, tokenizer, HashRetriever(),
                       FlashBackConfig(pattern="append", stride=4, query_tokens=8, doc_tokens=24, echo_tokens=echo,
                                       keep_unchanged=False))
        runs[echo] = fb.generate(PROMPT, max_new_tokens=24, ignore_eos=True, output_scores=True)
    plain, echoed = runs[0], runs[6]
    retrievals = len(plain.retrievals)
    assert echoed.stats.prefill_tokens == plain.stats.prefill_tokens + 6 * retrievals
    assert echoed.stats.reused_tokens == plain.stats.reused_tokens
    assert not torch.equal(plain.scores[0], echoed.scores[0])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("markers", [True, False])
@pytest.mark.parametrize("echo", [0, 6])
def test_block_before_cached_equals_recomputed(tiny_models, arch, markers, echo):
    """block_positions='before' (the block at -len..-1, the text at its own positions) keeps cached ==
    recomputed, and the reference really recomputes with those positions (an explicit mask)."""
    model, tokenizer = tiny_models[arch]
    # (every block re-inserted: which blocks a run keeps depends on its text, and the cost check below
    # compares two runs whose texts differ)
    cfg = FlashBackConfig(pattern="append", markers=markers, stride=4, query_tokens=8, doc_tokens=24,
                          echo_tokens=echo, block_positions="before", keep_unchanged=False)
    cached, reference = _both(FlashBack(model, tokenizer, HashRetriever(), cfg), max_new_tokens=24)
    _assert_same(cached, reference)
    assert len({tuple(r.passage_ids) for r in cached.retrievals}) > 1
    after = FlashBack(model, tokenizer, HashRetriever(), cfg.replace(block_positions="after"))
    plain = after.generate(PROMPT, max_new_tokens=24, ignore_eos=True, output_scores=True)
    assert not torch.allclose(plain.scores[0], cached.scores[0])        # the positions reach the model
    # the same tokens fed and kept: only where the block sits in position space differs
    assert (plain.stats.prefill_tokens, plain.stats.reused_tokens) == (cached.stats.prefill_tokens,
                                                                       cached.stats.reused_tokens)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_block_before_parity_across_window_slides(tiny_models, arch):
    model, tokenizer = tiny_models[arch]
    fb = FlashBack(model, tokenizer, HashRetriever(),
                   FlashBackConfig(pattern="append", stride=5, query_tokens=8, doc_tokens=16, top_k=2,
                                   echo_tokens=8, max_context=96, block_positions="before"))
    cached, reference = _both(fb, max_new_tokens=70)
    _assert_same(cached, reference)
    assert cached.slides, "a 96-token window must slide during a 36+70-token generation"


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
def test_block_before_is_refused_for_absolute_positions(tiny_models, arch):
    from flashback_rag.errors import ConfigError

    model, tokenizer = tiny_models[arch]
    with pytest.raises(ConfigError, match="learned absolute positions"):
        FlashBack(model, tokenizer, HashRetriever(), FlashBackConfig(block_positions="before"))
    # only the appended layout has the setting: prepend ignores it
    FlashBack(model, tokenizer, HashRetriever(), FlashBackConfig(pattern="prepend", block_positions="before"))


def test_block_before_is_refused_by_a_backend_without_position_ids(tiny_models):
    from flashback_rag.backends.hf import TransformersBackend
    from flashback_rag.errors import ConfigError

    class Numbered(TransformersBackend):
        name, custom_positions = "numbered", False

    model, tokenizer = tiny_models["llama"]
    with pytest.raises(ConfigError, match="the numbered backend cannot take"):
        FlashBack(None, tokenizer, HashRetriever(), FlashBackConfig(block_positions="before"),
                  backend=Numbered(model))
