"""Token usage as LlamaIndex counts it: ``TokenCountingHandler`` through real query and chat paths (sync,
streaming, async), counted with the model's own tokenizer, and the ``flashback`` section of ``raw``."""

import asyncio

import pytest
from llama_index.core import Document, Settings, SummaryIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler

from flashback_rag.retrievers import BM25Retriever
from flashback_rag.usage import TokenUsage
from llama_index.llms.flashback import FlashBackLLM, as_flashback_query_engine

QUESTION = "When do owls hunt?"


@pytest.fixture
def counted():
    """A FlashBackLLM and a TokenCountingHandler on the model's tokenizer, set up as LlamaIndex documents it:
    in ``Settings.callback_manager`` (query engines hand that one to the LLM)."""
    bm25 = BM25Retriever.build(["Owls hunt at night.", "Cats purr when content."])
    llm = FlashBackLLM("tiny-random-llama", retriever=bm25, stride=4, doc_tokens=16, echo_tokens=2,
                       max_new_tokens=8, ignore_eos=True)
    counter = TokenCountingHandler(tokenizer=llm.tokenize)
    before = Settings._callback_manager
    Settings.callback_manager = llm.callback_manager = CallbackManager([counter])
    yield llm, counter
    Settings._callback_manager = before


def check_counts(counter, results):
    assert counter.prompt_llm_token_count == sum(r.stats.prompt_tokens for r in results)
    assert counter.completion_llm_token_count == sum(len(r.token_ids) for r in results)
    assert counter.total_llm_token_count == counter.prompt_llm_token_count + counter.completion_llm_token_count


def test_the_handler_counts_query_engine_calls_sync_streaming_and_async(counted):
    llm, counter = counted
    index = SummaryIndex.from_documents([Document(text="Owls hunt at night.")])
    results = []
    engine = as_flashback_query_engine(index, llm, response_mode="simple_summarize")
    engine.query(QUESTION)                              # a TypeError from dict(raw) used to end every call
    results.append(llm.last_result)
    streaming = as_flashback_query_engine(index, llm, response_mode="simple_summarize", streaming=True)
    list(streaming.query(QUESTION).response_gen)
    results.append(llm.last_result)
    asyncio.run(engine.aquery(QUESTION))
    results.append(llm.last_result)
    assert len(counter.llm_token_counts) == 3
    check_counts(counter, results)


def test_the_handler_counts_chat_calls_once_each(counted):
    llm, counter = counted
    results = []
    llm.chat([ChatMessage(role="user", content=QUESTION)])
    results.append(llm.last_result)
    list(llm.stream_chat([ChatMessage(role="user", content=QUESTION)]))
    results.append(llm.last_result)
    asyncio.run(llm.achat([ChatMessage(role="user", content="Do cats purr?")]))
    results.append(llm.last_result)

    async def stream():
        return [r async for r in await llm.astream_chat([ChatMessage(role="user", content="Owls?")])]

    asyncio.run(stream())
    results.append(llm.last_result)
    assert len(counter.llm_token_counts) == 4           # one LLM event per call, not chat + completion
    check_counts(counter, results)


def test_raw_is_a_mapping_with_usage_and_the_result(counted):
    llm, _ = counted
    response = llm.complete(QUESTION)
    result = llm.last_result
    assert dict(response.raw)["result"] is result and response.raw.retrievals is result.retrievals
    usage = response.raw["usage"]
    assert usage == TokenUsage.of(result, llm.engine.config).openai()
    assert usage["prompt_tokens"] == len(llm.engine.encode_prompt(QUESTION)[0])
    fed = [r for r in result.retrievals if r.block_tokens and not r.kept]    # a block kept in place: not fed
    assert fed and usage["flashback"]["passage_tokens"] == sum(r.block_tokens for r in fed)
    assert usage["flashback"]["echo_tokens"] == 2 * len(fed)        # echo_tokens=2 after every block fed
    assert usage["flashback"]["retrievals"] == len(result.retrievals) == 2
    assert response.additional_kwargs["token_usage"] == usage
    streamed = list(llm.stream_complete(QUESTION))
    assert streamed[-1].raw["usage"] == usage and all(r.raw is None for r in streamed[:-1])


def test_tokenize_is_the_models_tokenizer(counted):
    llm, _ = counted
    text = "Owls hunt at night, héllo."
    assert llm.tokenize(text) == llm.engine.tokenizer(text, add_special_tokens=False).input_ids
    assert len(llm.tokenize(text)) == len(text.encode())        # the tiny model's tokenizer is byte-level
