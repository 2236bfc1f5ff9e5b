"""The FlashBack hand-over (the query engine's nodes as the first appended block) on every path a user
takes: sync and async query engines, streaming, and chat engines, each in a fresh context.

Each query runs in an empty ``contextvars.Context``: a hand-over left in the test's own context by an
earlier sync query about the same question would otherwise stand in for a lost one.
"""

import asyncio
import contextvars

import pytest
from llama_index.core import Document, SummaryIndex

from flashback_rag.retrievers import BM25Retriever
from llama_index.llms.flashback import FlashBackLLM, FlashBackNodePostprocessor, as_flashback_query_engine

QUESTION = "When do owls hunt?"
OWLS = "Owls hunt at night."


def fresh(fn, *args):
    """``fn(*args)`` in a context no earlier query wrote to."""
    return contextvars.Context().run(fn, *args)


@pytest.fixture(scope="module")
def llm():
    # The LLM's own retriever knows nothing about owls: an owl passage first can only come from the hand-over.
    bm25 = BM25Retriever.build(["Cats purr when content.", "Dogs bark at strangers."])
    return FlashBackLLM("tiny-random-llama", retriever=bm25, stride=8, doc_tokens=32, max_new_tokens=16,
                        ignore_eos=True)


@pytest.fixture(scope="module")
def index():
    return SummaryIndex.from_documents([Document(text=OWLS, id_="owls")])


def first_block(llm):
    return [p.text for p in llm.last_result.retrievals[0].passages]


def test_sync_query(llm, index):
    engine = as_flashback_query_engine(index, llm, response_mode="simple_summarize")
    fresh(engine.query, QUESTION)
    assert first_block(llm) == [OWLS]


def test_async_query(llm, index):
    engine = as_flashback_query_engine(index, llm, response_mode="simple_summarize")
    response = fresh(asyncio.run, engine.aquery(QUESTION))
    assert first_block(llm) == [OWLS]
    assert response.response == llm.last_result.text


def test_async_streaming_query(llm, index):
    engine = as_flashback_query_engine(index, llm, response_mode="simple_summarize", streaming=True)

    async def run():
        response = await engine.aquery(QUESTION)
        return "".join([delta async for delta in response.async_response_gen()])

    text = fresh(asyncio.run, run())
    assert first_block(llm) == [OWLS] and text == llm.last_result.text


def test_the_hand_over_of_one_query_does_not_leak_into_another(llm, index):
    engine = as_flashback_query_engine(index, llm, response_mode="simple_summarize")

    async def both():
        await engine.aquery(QUESTION)
        # the same context, another question: the LLM retrieves on its own
        return await llm.acomplete("Tell me about dogs.")

    fresh(asyncio.run, both())
    assert first_block(llm) != [OWLS]


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["context", "condense_plus_context"])
def test_chat_engines_sync_and_async(smollm2_model, index, mode):
    # Chat engines pack with compact-and-refine, which needs more positions than the tiny model has.
    bm25 = BM25Retriever.build(["Cats purr when content.", "Dogs bark at strangers."])
    llm = FlashBackLLM(smollm2_model, retriever=bm25, stride=8, doc_tokens=32, max_new_tokens=8,
                       ignore_eos=True, is_chat_model=True)
    chat = index.as_chat_engine(chat_mode=mode, llm=llm, node_postprocessors=[FlashBackNodePostprocessor()])
    fresh(chat.chat, QUESTION)
    assert first_block(llm) == [OWLS]
    chat.reset()
    reply = fresh(asyncio.run, chat.achat(QUESTION))
    assert first_block(llm) == [OWLS] and reply.response == llm.last_result.text
