"""FlashBackLLM / ChatFlashBack (LangChain) on tiny-random-llama: parity with the engine, LCEL
invoke / batch / stream / astream, token callbacks, stop strings, concurrency, bad input, adapters."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnablePassthrough

from flashback_rag import FlashBackConfig
from flashback_rag.errors import ConfigError, RetrievalError
from langchain_flashback import ChatFlashBack, FlashBackLLM, FlashBackRetriever, LangChainPassageRetriever

PROMPTS = ["The capital of France", "Cats purr", "Rome is", "The with statement"]


@pytest.fixture(scope="module")
def llm(tiny_engine):
    return FlashBackLLM(model=tiny_engine, max_new_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def chain(llm):
    return PromptTemplate.from_template("{topic}") | llm | StrOutputParser()


def expected_text(engine, prompt, **kw):
    return engine.generate(prompt, **{"max_new_tokens": 12, "ignore_eos": True, **kw}).text


def test_invoke_equals_engine_generate(llm, tiny_engine):
    for prompt in PROMPTS[:2]:
        assert llm.invoke(prompt) == expected_text(tiny_engine, prompt)
        assert len(llm.last_result.retrievals) == 3
    out = llm.generate([PROMPTS[0]])
    info = out.generations[0][0].generation_info
    assert info["generated_tokens"] == 12 and [r["step"] for r in info["retrievals"]] == [0, 4, 8]


def test_lcel_invoke_batch_stream_astream(chain, tiny_engine):
    expected = [expected_text(tiny_engine, p) for p in PROMPTS]
    assert chain.invoke({"topic": PROMPTS[0]}) == expected[0]
    assert chain.batch([{"topic": p} for p in PROMPTS]) == expected
    chunks = list(chain.stream({"topic": PROMPTS[1]}))
    assert len(chunks) > 2 and "".join(chunks) == expected[1]

    async def run():
        return [c async for c in chain.astream({"topic": PROMPTS[2]})], await chain.ainvoke({"topic": PROMPTS[3]})

    achunks, ainvoked = asyncio.run(run())
    assert len(achunks) > 2 and "".join(achunks) == expected[2] and ainvoked == expected[3]


def test_stream_calls_on_llm_new_token(llm):
    class Tokens(BaseCallbackHandler):
        def __init__(self):
            self.tokens = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    handler = Tokens()
    chunks = list(llm.stream(PROMPTS[0], config={"callbacks": [handler]}))
    assert handler.tokens == [c for c in chunks if c] and "".join(handler.tokens) == llm.invoke(PROMPTS[0])


def test_stop_strings(tiny_engine):
    llm = FlashBackLLM(model=tiny_engine, max_new_tokens=24, ignore_eos=True)
    free = llm.invoke(PROMPTS[0])
    stop = free[5:7]
    want = free[:free.index(stop)]
    assert llm.invoke(PROMPTS[0], stop=[stop]) == want
    assert "".join(llm.stream(PROMPTS[0], stop=[stop])) == want
    assert llm.last_result.finish_reason == "stop"
    bound = FlashBackLLM(model=tiny_engine, max_new_tokens=24, ignore_eos=True, stop=[stop])
    assert bound.invoke(PROMPTS[0]) == want


def test_concurrent_threads_and_tasks_get_their_own_results(llm, tiny_engine):
    expected = [expected_text(tiny_engine, p) for p in PROMPTS]
    assert len(set(expected)) == len(PROMPTS)
    assert llm.batch(PROMPTS * 2, config={"max_concurrency": 4}) == expected * 2
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(llm.invoke, PROMPTS)) == expected

    async def run():
        async def streamed(p):
            return "".join([c async for c in llm.astream(p)])
        return (await asyncio.gather(*(llm.ainvoke(p) for p in PROMPTS)),
                await asyncio.gather(*(streamed(p) for p in PROMPTS)),
                await llm.abatch(PROMPTS))

    invoked, streamed, batched = asyncio.run(run())
    assert invoked == streamed == batched == expected


def test_chat_model(tiny_engine):
    chat = ChatFlashBack(model=tiny_engine, max_new_tokens=12, ignore_eos=True)
    messages = [("system", "Be brief."), ("human", "Capital of France?")]
    reply = chat.invoke(messages)
    prompt = "system: Be brief.\nuser: Capital of France?\nassistant:"    # no chat template: plain turns
    assert reply.content == expected_text(tiny_engine, prompt)
    chunks = list(chat.stream(messages))
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == reply.content
    assert asyncio.run(chat.ainvoke(messages)).content == reply.content
    assert "".join(asyncio.run(_collect(chat.astream(messages)))) == reply.content


async def _collect(stream):
    return [c.content async for c in stream]


class FailsAfterFirst(BaseRetriever):
    """A real LangChain retriever whose back-end goes down after its first query."""

    calls: int = 0

    def _get_relevant_documents(self, query, *, run_manager):
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("vector store unreachable")
        return [Document(page_content="Paris is in France.", id="p")]


def test_a_failing_retriever_is_skipped_or_stops_generation(tiny_engine):
    llm = FlashBackLLM(model=tiny_engine, retriever=FailsAfterFirst(), max_new_tokens=12, ignore_eos=True)
    llm.invoke(PROMPTS[0])
    result = llm.last_result
    assert len(result.token_ids) == 12 and result.retrievals[0].passage_ids == ["p"]
    assert result.retrievals[1].error and "vector store unreachable" in result.warnings[0]
    strict = FlashBackLLM(model=tiny_engine, retriever=FailsAfterFirst(), strict=True, max_new_tokens=12,
                          ignore_eos=True)
    with pytest.raises(RetrievalError, match="vector store unreachable"):
        strict.invoke(PROMPTS[0])


def test_a_prompt_past_the_context_window_slides(llm, tiny_engine):
    long_prompt = "The capital of France is Paris. " * 20
    assert llm.invoke(long_prompt) == expected_text(tiny_engine, long_prompt)
    assert llm.last_result.slides


def test_constructor_keywords_and_identifying_params(tiny_engine):
    pair = (tiny_engine.model, tiny_engine.tokenizer)
    a = FlashBackLLM(model=pair, retriever=tiny_engine.retriever, stride=8, top_k=2, max_new_tokens=5)
    b = FlashBackLLM(pair, retriever=tiny_engine.retriever, config=FlashBackConfig(stride=8, top_k=2),
                     max_new_tokens=5)
    assert a.engine.config == b.engine.config and a.invoke("x") == b.invoke("x")
    params = a._identifying_params
    assert params["stride"] == 8 and params["top_k"] == 2 and params["max_new_tokens"] == 5
    assert a._llm_type == "flashback"
    assert a.model_dump()["config"]["stride"] == 8
    with pytest.raises(ConfigError, match="needs a retriever"):
        FlashBackLLM(model=pair)
    with pytest.raises(ConfigError, match="adapter"):
        FlashBackLLM(model=tiny_engine, adapter="some/adapter")
    with pytest.raises(TypeError, match="model="):
        FlashBackLLM(retriever=tiny_engine.retriever)


def test_adapter_loads_and_matches_the_engine(tiny_engine, tiny_adapter):
    from flashback_rag import FlashBack

    llm = FlashBackLLM(model="tiny-random-llama", adapter=str(tiny_adapter), retriever=tiny_engine.retriever,
                       max_new_tokens=10, ignore_eos=True)
    engine = FlashBack.from_pretrained("tiny-random-llama", adapter=str(tiny_adapter),
                                       retriever=tiny_engine.retriever)
    text = llm.invoke("capital of Italy")
    assert text == engine.generate("capital of Italy", 10, ignore_eos=True).text
    plain = FlashBackLLM(model=tiny_engine, max_new_tokens=10, ignore_eos=True).invoke("capital of Italy")
    assert text != plain


def test_retriever_adapters_both_ways_in_a_rag_chain(tiny_engine):
    bm25 = tiny_engine.retriever
    lc = FlashBackRetriever(retriever=bm25, k=1)
    docs = lc.invoke("capital of Italy")
    assert [d.metadata["title"] for d in docs] == ["Italy"]
    back = LangChainPassageRetriever(lc).retrieve("capital of Italy", 1)
    assert [p.text for p in back] == [docs[0].page_content]
    # A RAG chain whose retriever is also the LLM's re-retriever (through the LangChain adapter).
    llm = FlashBackLLM(model=(tiny_engine.model, tiny_engine.tokenizer),
                       retriever=LangChainPassageRetriever(lc), stride=4, max_new_tokens=8, ignore_eos=True)
    prompt = PromptTemplate.from_template("{context}\nQuestion: {question}\nAnswer:")
    rag = ({"context": lc | (lambda ds: "\n".join(d.page_content for d in ds)),
            "question": RunnablePassthrough()} | prompt | llm | StrOutputParser())
    answer = rag.invoke("capital of Italy")
    assert isinstance(answer, str) and len(llm.last_result.token_ids) == 8
    assert all(r.passages for r in llm.last_result.retrievals)
