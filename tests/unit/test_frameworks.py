"""flashback_rag.frameworks: the shared plumbing of the LlamaIndex / LangChain integrations."""

import asyncio
import threading
import time

import pytest

from flashback_rag import FlashBack, FlashBackConfig
from flashback_rag.errors import ConfigError
from flashback_rag.frameworks import aiter_in_thread, build_engine, resolve_config, with_first_block
from flashback_rag.retrievers import BM25Retriever, Passage


def test_aiter_in_thread_keeps_one_thread_and_propagates_errors():
    def numbers():
        for i in range(5):
            yield i, threading.get_ident()
        raise ValueError("boom")

    async def run():
        seen = []
        with pytest.raises(ValueError, match="boom"):
            async for item in aiter_in_thread(numbers):
                seen.append(item)
        return seen

    seen = asyncio.run(run())
    assert [i for i, _ in seen] == list(range(5))
    assert len({t for _, t in seen}) == 1 and seen[0][1] != threading.get_ident()


def test_aiter_in_thread_stops_the_producer_when_the_consumer_leaves():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    async def run():
        async for item in aiter_in_thread(endless):
            if item == 3:
                break
        await asyncio.sleep(0.2)
        return len(produced)

    count = asyncio.run(run())
    time.sleep(0.2)
    assert len(produced) == count               # closed with the loop: the producer stopped


def test_resolve_config_and_build_engine(tiny_models):
    assert resolve_config({"stride": 4}, top_k=2) == FlashBackConfig(stride=4, top_k=2)
    with pytest.raises(ConfigError, match="unknown FlashBackConfig field"):
        resolve_config(strde=4)
    model, tokenizer = tiny_models["llama"]
    bm25 = BM25Retriever.build(["pets purr"])
    fb = build_engine((model, tokenizer), retriever=bm25, stride=4)
    assert isinstance(fb, FlashBack) and build_engine(fb) is fb
    assert build_engine(fb, stride=8).config.stride == 8 and fb.config.stride == 4
    with pytest.raises(ConfigError, match="adapter"):
        build_engine(fb, adapter="x")
    with pytest.raises(ConfigError, match="model must be"):
        build_engine(42)


def test_first_block_is_per_call_and_fits_the_window(tiny_models):
    model, tokenizer = tiny_models["llama"]
    fb = FlashBack(model, tokenizer, BM25Retriever.build(["pets purr"]),
                   FlashBackConfig(stride=4, doc_tokens=100))
    many = [Passage(id=str(i), text="x" * 200) for i in range(10)]
    result = with_first_block(fb, many).generate("pets", max_new_tokens=8, ignore_eos=True)
    first = result.retrievals[0]
    assert 1 <= len(first.passages) < 10                       # what fits a 512-token window
    assert first.block_tokens + 4 <= fb.max_context
    assert fb.config.top_k == 1 and fb.retriever is not None   # the shared engine is untouched
    plain = fb.generate("pets", max_new_tokens=8, ignore_eos=True)
    assert plain.retrievals[0].passage_ids == ["0"]
    with pytest.raises(ConfigError, match="pattern"):
        with_first_block(FlashBack(model, tokenizer, None, FlashBackConfig(pattern="none")), many)
