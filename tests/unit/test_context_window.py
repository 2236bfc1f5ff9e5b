"""Prompts and generations longer than the model's positions slide the window instead of crashing."""

import pytest
from helpers import HashRetriever

from flashback_rag import FlashBack, FlashBackConfig
from flashback_rag.errors import ConfigError

LONG_PROMPT = "word " * 150     # 750 byte tokens: past the tiny models' 512 positions


@pytest.mark.parametrize("pattern", ["append", "prepend", "none"])
def test_prompt_past_the_position_limit_slides(tiny_models, pattern):
    # GPT-2 has learned positions: any position >= 512 would be an index error.
    model, tokenizer = tiny_models["gpt2"]
    fb = FlashBack(model, tokenizer, HashRetriever(),
                   FlashBackConfig(pattern=pattern, stride=8, query_tokens=8, doc_tokens=32))
    result = fb.generate(LONG_PROMPT, max_new_tokens=20, ignore_eos=True)
    assert len(result.token_ids) == 20
    assert result.slides and result.slides[0].step == 0
    assert result.slides[0].dropped_tokens >= 750 - 512


def test_generation_past_max_context_slides_rarely(tiny_models):
    model, tokenizer = tiny_models["llama"]
    fb = FlashBack(model, tokenizer, None, FlashBackConfig(pattern="none", max_context=64))
    result = fb.generate("hello", max_new_tokens=200, ignore_eos=True)
    assert len(result.token_ids) == 200
    # each slide frees a quarter of the window beyond what is needed, so it does not slide every token
    assert 1 <= len(result.slides) <= 200 // 16


def test_block_that_cannot_fit_is_a_config_error(tiny_models):
    model, tokenizer = tiny_models["llama"]
    with pytest.raises(ConfigError, match="does not fit a context window of 512"):
        FlashBack(model, tokenizer, HashRetriever(), FlashBackConfig(doc_tokens=300, top_k=2))
    with pytest.raises(ConfigError, match="does not fit"):
        FlashBack(model, tokenizer, HashRetriever(), FlashBackConfig(doc_tokens=32, max_context=40))
