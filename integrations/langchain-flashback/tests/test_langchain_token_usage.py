"""Token usage and token counting as LangChain reads them, counted with the model's own tokenizer:
``get_num_tokens`` (no GPT-2 fallback), ``usage_metadata`` on chat replies (invoke, stream, async, LCEL
chains with LangChain's own usage callback), ``llm_output["token_usage"]`` with the ``flashback`` section."""

import asyncio
import warnings

import pytest
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

from flashback_rag.usage import TokenUsage
from langchain_flashback import ChatFlashBack, FlashBackLLM, messages_to_prompt

TEXT = "Owls hunt at night, héllo."


class Always:
    """A retriever that always returns the same passage, so every retrieval point adds a block."""

    def retrieve(self, query, k):
        return ["Owls hunt at night."]


SETTINGS = dict(retriever=Always(), stride=4, doc_tokens=16, echo_tokens=2, max_new_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def chat(tiny_engine):
    return ChatFlashBack(model=(tiny_engine.model, tiny_engine.tokenizer), **SETTINGS)


@pytest.fixture(scope="module")
def llm(tiny_engine):
    return FlashBackLLM(model=(tiny_engine.model, tiny_engine.tokenizer), **SETTINGS)


@pytest.mark.parametrize("which", ["llm", "chat"])
def test_get_num_tokens_counts_with_the_models_tokenizer(which, request):
    model = request.getfixturevalue(which)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # LangChain warns when it falls back to GPT-2's tokenizer
        count = model.get_num_tokens(TEXT)
    assert count == len(model.engine.tokenizer(TEXT, add_special_tokens=False).input_ids) == len(TEXT.encode())
    assert model.get_token_ids(TEXT) == model.tokenize(TEXT)


def test_chat_counts_the_prompt_its_messages_become(chat):
    messages = [SystemMessage("Be brief."), HumanMessage("When do owls hunt?")]
    prompt = messages_to_prompt(chat.engine.tokenizer, messages)
    assert chat.get_num_tokens_from_messages(messages) == len(chat.engine.encode_prompt(prompt)[0])
    reply = chat.invoke(messages)
    assert reply.usage_metadata["input_tokens"] == chat.get_num_tokens_from_messages(messages)


def test_chat_replies_carry_usage_metadata_and_the_flashback_section(chat):
    reply = chat.invoke("When do owls hunt?")
    result = chat.last_result
    usage = TokenUsage.of(result, chat.engine.config)
    assert reply.usage_metadata == {"input_tokens": result.stats.prompt_tokens, "output_tokens": 8,
                                    "total_tokens": result.stats.prompt_tokens + 8}
    section = reply.response_metadata["token_usage"]["flashback"]
    assert section == usage.flashback()
    # the same passage comes back at the second point: that block stays in place and is not fed again
    fed = [r for r in result.retrievals if not r.kept]
    assert len(fed) == 1 and len(result.retrievals) == section["retrievals"] == 2
    assert section["passage_tokens"] == fed[0].block_tokens > 0
    assert section["echo_tokens"] == 2
    streamed = None
    for chunk in chat.stream("When do owls hunt?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.usage_metadata == reply.usage_metadata            # summed over chunks: only the last has it
    assert streamed.response_metadata["token_usage"] == reply.response_metadata["token_usage"]
    assert asyncio.run(chat.ainvoke("When do owls hunt?")).usage_metadata == reply.usage_metadata


def test_langchains_usage_callback_sees_lcel_chains(chat):
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | chat | StrOutputParser()
    with get_usage_metadata_callback() as callback:
        chain.invoke({"question": "When do owls hunt?"})
        first = chat.last_result
        "".join(chain.stream({"question": "Do cats purr?"}))
        second = chat.last_result
        asyncio.run(chain.ainvoke({"question": "Owls?"}))
        third = chat.last_result
    (model, usage), = callback.usage_metadata.items()
    assert model == chat.model
    assert usage["input_tokens"] == sum(r.stats.prompt_tokens for r in (first, second, third))
    assert usage["output_tokens"] == 24 and usage["total_tokens"] == usage["input_tokens"] + 24


def test_llm_output_token_usage_sums_a_batch(llm):
    result = llm.generate(["When do owls hunt?", "Do cats purr?"])
    usage = result.llm_output["token_usage"]
    infos = [g[0].generation_info["token_usage"] for g in result.generations]
    assert usage["prompt_tokens"] == sum(i["prompt_tokens"] for i in infos)
    assert usage["completion_tokens"] == 16 and usage["total_tokens"] == usage["prompt_tokens"] + 16
    assert usage["flashback"]["passage_tokens"] == sum(i["flashback"]["passage_tokens"] for i in infos) > 0
    assert result.llm_output["model_name"] == llm.model
    chain = PromptTemplate.from_template("{q}") | llm | StrOutputParser()
    assert chain.invoke({"q": "Owls"}) == llm.last_result.text
