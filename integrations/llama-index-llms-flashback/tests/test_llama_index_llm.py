"""FlashBackLLM (LlamaIndex) on tiny-random-llama: parity with the engine, streaming, async, chat,
stop strings, events, concurrency, bad input, and the retriever adapters."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from llama_index.core import Document, SummaryIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMCompletionEndEvent, LLMCompletionStartEvent
from llama_index.core.schema import NodeWithScore, TextNode

from flashback_rag import FlashBackConfig
from flashback_rag.errors import ConfigError, FlashBackError, RetrievalError
from llama_index.llms.flashback import (
    FlashBackLLM,
    FlashBackRetriever,
    LlamaIndexPassageRetriever,
    as_flashback_query_engine,
)

PROMPTS = ["The capital of France", "Cats purr", "Rome is", "The with statement"]


@pytest.fixture(scope="module")
def llm(tiny_engine):
    return FlashBackLLM(tiny_engine, max_new_tokens=12, ignore_eos=True)


def test_complete_equals_engine_generate(llm, tiny_engine):
    for prompt in PROMPTS[:2]:
        expected = tiny_engine.generate(prompt, max_new_tokens=12, ignore_eos=True)
        response = llm.complete(prompt)
        assert response.text == expected.text
        assert response.raw.token_ids == expected.token_ids
        assert len(response.raw.retrievals) == 3          # 12 tokens, stride 4
        assert response.additional_kwargs["retrievals"][0]["step"] == 0


def test_sampling_settings_reach_the_engine(llm, tiny_engine):
    expected = tiny_engine.generate(PROMPTS[0], max_new_tokens=8, temperature=0.9, top_p=0.9, top_k=20,
                                    seed=3, ignore_eos=True)
    response = llm.complete(PROMPTS[0], max_new_tokens=8, temperature=0.9, top_p=0.9, sample_top_k=20, seed=3)
    assert response.text == expected.text


def test_stream_complete_is_token_streaming_with_the_same_text(llm):
    responses = list(llm.stream_complete(PROMPTS[0]))
    assert len(responses) > 2
    assert "".join(r.delta for r in responses) == responses[-1].text == llm.complete(PROMPTS[0]).text
    assert responses[-1].raw is not None and len(responses[-1].raw.retrievals) == 3


def test_async_complete_and_stream(llm):
    async def run():
        full = await llm.acomplete(PROMPTS[1])
        deltas = [r.delta async for r in await llm.astream_complete(PROMPTS[1])]
        return full, deltas

    full, deltas = asyncio.run(run())
    assert full.text == llm.complete(PROMPTS[1]).text
    assert len(deltas) > 2 and "".join(deltas) == full.text


def test_stop_strings(tiny_engine):
    free = FlashBackLLM(tiny_engine, max_new_tokens=24, ignore_eos=True).complete(PROMPTS[0]).text
    stop = free[5:7]
    assert stop and stop not in free[:5]
    llm = FlashBackLLM(tiny_engine, max_new_tokens=24, ignore_eos=True, stop=[stop])
    for text in (llm.complete(PROMPTS[0]).text, "".join(r.delta for r in llm.stream_complete(PROMPTS[0]))):
        assert text == free[:free.index(stop)]
    assert llm.last_result.finish_reason == "stop"


def test_chat_uses_the_chat_template_when_the_tokenizer_has_one(llm, tiny_engine):
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    reply = llm.chat(messages)
    prompt = llm.messages_to_prompt(messages)
    assert reply.message.content == tiny_engine.generate(prompt, max_new_tokens=12, ignore_eos=True).text
    streamed = "".join(r.delta for r in llm.stream_chat(messages))
    assert streamed == reply.message.content
    assert asyncio.run(llm.achat(messages)).message.content == reply.message.content

    class Templated:            # a tokenizer with a chat template: its template is used
        chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"

    from llama_index.llms.flashback import chat_template_prompt
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=tiny_engine.tokenizer.backend_tokenizer)
    tok.chat_template = Templated.chat_template
    assert chat_template_prompt(tok)(messages) == "<system>Be brief.<user>Hi<assistant>"


def test_metadata(llm, tiny_engine):
    meta = llm.metadata
    assert meta.num_output == 12 and meta.is_chat_model is False
    assert meta.model_name == (tiny_engine.model.config.name_or_path or "llama")
    cfg = tiny_engine.config
    assert meta.context_window == tiny_engine.max_context - cfg.max_block_tokens


def test_callback_and_instrumentation_events(tiny_engine):
    debug = LlamaDebugHandler()
    llm = FlashBackLLM(tiny_engine, max_new_tokens=8, ignore_eos=True,
                       callback_manager=CallbackManager([debug]))

    class Collect(BaseEventHandler):
        seen: list = []

        def handle(self, event, **kwargs):
            self.seen.append(event)

    handler = Collect()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    try:
        llm.complete(PROMPTS[0])
        list(llm.stream_complete(PROMPTS[1]))
    finally:
        dispatcher.event_handlers.remove(handler)
    kinds = [type(e) for e in handler.seen]
    assert kinds.count(LLMCompletionStartEvent) == 2 and kinds.count(LLMCompletionEndEvent) >= 2
    ends = [e for e in handler.seen if isinstance(e, LLMCompletionEndEvent)]
    assert ends[0].response.raw.retrievals                       # the retrieval log travels with it
    assert len(debug.get_event_pairs(CBEventType.LLM)) == 2


def test_concurrent_threads_and_tasks_get_their_own_results(llm):
    expected = {p: llm.complete(p).text for p in PROMPTS}
    assert len(set(expected.values())) == len(PROMPTS)
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda p: llm.complete(p).text, PROMPTS * 2))
    assert texts == [expected[p] for p in PROMPTS * 2]

    async def run():
        async def streamed(p):
            return "".join([r.delta async for r in await llm.astream_complete(p)])
        full = await asyncio.gather(*(llm.acomplete(p) for p in PROMPTS))
        return [r.text for r in full], await asyncio.gather(*(streamed(p) for p in PROMPTS))

    full, streamed = asyncio.run(run())
    assert full == streamed == [expected[p] for p in PROMPTS]


class FailsAfterFirst(BaseRetriever):
    """A real LlamaIndex retriever whose back-end goes down after its first query."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def _retrieve(self, query_bundle):
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("vector store unreachable")
        return [NodeWithScore(node=TextNode(text="Paris is in France.", id_="p"), score=1.0)]


def test_a_failing_retriever_is_skipped_or_stops_generation(tiny_engine):
    llm = FlashBackLLM(tiny_engine, retriever=FailsAfterFirst(), max_new_tokens=12, ignore_eos=True)
    response = llm.complete(PROMPTS[0])
    result = response.raw
    assert len(result.token_ids) == 12
    assert result.retrievals[0].passage_ids == ["p"] and result.retrievals[1].error
    assert result.warnings and "vector store unreachable" in result.warnings[0]
    strict = FlashBackLLM(tiny_engine, retriever=FailsAfterFirst(), strict=True, max_new_tokens=12,
                          ignore_eos=True)
    with pytest.raises(RetrievalError, match="vector store unreachable"):
        strict.complete(PROMPTS[0])


def test_a_prompt_past_the_context_window_slides(tiny_engine):
    llm = FlashBackLLM(tiny_engine, max_new_tokens=8, ignore_eos=True)
    long_prompt = "The capital of France is Paris. " * 20            # 640 bytes > 512 positions
    response = llm.complete(long_prompt)
    assert len(response.raw.token_ids) == 8 and response.raw.slides
    assert response.text == tiny_engine.generate(long_prompt, max_new_tokens=8, ignore_eos=True).text


def test_constructor_keywords_and_config(tiny_engine):
    model_tok = (tiny_engine.model, tiny_engine.tokenizer)
    a = FlashBackLLM(model_tok, retriever=tiny_engine.retriever, stride=8, top_k=2, max_new_tokens=5)
    b = FlashBackLLM(model_tok, retriever=tiny_engine.retriever,
                     config=FlashBackConfig(stride=8, top_k=2), max_new_tokens=5)
    assert a.engine.config == b.engine.config and a.engine.config.stride == 8 and a.max_new_tokens == 5
    assert a.complete("x").text == b.complete("x").text
    assert a.to_dict()["config"]["stride"] == 8              # settings survive serialisation
    with pytest.raises(ConfigError, match="needs a retriever"):
        FlashBackLLM(model_tok)
    with pytest.raises(ConfigError, match="stride"):
        FlashBackLLM(model_tok, retriever=tiny_engine.retriever, stride=0)
    with pytest.raises(ConfigError, match="adapter"):
        FlashBackLLM(tiny_engine, adapter="some/adapter")


def test_adapter_loads_and_matches_the_engine(tiny_engine, tiny_adapter):
    from flashback_rag import FlashBack

    llm = FlashBackLLM("tiny-random-llama", adapter=str(tiny_adapter), retriever=tiny_engine.retriever,
                       max_new_tokens=10, ignore_eos=True)
    assert llm.engine.config.stride == 4                  # the adapter's recorded settings
    engine = FlashBack.from_pretrained("tiny-random-llama", adapter=str(tiny_adapter),
                                       retriever=tiny_engine.retriever)
    text = llm.complete("capital of Italy").text
    assert text == engine.generate("capital of Italy", 10, ignore_eos=True).text
    assert text != FlashBackLLM(tiny_engine, max_new_tokens=10, ignore_eos=True).complete("capital of Italy").text
    with pytest.raises(FlashBackError, match="adapter"):
        FlashBackLLM("tiny-random-gpt2", adapter=str(tiny_adapter), pattern="none")


def test_retriever_adapters_both_ways(tiny_engine):
    bm25 = tiny_engine.retriever
    li = FlashBackRetriever(bm25, similarity_top_k=2)
    nodes = li.retrieve("capital of Italy")
    assert nodes[0].node.metadata["title"] == "Italy" and len(nodes) == 2
    assert nodes[0].score == pytest.approx(bm25.retrieve("capital of Italy", 1)[0].score)
    back = LlamaIndexPassageRetriever(li).retrieve("capital of Italy", k=1)
    assert [p.text for p in back] == [bm25.retrieve("capital of Italy", 1)[0].text]
    # a flashback-rag index works as a LlamaIndex query engine's retriever
    from llama_index.core.query_engine import RetrieverQueryEngine

    llm = FlashBackLLM(tiny_engine, max_new_tokens=8, ignore_eos=True)
    engine = RetrieverQueryEngine.from_args(li, llm=llm, response_mode="simple_summarize")
    response = engine.query("capital of Italy")
    assert response.source_nodes[0].node.metadata["title"] == "Italy" and response.response


def test_postprocessor_hands_nodes_over_as_the_first_block(tiny_engine):
    llm = FlashBackLLM(tiny_engine, max_new_tokens=12, ignore_eos=True)
    texts = ["Owls hunt at night.", "Bats hunt at dusk."]
    index = SummaryIndex.from_documents([Document(text=t) for t in texts])
    engine = as_flashback_query_engine(index, llm, response_mode="simple_summarize")

    class Prompts(BaseEventHandler):
        seen: list = []

        def handle(self, event, **kwargs):
            if isinstance(event, LLMCompletionStartEvent):
                self.seen.append(event.prompt)

    handler = Prompts()
    get_dispatcher().add_event_handler(handler)
    try:
        response = engine.query("When do owls hunt?")
    finally:
        get_dispatcher().event_handlers.remove(handler)
    # the prompt holds the question, not the nodes; the nodes are the first appended block
    assert len(handler.seen) == 1 and "When do owls hunt?" in handler.seen[0]
    assert not any(t in handler.seen[0] for t in texts)
    result = llm.last_result
    assert result.retrievals[0].step == 0 and [p.text for p in result.retrievals[0].passages] == texts
    assert [r.step for r in result.retrievals] == [0, 4, 8]            # then re-retrieval from BM25
    assert {p.title for r in result.retrievals[1:] for p in r.passages} <= {"France", "Italy", "Cats", "with"}
    assert len(response.source_nodes) == 2
    # a direct call about something else does not pick the nodes up
    other = llm.complete("Unrelated prompt")
    assert not {p.text for p in other.raw.retrievals[0].passages} & set(texts)


def test_hand_over_reaches_streaming_and_async_queries(tiny_engine):
    llm = FlashBackLLM(tiny_engine, max_new_tokens=8, ignore_eos=True)
    texts = ["Owls hunt at night.", "Bats hunt at dusk."]
    index = SummaryIndex.from_documents([Document(text=t) for t in texts])
    question = "When do owls hunt?"
    sync = as_flashback_query_engine(index, llm, response_mode="simple_summarize").query(question)
    stream = as_flashback_query_engine(index, llm, response_mode="simple_summarize",
                                       streaming=True).query(question)
    assert "".join(stream.response_gen) == sync.response
    assert [p.text for p in llm.last_result.retrievals[0].passages] == texts

    async def run():
        engine = as_flashback_query_engine(index, llm, response_mode="simple_summarize")
        return await asyncio.gather(engine.aquery(question), engine.aquery("Unrelated: bats?"))

    same, other = asyncio.run(run())
    assert same.response == sync.response and other.response != sync.response
