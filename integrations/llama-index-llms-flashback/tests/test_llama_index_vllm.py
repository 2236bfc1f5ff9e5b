"""FlashBackLLM (LlamaIndex) on a real `vllm serve` of the shipped model (the root conftest's
`vllm_server`): built from the server's URL, and async calls gathered at once all in flight, never
blocking the event loop, with the texts of sequential calls."""

import asyncio

import pytest
from llama_index.core.base.llms.types import ChatMessage

from flashback_rag.errors import ConfigError
from llama_index.llms.flashback import FlashBackLLM

PROMPTS = ["The with statement is used to", "A class definition defines", "The for statement iterates over",
           "An import statement finds a module and"]
NEW = 24          # 2 segments of the shipped stride (16): each sequence re-retrieves once mid-way


@pytest.fixture(scope="module")
def served_llm(vllm_server, docs_bm25):
    return FlashBackLLM(server=vllm_server.url, retriever=docs_bm25, max_new_tokens=NEW, ignore_eos=True)


def test_built_from_the_server_url_with_the_exported_settings(served_llm, vllm_server, docs_bm25):
    engine = served_llm.engine
    assert engine.backend.name == "vllm-server" and engine.backend.concurrent
    assert served_llm.model == served_llm.metadata.model_name == "smollm2-135m-flashback"
    assert engine.config.stride == 16 and engine.config.echo_tokens == 16   # the export's flashback.json
    assert served_llm.metadata.context_window == engine.max_context - engine.config.max_block_tokens
    again = FlashBackLLM.from_dict(served_llm.to_dict(), retriever=docs_bm25)
    assert again.server == vllm_server.url and again.engine.config == engine.config
    with pytest.raises(ConfigError, match="flashback export"):
        FlashBackLLM(server=vllm_server.url, adapter="some/adapter", retriever=docs_bm25)


def test_gathered_async_calls_overlap_without_blocking_the_loop(served_llm, counted):
    sequential = [served_llm.complete(p).text for p in PROMPTS]
    chat = [ChatMessage(role="user", content=PROMPTS[0])]
    chat_reply = served_llm.chat(chat).message.content
    engine = counted(served_llm.engine)
    llm = FlashBackLLM(engine, max_new_tokens=NEW, ignore_eos=True)

    async def streamed(prompt):
        return "".join([r.delta async for r in await llm.astream_complete(prompt)])

    async def run():
        ticks, done = 0, asyncio.Event()

        async def ticker():               # runs only while the event loop is free
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(ticker())
        answers = await asyncio.gather(*(llm.acomplete(p) for p in PROMPTS[:3]), streamed(PROMPTS[3]),
                                       llm.achat(chat))
        done.set()
        await beat
        return answers, ticks

    (*completions, streamed_text, chat_response), ticks = asyncio.run(run())
    assert [c.text for c in completions] + [streamed_text] == sequential
    assert chat_response.message.content == chat_reply
    assert engine.backend.most > 1, "the async calls ran one at a time"
    assert ticks >= 20, f"the event loop was blocked (it ticked {ticks} times)"
