"""GrowingCache (preallocated KV buffers) must hold exactly what DynamicCache holds.

The engine's speed work replaced DynamicCache (torch.cat per token) by GrowingCache; these tests drive
both through the same sequence of multi-token feeds, one-token decodes, crops back to a prefix, crops to
zero and buffer growth, and require the same logits, on the four tiny architectures.
"""

import pytest
import torch
from helpers import HashRetriever
from transformers import DynamicCache

from flashback_rag import FlashBack, FlashBackConfig
from flashback_rag.growing_cache import GrowingCache
from flashback_rag.kv_cache import CachedLogits, cache_keyword, crop_cache
from flashback_rag.results import GenerationStats

ARCHS = ["llama", "gpt2", "opt", "qwen2"]

# (op, argument): feed n new tokens, or crop back to a length. Covers FlashBack's crop-to-prefix,
# prepend's crop-to-zero, and appends that outgrow a 4-position buffer several times.
SCRIPT = [("feed", 7), ("feed", 1), ("feed", 1), ("crop", 5), ("feed", 9), ("feed", 1),
          ("crop", 0), ("feed", 12), ("feed", 1), ("crop", 12), ("feed", 3), ("feed", 1)]


def _forward(model, cache, ids, start):
    positions = torch.arange(start, start + ids.shape[1]).unsqueeze(0)
    out = model(input_ids=ids, **{cache_keyword(model): cache}, use_cache=True, position_ids=positions)
    return out.logits[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_same_logits_as_dynamic_cache(tiny_models, arch):
    model, _ = tiny_models[arch]
    generator = torch.Generator().manual_seed(0)
    dynamic, growing = DynamicCache(), GrowingCache(capacity=4)
    with torch.inference_mode():
        for op, n in SCRIPT:
            if op == "crop":
                crop_cache(dynamic, n)
                crop_cache(growing, n)
            else:
                ids = torch.randint(0, 250, (1, n), generator=generator)
                start = dynamic.get_seq_length()
                expected = _forward(model, dynamic, ids, start)
                got = _forward(model, growing, ids, start)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            assert growing.get_seq_length() == dynamic.get_seq_length()
    layer = growing.layers[0]
    assert layer.capacity >= 16 and layer.capacity % 4 == 0     # it grew by doubling
    assert layer.keys.shape == dynamic.layers[0].keys.shape


def test_crop_keeps_buffers_and_overwrites_the_tail():
    cache = GrowingCache(capacity=8)
    first = torch.arange(6, dtype=torch.float32).reshape(1, 1, 6, 1)
    cache.update(first, first, layer_idx=0)
    buffer = cache.layers[0]._kbuf
    crop_cache(cache, 2)
    keys, values = cache.update(torch.full((1, 1, 3, 1), -1.0), torch.full((1, 1, 3, 1), -2.0), layer_idx=0)
    assert cache.layers[0]._kbuf is buffer                        # no reallocation
    assert keys.flatten().tolist() == [0.0, 1.0, -1.0, -1.0, -1.0]
    assert values.flatten().tolist() == [0.0, 1.0, -2.0, -2.0, -2.0]
    crop_cache(cache, 0)
    assert cache.get_seq_length() == 0 and cache.layers[0].keys.shape[-2] == 0


@pytest.mark.parametrize("pattern", ["append", "prepend", "none"])
def test_engine_parity_when_the_buffer_must_grow(tiny_models, pattern, monkeypatch):
    """The engine sizes the buffer up front; force a tiny one so growth happens mid-generation."""
    model, tokenizer = tiny_models["llama"]
    original = CachedLogits.__init__

    def tiny_capacity(self, model, stats, capacity=None):
        original(self, model, stats, capacity=3)

    fb = FlashBack(model, tokenizer, HashRetriever(),
                   FlashBackConfig(pattern=pattern, stride=5, query_tokens=8, doc_tokens=16, max_context=56))
    reference = fb.generate("The capital of France is", max_new_tokens=40, ignore_eos=True,
                            use_cache=False, output_scores=True)
    monkeypatch.setattr(CachedLogits, "__init__", tiny_capacity)
    cached = fb.generate("The capital of France is", max_new_tokens=40, ignore_eos=True, output_scores=True)
    assert cached.token_ids == reference.token_ids
    assert cached.slides, "a 56-token window must slide during a 24+40-token generation"
    for a, b in zip(cached.scores, reference.scores):
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-4, atol=1e-4)


def test_cached_source_reuses_one_cache_across_recomputes(tiny_models):
    """Prepend recomputes from position 0 at every retrieval: the same buffers must be reused."""
    model, _ = tiny_models["llama"]
    source = CachedLogits(model, GenerationStats(), capacity=64)
    with torch.inference_mode():
        source.resync([5, 6, 7, 8])
        cache, buffer = source.cache, source.cache.layers[0]._kbuf
        source.extend(9)
        source.resync([1, 2, 3])                   # nothing in common: recompute from zero
        assert source.cache is cache and cache.layers[0]._kbuf is buffer
        assert cache.get_seq_length() == 3 and source.held == [1, 2, 3]
